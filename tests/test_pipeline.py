"""The run pipeline: its job table against the notebooks and the Workspace, the scheduler's failure
policy and measurements on tiny jobs, the results folder's clearing and manifest."""

from __future__ import annotations

import inspect
import json
import re
import signal
import sys
import time
from functools import cached_property
from pathlib import Path

import pytest

from cxrlib import pipeline
from cxrlib.cli import build_parser, main
from cxrlib.pipeline import (JOBS, PipelineError, RunOutcome, RunSettings, Stopped, check_notebooks, check_schedule,
                             default_results_dir, notebook, run_jobs, trainable, training, write_timings)
from cxrlib.results_folder import MANIFEST, clear_results, manifest_mismatches, write_manifest
from cxrlib.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


# -- the table ----------------------------------------------------------------------------------------

def test_every_numbered_notebook_is_in_the_table_and_loads_only_models_it_needs():
    check_notebooks(JOBS, ROOT / "notebooks")
    numbered = {path.name for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert {job.name for job in JOBS if job.is_notebook} == numbered


def test_train_jobs_name_the_workspace_attribute_that_loads_their_model():
    assert set(trainable()) == {"classifier", "ldm"}
    for model, job in trainable().items():
        assert job.name == f"train {model}" and not job.needs
        assert isinstance(vars(Workspace).get(job.attribute), cached_property), job.attribute
        assert f"ws.{job.attribute}" in job.loaded_by
    # `cxrlib train` takes its models from the table
    assert build_parser().parse_args(["train", *trainable()]).models == list(trainable())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "retrieval"])


def _workspace_models() -> set[str]:
    """The Workspace attributes that load a trained model (training it on first use): those that call a
    ``train_*`` function, and those that read such an attribute."""
    members = {name: member for name, member in vars(Workspace).items()
               if isinstance(member, (property, cached_property))}
    sources = {name: inspect.getsource(member.func if isinstance(member, cached_property) else member.fget)
               for name, member in members.items()}
    models = {name for name, source in sources.items() if re.search(r"\btrain_\w+\(", source)}
    while more := {name for name, source in sources.items() if any(f"self.{m}" in source for m in models)} - models:
        models |= more
    return models


def test_every_workspace_model_is_trained_by_a_job_of_the_table():
    models = _workspace_models()
    assert {"classifier", "latent_diffusion", "judges", "retrieval"} <= models  # the detection finds them
    loaded = {token for job in JOBS for token in job.loaded_by}
    assert {f"ws.{name}" for name in models} <= loaded, "a Workspace model that no job of the run trains"


def test_the_critical_jobs_form_a_chain():
    critical = [job for job in JOBS if job.critical]
    assert [job.name for job in critical] == ["train ldm", "04_ldm_synthesis.ipynb"]
    assert all(before.name in after.needs for before, after in zip(critical, critical[1:]))


def _notebook(path: Path, code: str) -> None:
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": code, "metadata": {}}]}))


def test_a_table_that_disagrees_with_the_notebooks_is_refused(tmp_path):
    jobs = (training("ldm", "latent_diffusion", list), notebook("01_a.ipynb"),
            notebook("02_b.ipynb", needs=("01_a.ipynb",)))
    _notebook(tmp_path / "01_a.ipynb", "ws = Workspace.open(profile)")
    _notebook(tmp_path / "02_b.ipynb", "model = ws.latent_diffusion\n")
    with pytest.raises(PipelineError, match=r"02_b.ipynb uses ws.latent_diffusion, which 'train ldm' trains"):
        check_notebooks(jobs, tmp_path)
    _notebook(tmp_path / "02_b.ipynb", "ws.latent_diffusion_size = 1  # another name\n")
    check_notebooks(jobs, tmp_path)
    # a Workspace under another name (notebook 06 opens the phantom's beside the run's)
    _notebook(tmp_path / "02_b.ipynb", "ws = Workspace.open(p)\nother = ws if x else None\n"
                                       "third = Workspace.open(q)\nm = (other.latent_diffusion, third.seed)\n")
    with pytest.raises(PipelineError, match=r"02_b.ipynb uses ws.latent_diffusion"):
        check_notebooks(jobs, tmp_path)
    _notebook(tmp_path / "02_b.ipynb", "third = Workspace.open(q)\nm = third.latent_diffusion\n")
    with pytest.raises(PipelineError, match=r"02_b.ipynb uses ws.latent_diffusion"):
        check_notebooks(jobs, tmp_path)
    _notebook(tmp_path / "02_b.ipynb", "ws = Workspace.open(q)\nm = ws.profile.latent_diffusion\n")
    check_notebooks(jobs, tmp_path)  # a profile's section, not the Workspace's model
    _notebook(tmp_path / "07_new.ipynb", "x = 1")
    with pytest.raises(PipelineError, match=r"07_new.ipynb is not in the job table"):
        check_notebooks(jobs, tmp_path)
    (tmp_path / "07_new.ipynb").unlink()
    (tmp_path / "01_a.ipynb").unlink()
    with pytest.raises(PipelineError, match=r"lists 01_a.ipynb, which .* does not hold"):
        check_notebooks(jobs, tmp_path)
    with pytest.raises(PipelineError, match="needs 'missing'"):
        check_schedule((notebook("a", needs=("missing",)),))
    with pytest.raises(PipelineError, match="cycle"):
        check_schedule((notebook("a", needs=("b",)), notebook("b", needs=("a",))))


