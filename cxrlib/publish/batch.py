"""The resumable batch runner that ``cxrlib anonymize`` uses: IN is only read, OUT is written atomically.

Every output file is written to a temporary name beside its target and renamed, then recorded in a
manifest (one JSON line per file: input and output SHA-256, status), so a run killed at any moment
(``kill -9``) leaves no partial file under a final name, and a rerun skips what the manifest records as
done (the output still there, with its hash). The per-file work is deterministic (keyed pseudonyms,
seeded noise per file), so an interrupted and resumed run writes the same OUT as an uninterrupted one.
A file that cannot be read is recorded as failed with the reason, and the batch goes on. Files stream
one at a time: memory stays bounded whatever the folder's size.

The manifest maps every output to its input and holds each raw input's SHA-256 (which identifies the
raw file), so it lies in a **state folder outside OUT** (default: the sibling ``OUT.cxrlib-state/``), never
in OUT, which is published as it is. Files are processed in an order given by the caller (``cxrlib
anonymize``: a keyed hash of each input's path), not in the inputs' sorted order, which the outputs'
times or a folder listing would otherwise give away.

Several processes (``accelerate launch -m cxrlib anonymize ...``) split the files by rank
(``RANK``/``WORLD_SIZE`` from the launcher); each writes its own manifest into the state folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from cxrlib.data.chestxray14 import DataError

log = logging.getLogger(__name__)

MANIFEST_PREFIX = ".cxrlib-manifest"
PARTIAL_MARK = ".partial-"
#: the default state folder of OUT is OUT's sibling with this suffix
STATE_SUFFIX = ".cxrlib-state"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file and a rename; returns its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the rank in the name: a process starting up removes its own leftovers, never another's file in flight
    tmp = path.with_name(f"{path.name}{PARTIAL_MARK}{_rank()[0]}-{os.getpid()}")
    # no fsync: a killed process loses nothing written before the rename (only a machine crash could,
    # as for any file write); fsync per file cost most of the time of small files
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def default_state_folder(out_dir: str | Path) -> Path:
    """Where the manifest of OUT lies unless told otherwise: ``OUT.cxrlib-state/`` beside OUT."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / (out_dir.name + STATE_SUFFIX)


def remove_release(out_dir: str | Path, state_dir: str | Path | None = None) -> None:
    """Delete OUT and its state folder (default :func:`default_state_folder`), so that the next run writes
    the release anew: a manifest left without its outputs would hold the old outputs' names as taken."""
    import shutil

    for folder in (Path(out_dir), Path(state_dir) if state_dir is not None else default_state_folder(out_dir)):
        shutil.rmtree(folder, ignore_errors=True)


def manifests_in(folder: str | Path) -> list[Path]:
    """The manifest files (every rank's) directly in ``folder``."""
    return sorted(Path(folder).glob(f"{MANIFEST_PREFIX}-*.jsonl"))


def check_folders(in_dir: str | Path, out_dir: str | Path,
                  state_dir: str | Path | None = None) -> tuple[Path, Path, Path]:
    """IN, OUT and the state folder, resolved; DataError (before anything is written) when they overlap
    in a way that would write into IN or put the manifest into OUT."""
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    state_dir = Path(state_dir).resolve() if state_dir is not None else default_state_folder(out_dir)
    if not in_dir.is_dir():
        raise DataError(in_dir, "input folder does not exist")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise DataError(out_dir, f"output folder lies inside the input folder {in_dir}; choose one outside "
                                 "it (IN is never written to)")
    if out_dir in in_dir.parents:
        raise DataError(out_dir, f"output folder contains the input folder {in_dir}; choose another")
    if state_dir == out_dir or out_dir in state_dir.parents:
        raise DataError(state_dir, f"state folder lies inside the output folder {out_dir}: its manifest maps "
                                   "every output to its input and must not be published; choose one outside")
    if state_dir == in_dir or in_dir in state_dir.parents:
        raise DataError(state_dir, f"state folder lies inside the input folder {in_dir}; choose one outside it "
                                   "(IN is never written to)")
    legacy = manifests_in(out_dir)
    if legacy:
        raise DataError(legacy[0], "a manifest of an earlier cxrlib lies in the output folder: it lists every "
                                   "input's SHA-256 in the inputs' order and must not be published. Move it to "
                                   f"resume (mv {out_dir}/{MANIFEST_PREFIX}-*.jsonl {state_dir}/) or delete it")
    return in_dir, out_dir, state_dir


def input_files(in_dir: Path) -> list[Path]:
    """Every regular file under ``in_dir``, sorted, hidden files and folders left out."""
    return sorted(p for p in in_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(in_dir).parts))


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1)))


@dataclass
class FileResult:
    """What the per-file work returns: the output's path relative to OUT and its bytes, and notes."""

    output: str
    data: bytes
    notes: dict = field(default_factory=dict)


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


