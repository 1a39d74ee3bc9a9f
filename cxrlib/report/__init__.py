"""The README's results section (and data/README.md's fair-test figures), written from what a run saved
under ``results/<profile>/``.

Every number a reader sees in those sections comes from the metrics JSON (and ``timings.tsv``) of the
run; nothing is typed by hand. :func:`results_section` builds the Markdown from a tuple of blocks
(:data:`BLOCKS` for the README, :data:`FAIR_TEST_BLOCKS` for data/README.md; :data:`DOCUMENTS` maps
each document to its blocks), in order, each a function of the loaded results that returns its
paragraph or table (or None when the run did not write what it needs); :func:`update_readme` puts it
between the markers :func:`markers` names. ``cxrlib report`` (and ``cxrlib run`` at its end) does so
only for the reference run (:func:`reference_differences`); every other run gets its own
``REPORT.md`` beside its results (:func:`write_report`).

Adding a figure to a table is one entry: a row of :data:`REIDENTIFICATION_COLUMNS` (metric name ->
where its value sits in ``reidentification.json``); rows of the anonymization table are every result
in ``tradeoff.json`` (:func:`cxrlib.evaluate.comparison_table`).
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrlib.report.benchmarks import (AUDIT_BENCHMARK, CPU_PATHS_BENCHMARK, CPU_PROCESSES_BENCHMARK,
                                      GAP_DECOMPOSITION_BENCHMARK, LDM_RECIPE_BENCHMARK, LOOP_BENCHMARK,
                                      SAMPLER_SWEEP_BENCHMARK,
                                      SAMPLING_PRECISION_BENCHMARK, SCALE_BENCHMARK, TRAINING_PRECISION_BENCHMARK,
                                      audit_benchmark_block, cpu_paths_block, gap_decomposition_block, ldm_recipe_block,
                                      loop_ratio_block, sampler_sweep_block, sampling_precision_block, scale_block,
                                      training_precision_block)
from cxrlib.report.blocks import (KEY_FIGURES, REAL_SAMPLE_RESULTS, identity_cues_block, identity_profile_block,
                                  lung_fields_block, real_sample_block, reidentification_block,
                                  reidentification_table_block, run_block, synthesis_block, synthesis_figure_block,
                                  tradeoff_block, tradeoff_figure_block, tradeoff_reading_block, tradeoff_table_block,
                                  training_block, training_records)
from cxrlib.report.loading import (REIDENTIFICATION_COLUMNS, RESULT_FILES, WHOLE_NOTEBOOK, ReportError, Results,
                                   load_results, markers, stage_timings)

__all__ = [
    "AUDIT_BENCHMARK", "BENCHMARK_BLOCKS", "BLOCKS", "CPU_PATHS_BENCHMARK", "CPU_PROCESSES_BENCHMARK", "DOCUMENTS",
    "FAIR_TEST_BLOCKS", "GAP_DECOMPOSITION_BENCHMARK", "LDM_RECIPE_BENCHMARK", "LOOP_BENCHMARK",
    "gap_decomposition_block", "ldm_recipe_block", "loop_ratio_block",
    "KEY_FIGURES", "REAL_SAMPLE_RESULTS", "REFERENCE_PROFILE", "REFERENCE_SEED", "REIDENTIFICATION_COLUMNS",
    "REPORT", "RESULT_FILES", "SAMPLER_SWEEP_BENCHMARK", "SAMPLING_PRECISION_BENCHMARK", "SCALE_BENCHMARK",
    "TRAINING_PRECISION_BENCHMARK", "WHOLE_NOTEBOOK",
    "ReportError", "Results", "audit_benchmark_block", "cpu_paths_block", "current_section", "has_section",
    "identity_cues_block", "identity_profile_block", "load_results", "lung_fields_block", "markers",
    "real_sample_block", "recorded_contexts", "reference_differences", "reference_results", "sampler_sweep_block",
    "reidentification_block", "reidentification_table_block", "replace_section", "results_section", "run_block",
    "sampling_precision_block", "scale_block", "stage_timings", "synthesis_block", "synthesis_figure_block",
    "tradeoff_block",
    "tradeoff_figure_block", "tradeoff_reading_block", "tradeoff_table_block", "training_block",
    "training_precision_block", "training_records", "update_readme", "write_report",
]

Block = Callable[[Results], str | None]

#: the README's results: what the run shows (its machine benchmarks are in docs/benchmarks.md)
BLOCKS: tuple[Block, ...] = (
    run_block, training_block, real_sample_block, identity_profile_block, reidentification_block,
    reidentification_table_block, identity_cues_block, tradeoff_block, tradeoff_table_block,
    tradeoff_reading_block, tradeoff_figure_block, synthesis_block, synthesis_figure_block,
)

#: data/README.md's figures of the phantom as a fair test
FAIR_TEST_BLOCKS: tuple[Block, ...] = (identity_profile_block, identity_cues_block, lung_fields_block)

#: docs/benchmarks.md: what the benchmark scripts last measured, with the run's profile, and on which machine
BENCHMARK_BLOCKS: tuple[Block, ...] = (
    audit_benchmark_block, loop_ratio_block, cpu_paths_block, sampling_precision_block, training_precision_block,
    sampler_sweep_block, gap_decomposition_block, ldm_recipe_block, scale_block,
)

#: the documents ``cxrlib report`` writes (paths relative to the project root) and their blocks
DOCUMENTS: dict[str, tuple[Block, ...]] = {"README.md": BLOCKS, "data/README.md": FAIR_TEST_BLOCKS,
                                           "docs/benchmarks.md": BENCHMARK_BLOCKS}


def results_section(results_dir: str | Path, link_root: str | Path = ".", blocks: Sequence[Block] = BLOCKS, *,
                    root: str | Path | None = None, reference: bool = True) -> str:
    """The Markdown of ``blocks`` for the run in ``results_dir``, its links relative to ``link_root``
    (the document's folder); benchmarks are read under ``root`` (default: ``link_root``, the README's
    folder); ``reference``: the committed run of the README, not a :data:`REPORT` of another run."""
    results = {**load_results(results_dir), "link_root": Path(link_root).resolve(),
               "root": Path(root if root is not None else link_root).resolve(), "reference": reference}
    written = [block for block in (make(results) for make in blocks) if block]
    return "\n\n".join(_wrapped(block) for block in written) + "\n"


def _wrapped(block: str) -> str:
    """Paragraphs wrapped at 110 characters; tables and figures as they are."""
    return "\n\n".join(part if part.startswith(("|", "!")) else
                       textwrap.fill(part, width=110, break_long_words=False, break_on_hyphens=False)
                       for part in block.split("\n\n"))


def replace_section(text: str, section: str, profile: str, *, where: str = "README") -> str:
    """``text`` with what lies between ``profile``'s markers replaced by ``section``."""
    begin, end = markers(profile)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReportError(f"{where}: needs the two marker lines of profile {profile!r}, once each, in order:\n"
                          f"{begin}\n{end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{section}{end}{tail}"


def current_section(text: str, profile: str) -> str:
    """What the README holds between ``profile``'s markers now."""
    begin, end = markers(profile)
    if begin not in text or end not in text:
        raise ReportError(f"README has no generated section for profile {profile!r}")
    return text.split(begin, 1)[1].split(end, 1)[0].removeprefix("\n")


def has_section(readme: str | Path, profile: str) -> bool:
    """Whether ``readme`` holds a generated results section for ``profile``."""
    return markers(profile)[0] in Path(readme).read_text()


def update_readme(readme: str | Path, results_dir: str | Path, profile: str,
                  blocks: Sequence[Block] = BLOCKS, root: str | Path | None = None) -> bool:
    """Write the section of ``profile`` (made of ``blocks``) into ``readme`` (atomically); True when it
    changed. ``root``: the project folder the benchmarks lie in (default: the README's folder)."""
    readme = Path(readme)
    text = readme.read_text()
    updated = replace_section(text, results_section(results_dir, readme.parent, blocks, root=root), profile,
                              where=str(readme))
    if updated == text:
        return False
    _write_atomically(readme, updated)
    return True


#: the run the README and data/README.md show: ``./run_all.sh`` with its defaults (profile cpu on its
#: phantom, seed 42, results in results/cpu, no --max-steps); every other run writes :data:`REPORT`
REFERENCE_PROFILE = "cpu"
REFERENCE_SEED = 42
#: every other run's report, beside its results
REPORT = "REPORT.md"
#: the blocks of :data:`REPORT`: every document's, once each, in order
REPORT_BLOCKS: tuple[Block, ...] = tuple(dict.fromkeys(block for blocks in DOCUMENTS.values() for block in blocks))


def reference_results(root: str | Path) -> Path:
    return Path(root) / "results" / REFERENCE_PROFILE


def recorded_contexts(results_dir: str | Path) -> dict[str, dict]:
    """The context each metrics file of a run recorded (its profile, data, seed), by file name."""
    contexts = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: not valid JSON ({err})") from err
        if isinstance(payload, dict) and isinstance(payload.get("context"), dict):
            contexts[path.name] = payload["context"]
    return contexts


def reference_differences(results_dir: str | Path, root: str | Path) -> list[str]:
    """Why the run in ``results_dir`` is not the reference run (none when it is): from the context every
    metrics file recorded and from where the results lie, not from what the command line says."""
    reasons: list[str] = []
    contexts = recorded_contexts(results_dir)
    if not contexts:
        reasons.append("no metrics file records the run's context")
    for context in contexts.values():
        if context.get("profile") != REFERENCE_PROFILE:
            reasons.append(f"profile {context.get('profile')}, not {REFERENCE_PROFILE}")
        if context.get("phantom") is not True:
            reasons.append(f"data {context.get('data')}, not the profile's phantom")
        if context.get("seed") != REFERENCE_SEED:
            reasons.append(f"seed {context.get('seed')}, not {REFERENCE_SEED}")
        if context.get("max_steps"):
            reasons.append(f"a dry run (--max-steps {context['max_steps']})")
    if Path(results_dir).resolve() != reference_results(root).resolve():
        reasons.append(f"results in {Path(results_dir).resolve()}, not {reference_results(root)}")
    return list(dict.fromkeys(reasons))


def write_report(results_dir: str | Path, root: str | Path, profile: str | None = None) -> dict[Path, str]:
    """The run's report: for the reference run, the generated sections of the documents in
    :data:`DOCUMENTS` under ``root``; for any other run, :data:`REPORT` beside its results, its links
    relative to that folder, and the documents left as they are. ``profile``, when given, must be the
    one the run recorded. Returns each document considered and what happened to it: ``rewritten``,
    ``unchanged``, ``no section`` (a document without the profile's markers) or ``written``."""
    results_dir, root = Path(results_dir), Path(root)
    recorded = {context.get("profile") for context in recorded_contexts(results_dir).values()}
    if profile is not None and recorded - {profile}:
        raise ReportError(f"{results_dir} holds results of profile {', '.join(map(str, sorted(recorded)))}, "
                          f"not {profile}")
    reasons = reference_differences(results_dir, root)
    if reasons:
        header = (f"# Report of the run in `{results_dir.name}/`\n\nGenerated by `cxrlib report` from this "
                  f"folder's metrics. The README shows the reference run instead; this one differs from it: "
                  f"{'; '.join(reasons)}.\n\n")
        report = results_dir / REPORT
        _write_atomically(report, header + results_section(results_dir, results_dir, REPORT_BLOCKS, root=root,
                                                           reference=False))
        return {report: "written"}
    written = {}
    for name, blocks in DOCUMENTS.items():
        document = root / name
        if not document.is_file() or not has_section(document, REFERENCE_PROFILE):
            written[document] = "no section"
        else:
            written[document] = ("rewritten" if update_readme(document, results_dir, REFERENCE_PROFILE, blocks, root)
                                 else "unchanged")
    return written


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