# -- running jobs -------------------------------------------------------------------------------------

def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failed_job_skips_its_dependents_and_leaves_independent_jobs_running(tmp_path, monkeypatch, caplog, capsys):
    code = {
        "slow": "import time; time.sleep(2); open('slow.done', 'w').write('x')",
        "bad": "import sys, time; time.sleep(0.3); print('the error'); sys.exit(3)",
        "after bad": "open('after_bad.ran', 'w')",
        "after that": "open('after_that.ran', 'w')",
        "good": "print('fine')",
        "after good": "open('after_good.ran', 'w')",
    }
    jobs = (notebook("slow"), notebook("bad"), notebook("after bad", needs=("bad",)),
            notebook("after that", needs=("after bad",)), notebook("good"), notebook("after good", needs=("good",)))
    caplog.set_level("INFO", logger="cxrlib.pipeline")
    outcome = run_jobs(jobs, lambda job: _python(code[job.name]), tmp_path / "logs", cwd=tmp_path, poll_seconds=0.05)
    assert [(r.name, r.exit_status) for r in outcome.failed] == [("bad", 3)]
    # the slow job was running when bad failed, and ran to its end
    order = [r.name for r in outcome.results]
    assert order.index("bad") < order.index("slow") and (tmp_path / "slow.done").is_file()
    assert {r.name for r in outcome.done} == {"slow", "good", "after good"}
    assert outcome.skipped == [("after bad", "bad"), ("after that", "bad")] and not outcome.ok
    assert not (tmp_path / "after_bad.ran").exists() and (tmp_path / "after_good.ran").is_file()
    assert "the error" in (tmp_path / "logs" / "bad.log").read_text()
    messages = caplog.messages
    assert any(re.fullmatch(r"== slow: started \(\d\d:\d\d:\d\d\)", m) for m in messages)
    assert any(re.fullmatch(r"== good: done in \d+ s", m) for m in messages)
    failed = f"(exit status 3); its output: {tmp_path / 'logs' / 'bad.log'}"
    assert any(m.startswith("== bad: FAILED in ") and m.endswith(failed) for m in messages)
    assert "== after bad: skipped, since it needs bad" in messages

    # `cxrlib run` with this table: exit status 1, naming the failed job, its log and what it skipped
    def fake_run(settings):
        return RunOutcome(settings, run_jobs(jobs, lambda job: _python(code[job.name]), settings.results / "logs",
                                             cwd=tmp_path, poll_seconds=0.05))

    monkeypatch.setattr(pipeline, "run", fake_run)
    assert main(["run", "--root", str(ROOT), "--results", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert f"cxrlib run: bad FAILED (exit status 3); its output: {tmp_path / 'results' / 'logs' / 'bad.log'}" in err
    assert "cxrlib run: after that skipped: it needs bad" in err
    assert "executed copy" not in err  # only a notebook has one
    failed_notebook = pipeline.JobsOutcome([pipeline.JobResult("02_x.ipynb", 1, 1.0, 1.0, tmp_path / "x.log")], [], 1.0)
    problems = RunOutcome(RunSettings.make(ROOT, results=tmp_path / "r"), failed_notebook).problems()
    assert f"the executed copy with the error: {tmp_path / 'r' / 'notebooks' / '02_x.ipynb'}" in problems


def test_cpu_seconds_count_the_processes_a_job_waited_for_in_sessions_of_their_own(tmp_path):
    # like a notebook: papermill waits for its kernel, which runs in a session of its own
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 1.0: pass')"
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}], start_new_session=True)"
    code = {"spawns": spawn,
            "sleeps": "import time; time.sleep(1)"}
    jobs = (notebook("spawns"), notebook("sleeps"))
    outcome = run_jobs(jobs, lambda job: _python(code[job.name]), tmp_path / "logs", poll_seconds=0.05)
    seconds = {r.name: r for r in outcome.results}
    assert seconds["spawns"].cpu_seconds >= 0.95 and seconds["sleeps"].cpu_seconds < 0.5
    assert seconds["sleeps"].wall_seconds >= 1.0