class Manifest:
    """The append-only record of one rank's finished files in the state folder, re-read on resume."""

    def __init__(self, state_dir: Path, settings: dict, rank: int):
        self.path = state_dir / f"{MANIFEST_PREFIX}-{rank}.jsonl"
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            first = json.loads(lines[0]) if lines else {}
            if lines and first.get("settings") != settings:
                raise DataError(self.path, "OUT was written with other settings (method, key, options); "
                                           "use the same settings, or a new output folder and state folder "
                                           "(delete both to start afresh)")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: that file is simply redone
                self.entries[entry["file"]] = entry
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._append({"settings": settings})

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def is_done(self, name: str, input_hash: str, out_dir: Path) -> bool:
        entry = self.entries.get(name)
        if not entry or entry.get("status") != "done" or entry.get("input_sha256") != input_hash:
            return False
        output = out_dir / entry["output"]
        return output.is_file() and sha256_file(output) == entry["output_sha256"]

    def record(self, entry: dict) -> None:
        self._append(entry)
        self.entries[entry["file"]] = entry


def remove_partials(out_dir: Path, rank: int = 0, world: int = 1) -> int:
    """Delete temporary files a killed run left behind: those of process ``rank`` and of ranks this
    run of ``world`` processes does not have (a run with more processes before); returns how many."""

    def leftover(path: Path) -> bool:
        writer = path.name.rpartition(PARTIAL_MARK)[2].partition("-")[0]
        return path.is_file() and (not writer.isdigit() or int(writer) == rank or int(writer) >= world)

    leftovers = [p for p in out_dir.rglob(f"*{PARTIAL_MARK}*") if leftover(p)] if out_dir.is_dir() else []
    for p in leftovers:
        p.unlink()
    return len(leftovers)


def run_batch(in_dir: str | Path, out_dir: str | Path, work: Callable[[Path, str, str], FileResult], *,
              settings: dict, progress: bool | None = None,
              files: Callable[[Path], list[Path]] = input_files,
              recorded_name: Callable[[str], str] = str, order: Callable[[str], str] | None = None,
              state_dir: str | Path | None = None) -> BatchSummary:
    """Apply ``work(path, relative_name, input_sha256)`` to every file of IN (this rank's share), writing OUT.

    ``work`` raises :class:`DataError` for a file it cannot handle: recorded as failed, the batch goes
    on. ``settings`` (JSON-able) are stored in the manifest; a rerun with other settings is refused.
    The manifest lies in ``state_dir`` (default :func:`default_state_folder`, never inside OUT) and records
    each input as ``recorded_name(relative_name)`` (e.g. a keyed hash, so that input names carrying PHI
    stay out of it). Files are processed sorted by ``order(relative_name)`` (default ``recorded_name``): pass
    a keyed hash, since the order of writing shows in the outputs' times and in some folder listings.
    """
    in_dir, out_dir, state_dir = check_folders(in_dir, out_dir, state_dir)
    rank, world = _rank()
    removed = remove_partials(out_dir, rank, world)
    if removed:
        log.info("removed %d partial file(s) of an interrupted run in %s", removed, out_dir)
    manifest = Manifest(state_dir, settings, rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = order or recorded_name
    # every rank sorts the same list the same way, so the ranks' shares never overlap
    mine = sorted(files(in_dir), key=lambda p: (order(p.relative_to(in_dir).as_posix()), p))[rank::world]
    summary = BatchSummary()
    # output -> (recorded input, output SHA-256, input name when known): two inputs must not overwrite each
    # other's output (e.g. one ChestX-ray14 name in two folders); identical outputs (copies) are fine
    claimed = {e["output"]: (e["file"], e["output_sha256"], None) for e in manifest.entries.values()
               if e.get("status") == "done"}
    for path in tqdm(mine, desc="anonymizing", unit="file", disable=progress is False):
        name = path.relative_to(in_dir).as_posix()
        recorded = recorded_name(name)
        input_hash = sha256_file(path)
        if manifest.is_done(recorded, input_hash, out_dir):
            summary.skipped += 1
            summary.records.append(manifest.entries[recorded])
            continue
        try:
            result = work(path, name, input_hash)
            owner, owner_hash, owner_name = claimed.get(result.output, (recorded, None, None))
            if owner != recorded and owner_hash != hashlib.sha256(result.data).hexdigest():
                raise DataError(path, f"its output {result.output} is already the output of another input "
                                      f"({owner_name or 'of an earlier run'}) with other content: two inputs "
                                      "with one name (e.g. a ChestX-ray14 name in two folders); rename one")
        except DataError as err:
            entry = {"file": recorded, "status": "failed", "input_sha256": input_hash, "error": err.problem}
            manifest.record(entry)
            summary.failed.append((name, err.problem))
            summary.records.append(entry)
            log.info("skipped %s", err)
            continue
        output_hash = atomic_write_bytes(out_dir / result.output, result.data)
        claimed[result.output] = (recorded, output_hash, name)
        entry = {"file": recorded, "status": "done", "input_sha256": input_hash, "output": result.output,
                 "output_sha256": output_hash, **result.notes}
        manifest.record(entry)
        summary.done += 1
        summary.records.append(entry)
    return summary


def output_names(out_dir: str | Path, state_dir: str | Path | None = None) -> dict[str, str]:
    """Recorded input name -> output path (relative to OUT) of every file done, from the manifests."""
    return {e["file"]: e["output"] for e in iter_manifest(out_dir, state_dir) if e.get("status") == "done"}


def iter_manifest(out_dir: str | Path, state_dir: str | Path | None = None) -> Iterator[dict]:
    """Every file entry of every rank's manifest of OUT (in ``state_dir``, default OUT's sibling state folder)."""
    for path in manifests_in(state_dir if state_dir is not None else default_state_folder(out_dir)):
        for line in path.read_text().splitlines()[1:]:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
