"""What a run owns in its results folder: clearing what the last run wrote, and the manifest of what this
one wrote (``outputs.txt``), against which a committed folder is checked."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path


class PipelineError(ValueError):
    """The job table, the notebooks or the results folder do not allow a run."""


#: what runs write in a results folder (notebooks' figures, metrics, tables, audits; papermill's executed
#: notebooks; the jobs' logs, timings.tsv, REPORT.md, the manifest): cleared before a run
OWNED_FOLDERS = ("figures", "notebooks", "logs", "05_audits")
OWNED_SUFFIXES = (".json", ".csv", ".md", ".tsv", ".html")
MANIFEST = "outputs.txt"


def _listed(results_dir: Path) -> list[str]:
    manifest = results_dir / MANIFEST
    return [line for line in manifest.read_text().splitlines() if line] if manifest.is_file() else []


def clear_results(results_dir: Path) -> None:
    """Remove what an earlier run wrote in ``results_dir``: the folders and kinds of files runs write,
    and whatever its manifest lists. Refuses a folder holding anything else (it may not be a results
    folder); hidden entries are left alone."""
    if not results_dir.is_dir():
        return
    listed = {Path(name).parts[0] for name in _listed(results_dir)}

    def owned(entry: Path) -> bool:
        if entry.name in listed or entry.name == MANIFEST:
            return True
        return entry.name in OWNED_FOLDERS if entry.is_dir() else entry.suffix in OWNED_SUFFIXES

    entries = [entry for entry in results_dir.iterdir() if not entry.name.startswith(".")]
    foreign = sorted(entry.name for entry in entries if not owned(entry))
    if foreign:
        raise PipelineError(f"{results_dir} holds {', '.join(foreign)}, which no run writes; is it a results "
                            "folder? Choose an empty folder or one a run wrote")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def written_files(results_dir: Path) -> list[str]:
    """Every file under ``results_dir`` but the manifest and hidden ones: relative POSIX paths, sorted."""
    return sorted(path.relative_to(results_dir).as_posix() for path in results_dir.rglob("*")
                  if path.is_file() and path.name != MANIFEST
                  and not any(part.startswith(".") for part in path.relative_to(results_dir).parts))


def write_manifest(results_dir: Path) -> Path:
    path = results_dir / MANIFEST
    path.write_text("".join(f"{name}\n" for name in written_files(results_dir)))
    return path


def manifest_mismatches(results_dir: Path, may_be_missing: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``(listed but missing, present but not listed)`` of a results folder against its manifest; listed
    files under a prefix in ``may_be_missing`` (e.g. ``logs/``, which git ignores) may be absent."""
    manifest = results_dir / MANIFEST
    if not manifest.is_file():
        raise PipelineError(f"{results_dir} has no manifest ({MANIFEST})")
    listed, present = set(_listed(results_dir)), set(written_files(results_dir))
    missing = sorted(name for name in listed - present if not name.startswith(tuple(may_be_missing)))
    return missing, sorted(present - listed)