def _state(pid: int) -> str | None:
    """The process's state letter (Z: a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_sigterm_stops_every_job_with_the_processes_of_its_own_sessions(tmp_path):
    sleeper = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
               "start_new_session=True); open('grandchild.pid', 'w').write(str(p.pid)); p.wait()")
    # SIGTERM to the scheduler (this test's process) while both jobs run
    sender = "import os, signal, time; time.sleep(1.0); os.kill(os.getppid(), signal.SIGTERM); time.sleep(60)"
    code = {"sleeper": sleeper, "sender": sender}
    jobs = (notebook("sleeper"), notebook("sender"))
    handler, began = signal.getsignal(signal.SIGTERM), time.monotonic()
    with pytest.raises(Stopped):
        run_jobs(jobs, lambda job: _python(code[job.name]), tmp_path / "logs", cwd=tmp_path, poll_seconds=0.05)
    assert time.monotonic() - began < 10
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    for _ in range(50):
        if _state(grandchild) in (None, "Z", "X"):
            break
        time.sleep(0.1)
    assert _state(grandchild) in (None, "Z", "X"), "the job's process in its own session survived the stop"
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


# -- the run's settings and files ---------------------------------------------------------------------

def test_default_results_folder_names_the_data_and_a_dry_run(tmp_path):
    assert default_results_dir(ROOT, "cpu", None, None) == ROOT / "results" / "cpu"
    sample = tmp_path / "chestxray14-sample"
    sample.mkdir()
    assert default_results_dir(ROOT, "cpu", sample, None) == ROOT / "results" / "cpu-chestxray14-sample"
    assert default_results_dir(ROOT, "paper", sample, 2) == ROOT / "results" / "paper-chestxray14-sample-dry-run"
    assert default_results_dir(ROOT, "smoke", None, 1) == ROOT / "results" / "smoke-dry-run"
    settings = RunSettings.make(ROOT, "cpu", sample, results=None)
    assert settings.results == ROOT / "results" / "cpu-chestxray14-sample" and settings.artifacts == ROOT / "artifacts"
    with pytest.raises(PipelineError, match="not the project folder"):
        RunSettings.make(tmp_path)


def test_job_commands_and_environment(tmp_path):
    settings = RunSettings.make(ROOT, "smoke", tmp_path, seed=7, results=tmp_path / "r", artifacts=tmp_path / "a",
                                max_steps=2)
    ldm, nb04 = next(j for j in JOBS if j.name == "train ldm"), next(j for j in JOBS if j.name.startswith("04_"))
    assert settings.command(ldm)[1:] == ["-m", "cxrlib", "train", "ldm", "--profile", "smoke", "--data-dir",
                                         str(tmp_path), "--seed", "7", "--artifacts", str(tmp_path / "a")]
    command = settings.command(nb04)
    assert command[1:5] == ["-m", "papermill", str(ROOT / "notebooks" / nb04.name),
                            str(tmp_path / "r" / "notebooks" / nb04.name)]
    assert " ".join(command[5:]) == (f"--kernel cxrlib --cwd {ROOT / 'notebooks'} --progress-bar -p profile smoke "
                                     f"-p data_dir {tmp_path} -p seed 7 -p results_dir {tmp_path / 'r'} "
                                     f"-p artifacts_dir {tmp_path / 'a'}")
    env = settings.environment({"PATH": "/bin", "CXRLIB_MAX_STEPS": "9"})
    assert env["CXRLIB_MAX_STEPS"] == "2" and env["OMP_NUM_THREADS"] == str(max(1, pipeline.available_cores() // 2))
    full = RunSettings.make(ROOT, "cpu", results=tmp_path / "r")
    assert "CXRLIB_MAX_STEPS" not in full.environment({"CXRLIB_MAX_STEPS": "9", "OMP_NUM_THREADS": "3"})
    assert full.environment({"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert "-p data_dir " in " ".join(full.command(nb04)) + " "  # the phantom: an empty data_dir


def test_a_run_clears_what_runs_wrote_and_refuses_a_folder_it_did_not_write(tmp_path):
    results = tmp_path / "results"
    for name in ("figures/old.png", "notebooks/00_data.ipynb", "logs/train ldm.log", "05_audits/raw/audit.html",
                 "data.json", "tradeoff.csv", "tradeoff.md", "timings.tsv", "REPORT.md", "extra.npz", ".keep"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("stale")
    (results / MANIFEST).write_text("extra.npz\nfigures/old.png\n")  # what the last run wrote
    clear_results(results)
    assert [p.name for p in results.iterdir()] == [".keep"]

    (results / "notes.docx").write_text("mine")
    (results / "data.json").write_text("{}")
    with pytest.raises(PipelineError, match="holds notes.docx, which no run writes"):
        clear_results(results)
    assert (results / "data.json").is_file()  # nothing removed
    assert main(["run", "--root", str(ROOT), "--results", str(results)]) == 2  # refused before any step
    assert (results / "notes.docx").read_text() == "mine"


def test_the_manifest_lists_every_file_the_run_wrote(tmp_path):
    for name in ("figures/a.png", "data.json", "logs/00_data.ipynb.log", ".hidden"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    write_manifest(tmp_path)
    assert (tmp_path / MANIFEST).read_text() == "data.json\nfigures/a.png\nlogs/00_data.ipynb.log\n"
    assert manifest_mismatches(tmp_path) == ([], [])
    (tmp_path / "figures" / "stale.png").write_text("x")
    (tmp_path / "data.json").unlink()
    assert manifest_mismatches(tmp_path) == (["data.json"], ["figures/stale.png"])
    (tmp_path / "logs" / "00_data.ipynb.log").unlink()  # git ignores logs/
    assert manifest_mismatches(tmp_path, may_be_missing=("logs/",)) == (["data.json"], ["figures/stale.png"])


def test_committed_results_hold_what_their_manifest_lists():
    folders = [folder for folder in sorted((ROOT / "results").iterdir()) if (folder / MANIFEST).is_file()]
    if not folders:
        pytest.skip("no committed results folder has a manifest yet (a run writes outputs.txt)")
    for folder in folders:
        # logs/ is not committed (.gitignore)
        assert manifest_mismatches(folder, may_be_missing=("logs/",)) == ([], []), folder.name


def test_timings_hold_sections_then_jobs_then_the_total(tmp_path):
    executed = tmp_path / "01_x.ipynb"
    executed.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": "import cxrlib", "metadata": {"papermill": {"duration": 2.04}}},
        {"cell_type": "markdown", "source": "## Training  the\nmodel", "metadata": {}},
        {"cell_type": "code", "source": "fit()", "metadata": {"papermill": {"duration": 10.5}}}]}))
    results = [pipeline.JobResult("01_x.ipynb", 0, 13.4, 20.5, tmp_path / "a.log"),
               pipeline.JobResult("train ldm", 0, 30.6, 29.4, tmp_path / "b.log")]
    write_timings(tmp_path / "timings.tsv", [executed], pipeline.JobsOutcome(results, [], 31.2))
    assert (tmp_path / "timings.tsv").read_text() == (
        "notebook\tstage\tseconds\tcpu_seconds\n01_x.ipynb\tsetup\t2.0\t\n01_x.ipynb\tTraining the\t10.5\t\n"
        "01_x.ipynb\tall\t13\t21\ntrain ldm\tall\t31\t29\ntotal\tall\t31\t50\n")
