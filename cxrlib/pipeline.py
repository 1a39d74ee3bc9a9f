"""The run pipeline (``cxrlib run``, which ``./run_all.sh`` calls): make the data ready, then run every
notebook (papermill) and every model that needs no other model (``cxrlib train``) side by side, each
job starting as soon as the jobs it needs are done.

:data:`JOBS` is the one table of jobs. Each job names the jobs whose models or results it reads
(``needs``) and the code through which notebooks load what it trains (``loaded_by``: a Workspace
attribute such as ``ws.judges``, or a library function that loads its checkpoint when it exists, such
as ``train_prichexy_net``). A ``train`` job names the Workspace attribute that loads (or trains) its
model, which ``cxrlib train`` builds. :func:`check_notebooks` refuses a run when a numbered notebook is
missing from the table, or loads a model through code that a job it does not need trains.

A failing job does not stop independent jobs: they run to their end and keep their artifacts; the
jobs that need it are skipped, and the run ends non-zero naming it. Ctrl-C or SIGTERM stops every job,
with its processes (a notebook's kernel, data-loading workers).

The results folder holds only what its last run wrote: a run first clears what runs write there
(:func:`clear_results`), and at its end lists every file it wrote in ``outputs.txt``
(:func:`write_manifest`; :func:`manifest_mismatches` checks a folder against it).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrlib.results_folder import PipelineError, clear_results, write_manifest

log = logging.getLogger(__name__)

#: set by ``cxrlib run --max-steps N`` for every job: each notebook opens its profile as a dry run
MAX_STEPS_VARIABLE = "CXRLIB_MAX_STEPS"
#: the numbered notebooks a run executes, in notebooks/
NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
#: the Jupyter kernel scripts/setup.sh registers
KERNEL = "cxrlib"
#: the papermill parameters of every notebook (its cell tagged ``parameters``)
NOTEBOOK_PARAMETERS = ("profile", "data_dir", "seed", "results_dir", "artifacts_dir")
TRAIN_PREFIX = "train "
# the longest chain of jobs keeps its priority, so that its single-thread processes have a core to
# themselves while the other jobs share the rest (docs/decisions.md)
CRITICAL_NICENESS, OTHER_NICENESS = 0, 10
#: seconds a stopped job's processes get to exit on SIGTERM before SIGKILL
STOP_GRACE_SECONDS = 5.0


class Stopped(Exception):
    """The run received SIGTERM."""


@dataclass(frozen=True)
class Job:
    """One job of a run: a notebook (``name`` its file name) or a model trained by ``cxrlib train``
    (``name`` is ``train MODEL``)."""

    name: str
    #: the jobs whose models or results it reads
    needs: tuple[str, ...] = ()
    #: code in a notebook that loads what this job trains (training it when it is not there yet):
    #: ``ws.ATTRIBUTE`` (the attribute of any name bound to a Workspace) or a library function's name
    loaded_by: tuple[str, ...] = ()
    #: on the longest chain of jobs: runs at nice 0, the others at nice 10
    critical: bool = False
    #: train jobs: the Workspace attribute that loads (or trains) the model, and its fits from that value
    attribute: str | None = None
    fits: Callable[[Any], list] | None = field(default=None, compare=False)

    @property
    def is_notebook(self) -> bool:
        return self.name.endswith(".ipynb")

    @property
    def model(self) -> str | None:
        """The ``cxrlib train`` argument of a train job; None for a notebook."""
        return self.name.removeprefix(TRAIN_PREFIX) if self.attribute else None


def notebook(name: str, needs: Sequence[str] = (), loaded_by: Sequence[str] = (), critical: bool = False) -> Job:
    return Job(name, tuple(needs), tuple(loaded_by), critical)


def training(model: str, attribute: str, fits: Callable[[Any], list], loaded_by: Sequence[str] = (),
             critical: bool = False) -> Job:
    """A ``cxrlib train MODEL`` job: ``ws.ATTRIBUTE`` loads its model, and it is loaded by ``loaded_by`` too."""
    return Job(TRAIN_PREFIX + model, (), (f"ws.{attribute}", *loaded_by), critical, attribute, fits)


# The judges (ws.judges) are notebook 01's siamese network and the classifier; anonymizers train
# against them (ws.anonymizer_training).
JOBS: tuple[Job, ...] = (
    training("ldm", "latent_diffusion", lambda trained: [trained.autoencoder_fit, trained.unet_fit],
             critical=True),
    training("classifier", "classifier", lambda trained: [trained[1]],
             loaded_by=("ws.judges", "ws.anonymizer_training")),
    notebook("00_data.ipynb"),
    notebook("01_reidentification.ipynb", loaded_by=("ws.judges", "ws.anonymizer_training", "ws.retrieval")),
    notebook("02_prichexy_net.ipynb", needs=("01_reidentification.ipynb", "train classifier"),
             loaded_by=("train_prichexy_net",)),
    notebook("03_baselines_and_tradeoff.ipynb", needs=("02_prichexy_net.ipynb",), loaded_by=("train_privacy_net",)),
    notebook("04_ldm_synthesis.ipynb", needs=("01_reidentification.ipynb", "train classifier", "train ldm"),
             critical=True),
    notebook("05_publishing_a_release.ipynb", needs=("02_prichexy_net.ipynb",)),
    notebook("06_transfer.ipynb", needs=("01_reidentification.ipynb", "train classifier")),
)


def trainable(jobs: Sequence[Job] = JOBS) -> dict[str, Job]:
    """The train jobs by their ``cxrlib train`` argument."""
    return {job.model: job for job in jobs if job.model}


# -- checks of the table ------------------------------------------------------------------------------

def check_schedule(jobs: Sequence[Job]) -> None:
    """Refuse a table with duplicate names, needs that name no job, or a cycle."""
    names = [job.name for job in jobs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PipelineError(f"the job table lists {', '.join(duplicates)} more than once")
    for job in jobs:
        unknown = [need for need in job.needs if need not in names]
        if unknown:
            raise PipelineError(f"job {job.name!r} needs {', '.join(map(repr, unknown))}, which the job table "
                                "does not list")
    done: set[str] = set()
    left = list(jobs)
    while left:
        ready = [job for job in left if set(job.needs) <= done]
        if not ready:
            raise PipelineError(f"the job table's needs form a cycle among {', '.join(job.name for job in left)}")
        done.update(job.name for job in ready)
        left = [job for job in left if job.name not in done]


def required_jobs(jobs: Sequence[Job], name: str) -> set[str]:
    """Every job that ``name`` needs, directly or through the jobs it needs."""
    by_name = {job.name: job for job in jobs}
    found: set[str] = set()
    stack = list(by_name[name].needs)
    while stack:
        need = stack.pop()
        if need not in found:
            found.add(need)
            stack.extend(by_name[need].needs)
    return found


def dependent_jobs(jobs: Sequence[Job], name: str) -> list[str]:
    """Every job that needs ``name``, directly or not, in table order."""
    return [job.name for job in jobs if name in required_jobs(jobs, job.name)]


def notebook_code(path: Path) -> str:
    """The code cells of a notebook, joined."""
    import json

    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def workspace_names(code: str) -> set[str]:
    """The names a notebook binds to a Workspace: ``ws``, and any name assigned ``Workspace.open(...)``
    or an expression starting with another such name (``phantom = ws if ... else None``)."""
    names = {"ws"}
    while True:
        bound = "|".join(map(re.escape, sorted(names)))
        found = set(re.findall(rf"^\s*(\w+)\s*=\s*(?:Workspace\.open\(|(?:{bound})\b(?!\.))", code, re.M))
        if found <= names:
            return names
        names |= found


def _uses(code: str, token: str, names: set[str]) -> bool:
    """Whether ``code`` uses ``token``: ``ws.ATTRIBUTE`` on any of the Workspace ``names``, or a function."""
    if token.startswith("ws."):
        bound = "|".join(map(re.escape, sorted(names)))
        return re.search(rf"\b(?:{bound})\.{re.escape(token[3:])}\b", code) is not None
    return re.search(rf"\b{re.escape(token)}\b", code) is not None


def uncovered_loads(jobs: Sequence[Job], notebooks_dir: Path) -> list[str]:
    """Each place where a notebook of the table loads a model that another job trains without needing
    that job (directly or not): such a notebook would train the model itself, or race the job."""
    problems = []
    for job in jobs:
        path = notebooks_dir / job.name
        if not job.is_notebook or not path.is_file():
            continue
        code = notebook_code(path)
        names = workspace_names(code)
        before = required_jobs(jobs, job.name)
        for other in jobs:
            if other.name == job.name or other.name in before:
                continue
            used = [token for token in other.loaded_by if _uses(code, token, names)]
            if used:
                problems.append(f"{job.name} uses {', '.join(used)}, which {other.name!r} trains, but does "
                                f"not need {other.name!r}")
    return problems


def check_notebooks(jobs: Sequence[Job], notebooks_dir: Path) -> None:
    """Refuse a run whose table and notebooks/ disagree: a numbered notebook the table does not list,
    a listed one that is missing, or a notebook loading a model it does not need the job of."""
    check_schedule(jobs)
    listed = {job.name for job in jobs if job.is_notebook}
    present = {path.name for path in notebooks_dir.glob(NOTEBOOK_PATTERN)}
    problems = [f"{notebooks_dir / name} is not in the job table (cxrlib/pipeline.py JOBS); add it with the "
                "jobs it needs" for name in sorted(present - listed)]
    problems += [f"the job table lists {name}, which {notebooks_dir} does not hold"
                 for name in sorted(listed - present)]
    problems += uncovered_loads(jobs, notebooks_dir)
    if problems:
        raise PipelineError("; ".join(problems))


# -- running jobs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobResult:
    name: str
    exit_status: int
    wall_seconds: float
    #: user + system CPU seconds of the job's process and every descendant it waited for (a notebook's
    #: kernel, the kernel's workers), from wait4
    cpu_seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass
class JobsOutcome:
    #: every job that ran, in the order they ended
    results: list[JobResult]
    #: (job, the failed or skipped job it needs), in table order
    skipped: list[tuple[str, str]]
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    @property
    def failed(self) -> list[JobResult]:
        return [result for result in self.results if not result.ok]

    @property
    def done(self) -> list[JobResult]:
        return [result for result in self.results if result.ok]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from ``ps``; kernels start sessions of their own,
    so a job's process group does not hold them."""
    try:
        table = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop(0)
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _signal(pids: Sequence[int], group: int, sig: int) -> None:
    for send, target in ((os.killpg, group), *((os.kill, pid) for pid in pids)):
        try:
            send(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Stopped` (as Ctrl-C raises KeyboardInterrupt), so that a stopped run
    stops its jobs; only where signals can be handled (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    began: float


def _start(job: Job, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None,
           cwd: Path | None) -> subprocess.Popen:
    niceness = CRITICAL_NICENESS if job.critical else OTHER_NICENESS

    def in_child() -> None:
        # a process group of its own, so that a stop reaches it whole; not a session of its own: where the
        # kernel schedules each session as one group (autogroup), nice orders only processes of one
        # session, and the train jobs' niceness must order them against each other
        os.setpgid(0, 0)
        if niceness:
            os.nice(niceness)

    with open(log_path, "wb") as output:
        return subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=None if env is None else dict(env), cwd=cwd, preexec_fn=in_child)


def _reap(running: dict[int, _Running], block: bool = False) -> list[tuple[_Running, int, float, float]]:
    """The jobs that ended: (job, exit status, wall seconds, CPU seconds of it and its waited-for
    descendants)."""
    ended = []
    for pid, entry in list(running.items()):
        done, status, usage = os.wait4(pid, 0 if block else os.WNOHANG)
        if done == 0:
            continue
        code = os.waitstatus_to_exitcode(status)
        entry.process.returncode = code  # reaped here: Popen must not wait for it again
        del running[pid]
        ended.append((entry, code, time.monotonic() - entry.began, usage.ru_utime + usage.ru_stime))
    return ended


def _stop(running: dict[int, _Running]) -> None:
    """SIGTERM to every running job's processes, SIGKILL to those still there after the grace period."""
    trees = {pid: descendants(pid) for pid in running}
    for pid, tree in trees.items():
        log.warning("== %s: stopped", running[pid].job.name)
        _signal(tree, pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while running and time.monotonic() < deadline:
        _reap(running)
        time.sleep(0.05)
    for pid, tree in trees.items():
        _signal(tree, pid, signal.SIGKILL)
    while running:
        _reap(running, block=True)


def run_jobs(jobs: Sequence[Job], command: Callable[[Job], Sequence[str]], logs: Path, *,
             env: Mapping[str, str] | None = None, cwd: Path | None = None, poll_seconds: float = 0.2) -> JobsOutcome:
    """Run ``jobs`` side by side, each as ``command(job)`` with its output in ``logs/NAME.log``, each
    starting (in table order) once the jobs it needs are done. A failed job's dependents are skipped;
    every other job runs to its end. On Ctrl-C or SIGTERM every running job is stopped and the
    exception raised again."""
    check_schedule(jobs)
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[int, _Running] = {}
    results: list[JobResult] = []
    skipped: list[tuple[str, str]] = []
    passed: set[str] = set()
    began = time.monotonic()
    with sigterm_raises():
        try:
            while pending or running:
                for job in [job for job in pending if set(job.needs) <= passed]:
                    pending.remove(job)
                    log.info("== %s: started (%s)", job.name, time.strftime("%H:%M:%S"))
                    process = _start(job, command(job), logs / f"{job.name}.log", env, cwd)
                    running[process.pid] = _Running(job, process, time.monotonic())
                if not running:
                    if pending:  # check_schedule rules this out
                        raise PipelineError(f"no job can start: {', '.join(job.name for job in pending)}")
                    break
                time.sleep(poll_seconds)
                for entry, code, wall, cpu in _reap(running):
                    name = entry.job.name
                    results.append(JobResult(name, code, wall, cpu, logs / f"{name}.log"))
                    if code == 0:
                        passed.add(name)
                        log.info("== %s: done in %d s", name, round(wall))
                        continue
                    log.warning("== %s: FAILED in %d s (exit status %d); its output: %s", name, round(wall), code,
                                logs / f"{name}.log")
                    for dependent in dependent_jobs(jobs, name):
                        job = next((job for job in pending if job.name == dependent), None)
                        if job is not None:
                            pending.remove(job)
                            skipped.append((dependent, name))
                            log.warning("== %s: skipped, since it needs %s", dependent, name)
        except BaseException:
            _stop(running)
            raise
    return JobsOutcome(results, skipped, time.monotonic() - began)


# -- a run of the project's pipeline ------------------------------------------------------------------

@dataclass(frozen=True)
class RunSettings:
    """What ``cxrlib run`` (``./run_all.sh``) was asked for; paths absolute."""

    root: Path
    profile: str
    data_dir: Path | None
    seed: int
    results: Path
    artifacts: Path
    max_steps: int | None = None

    @classmethod
    def make(cls, root: str | Path = ".", profile: str = "cpu", data_dir: str | Path | None = None, seed: int = 42,
             results: str | Path | None = None, artifacts: str | Path | None = None,
             max_steps: int | None = None) -> "RunSettings":
        root = Path(root).resolve()
        if not (root / "notebooks").is_dir() or not (root / "run_all.sh").is_file():
            raise PipelineError(f"{root} is not the project folder (no notebooks/ and run_all.sh); pass --root")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise PipelineError(f"data folder {data_dir} does not exist")
        data = Path(data_dir).resolve() if data_dir is not None else None
        if max_steps is not None and max_steps < 1:
            raise PipelineError(f"--max-steps must be at least 1, got {max_steps}")
        folder = Path(results) if results is not None else default_results_dir(root, profile, data, max_steps)
        return cls(root, profile, data, int(seed), folder.resolve(),
                   Path(artifacts).resolve() if artifacts is not None else root / "artifacts", max_steps)

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def executed(self, job: Job) -> Path:
        """Where papermill writes a notebook job's executed copy."""
        return self.results / "notebooks" / job.name

    @property
    def data_arguments(self) -> list[str]:
        return ["--data-dir", str(self.data_dir)] if self.data_dir else []

    def command(self, job: Job) -> list[str]:
        """A job's command line: papermill for a notebook, ``cxrlib train`` for a model."""
        if job.model:
            return [sys.executable, "-m", "cxrlib", "train", job.model, "--profile", self.profile,
                    *self.data_arguments, "--seed", str(self.seed), "--artifacts", str(self.artifacts)]
        values = dict(zip(NOTEBOOK_PARAMETERS, (self.profile, str(self.data_dir or ""), str(self.seed),
                                                 str(self.results), str(self.artifacts))))
        return [sys.executable, "-m", "papermill", str(self.notebooks / job.name), str(self.executed(job)),
                "--kernel", KERNEL, "--cwd", str(self.notebooks), "--progress-bar",
                *(part for name, value in values.items() for part in ("-p", name, value))]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The jobs' environment: half the cores each (unless OMP_NUM_THREADS is set), the dry run's steps."""
        env = dict(os.environ if base is None else base)
        # the profiles' small networks use one core better than two, so two jobs side by side do more
        # than one job with all the cores; a job's threads stay fixed, since an OpenMP team whose thread
        # waits for a core stalls at every barrier (docs/decisions.md)
        env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // 2)))
        env.pop(MAX_STEPS_VARIABLE, None)
        if self.max_steps:
            env[MAX_STEPS_VARIABLE] = str(self.max_steps)
        return env


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_results_dir(root: Path, profile: str, data_dir: Path | None, max_steps: int | None) -> Path:
    """``results/<profile>`` for the profile's phantom, ``results/<profile>-<data>`` for a data folder
    named ``<data>``, with ``-dry-run`` after it for a dry run."""
    name = profile + (f"-{Path(data_dir).resolve().name}" if data_dir else "") + ("-dry-run" if max_steps else "")
    return root / "results" / name


def section_rows(notebook_path: Path) -> list[tuple[str, str, str]]:
    """``(notebook, section, seconds)`` per section of an executed notebook, as timings.tsv holds them."""
    from cxrlib.report import stage_timings

    return [(notebook_path.name, " ".join(stage.split()), f"{seconds:.1f}")
            for stage, seconds in stage_timings(notebook_path)]


def write_timings(path: Path, executed: Sequence[Path], outcome: JobsOutcome) -> None:
    """timings.tsv: per notebook one row per section (from papermill's cell times; no CPU time of their
    own), then each job's wall and CPU seconds in the order they ended, then the total: the run's wall
    time and the jobs' CPU seconds, which over the cores bound any schedule's total."""
    from cxrlib.report import WHOLE_NOTEBOOK

    cpu = {result.name: int(result.cpu_seconds + 0.5) for result in outcome.results}
    lines = ["notebook\tstage\tseconds\tcpu_seconds"]
    lines += ["\t".join(row) + "\t" for notebook_path in executed for row in section_rows(notebook_path)]
    lines += [f"{result.name}\t{WHOLE_NOTEBOOK}\t{round(result.wall_seconds)}\t{cpu[result.name]}"
              for result in outcome.results]
    lines.append(f"total\t{WHOLE_NOTEBOOK}\t{round(outcome.wall_seconds)}\t{sum(cpu.values())}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class RunOutcome:
    settings: RunSettings
    jobs: JobsOutcome
    #: what the report wrote (:func:`cxrlib.report.write_report`); None when the run failed
    report: Any = None

    @property
    def ok(self) -> bool:
        return self.jobs.ok

    @property
    def timings(self) -> Path:
        return self.settings.results / "timings.tsv"

    def problems(self) -> list[str]:
        """What failed, where its output is, and what was skipped because of it."""
        lines = []
        for result in self.jobs.failed:
            lines.append(f"{result.name} FAILED (exit status {result.exit_status}); its output: {result.log}")
            if Job(result.name).is_notebook:
                lines.append(f"the executed copy with the error: {self.settings.executed(Job(result.name))}")
        for name, need in self.jobs.skipped:
            lines.append(f"{name} skipped: it needs {need}")
        return lines


def run(settings: RunSettings, jobs: Sequence[Job] = JOBS) -> RunOutcome:
    """The whole run: check the table against notebooks/, clear the results folder, make the data ready,
    run the jobs; when all succeeded, write timings.tsv and the report; at the end the manifest."""
    check_notebooks(jobs, settings.notebooks)
    results = settings.results
    clear_results(results)
    (results / "notebooks").mkdir(parents=True, exist_ok=True)
    env = settings.environment()
    log.info("== data (%s)", settings.profile)
    with sigterm_raises():
        data = subprocess.run([sys.executable, "-m", "cxrlib", "data", "--profile", settings.profile,
                               *settings.data_arguments], cwd=settings.root, env=env)
    if data.returncode != 0:
        write_manifest(results)
        raise PipelineError(f"the data step (cxrlib data) failed with exit status {data.returncode}")
    outcome = RunOutcome(settings, run_jobs(jobs, settings.command, results / "logs", env=env, cwd=settings.root))
    if outcome.ok:
        from cxrlib.report import write_report

        executed = sorted((results / "notebooks").glob(NOTEBOOK_PATTERN))
        write_timings(outcome.timings, executed, outcome.jobs)
        outcome.report = write_report(results, settings.root, settings.profile)
    write_manifest(results)
    return outcome
