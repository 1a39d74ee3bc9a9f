"""The batch runner: kill -9 in the middle and a rerun give the same OUT as an uninterrupted run; the
manifest lies in a state folder outside OUT, and nothing in OUT maps back to the input."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cxrlib.cli import main
from cxrlib.data.chestxray14 import read_metadata
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish import batch
from cxrlib.publish.batch import (MANIFEST_PREFIX, PARTIAL_MARK, default_state_folder, manifests_in, remove_partials,
                                  sha256_file)
from cxrlib.publish.deidentify import CXR14_PATIENT_ID, Pseudonymizer
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.publish.pipeline import output_of
from tests.test_publish_pixels import METADATA, SAMPLE, write_sample_release

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_and_resume_give_the_same_output_as_one_run(tmp_path):
    png = generate_phantom(tmp_path / "png", n_patients=4, size=128, seed=5, max_followups=3, progress=False)
    dicom = write_phantom_dicom(png, tmp_path / "dicom", progress=False)
    release = tmp_path / "release"
    for copy in range(12):  # enough files that the kill lands in the middle
        shutil.copytree(dicom / "images", release / f"site{copy:02d}")
    before = _tree(release)
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    args = ["--key", str(key), "--method", "dp-pix", "--dp-b", "4", "--quiet"]
    assert main(["anonymize", str(release), str(tmp_path / "whole"), *args]) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "cxrlib", "anonymize", str(release), str(out), *args],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = default_state_folder(out) / f"{MANIFEST_PREFIX}-0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.is_file() and len(manifest.read_text().splitlines()) > 10:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(manifest.read_text().splitlines()) - 1
    total = len(before)
    assert 0 < written < total, f"the kill should land mid-run ({written} of {total} files done)"
    # nothing under a final name is partial: every output file present is complete and recorded or redone
    assert main(["anonymize", str(release), str(out), *args]) == 0
    assert not [p for p in out.rglob(f"*{PARTIAL_MARK}*")]
    assert _tree(out) == _tree(tmp_path / "whole")
    assert _tree(release) == before, "IN changed"
    # a third run finds everything done
    assert main(["anonymize", str(release), str(out), *args]) == 0


def test_rerun_with_other_settings_is_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--quiet"]) == 0
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--method", "dp-pix",
                 "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_two_processes_split_the_files_and_write_what_one_process_writes(tmp_path):
    png = generate_phantom(tmp_path / "png", n_patients=6, size=64, seed=3, max_followups=3, progress=False)
    release = write_phantom_dicom(png, tmp_path / "dicom", progress=False) / "images"
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    args = ["--key", str(key), "--method", "dp-pix", "--dp-b", "4", "--quiet"]
    assert main(["anonymize", str(release), str(tmp_path / "one"), *args]) == 0

    out = tmp_path / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "cxrlib", "anonymize", str(release), str(out), *args]
    done = subprocess.run(launch, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _tree(out) == _tree(tmp_path / "one")
    assert not manifests_in(out)
    shares = [path.read_text().splitlines()[1:] for path in manifests_in(default_state_folder(out))]
    assert len(shares) == 2
    assert all(shares) and sum(map(len, shares)) == len(_tree(release)), "each file done by exactly one process"


def test_a_starting_process_removes_its_own_leftovers_only(tmp_path):
    own, other, orphan = (tmp_path / f"a.dcm{PARTIAL_MARK}{rank}-123" for rank in (0, 1, 2))
    for path in (own, other, orphan):
        path.write_bytes(b"x")
    assert remove_partials(tmp_path, rank=0, world=2) == 2
    assert other.is_file() and not own.exists() and not orphan.exists()


def test_phantom_dicom_reads_the_release_layout_too(tmp_path):
    # notebook 05 writes its raw export from the working data, which on ChestX-ray14 (and in the paper dry
    # run) lies in images_00X/images/, not images/
    from cxrlib.data.chestxray14 import to_release_layout

    png = generate_phantom(tmp_path / "png", n_patients=3, size=32, seed=2, max_followups=2, progress=False)
    flat = write_phantom_dicom(png, tmp_path / "flat", seed=1, progress=False)
    release = write_phantom_dicom(to_release_layout(png), tmp_path / "release", seed=1, progress=False)
    assert not (png / "images").exists()
    assert _tree(flat) == _tree(release) and len(list((release / "images").glob("*.dcm"))) >= 3


def _rank_correlation(a: list, b: list) -> float:
    """Spearman's rank correlation of two orderings of the same items."""
    rank_a = {item: i for i, item in enumerate(a)}
    rank_b = {item: i for i, item in enumerate(b)}
    items = list(rank_a)
    return float(np.corrcoef([rank_a[i] for i in items], [rank_b[i] for i in items])[0, 1])


def test_nothing_in_out_maps_back_to_the_input(tmp_path, monkeypatch):
    """The real sample (PNG, CSV, split lists) and phantom DICOM: no input hash, path or name in OUT, and
    neither the order the files are written in nor the outputs' names follow the inputs' order."""
    export = write_sample_release(tmp_path / "export")
    png = generate_phantom(tmp_path / "png", n_patients=3, size=32, seed=4, max_followups=3, progress=False)
    shutil.copytree(write_phantom_dicom(png, tmp_path / "dicom", progress=False) / "images", export / "dicom")
    key = tmp_path / "key"
    key.write_bytes(b"n" * 32)
    write_order = []
    write = batch.atomic_write_bytes

    def recording_write(path, data):
        write_order.append(Path(path))
        return write(path, data)

    monkeypatch.setattr(batch, "atomic_write_bytes", recording_write)
    out = tmp_path / "out"
    assert main(["anonymize", str(export), str(out), "--key", str(key), "--method", "none", "--quiet"]) == 0

    inputs = sorted(p for p in export.rglob("*") if p.is_file())
    images = [p for p in inputs if p.suffix in (".png", ".dcm")]
    assert len(images) > 40
    secrets = set()
    for path in inputs:
        digest = hashlib.sha256(path.read_bytes())
        secrets |= {digest.hexdigest().encode(), digest.hexdigest().upper().encode(), digest.digest(),
                    str(path).encode(), path.relative_to(export).as_posix().encode()}
    secrets |= {p.name.encode() for p in images} | {p.stem.encode() for p in images}
    # the metadata CSV and split lists keep their standard names (and nothing else of the input's)
    tables = {p.relative_to(export).as_posix().encode() for p in inputs if p not in images}
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == len(inputs)
    assert not [p for p in written if any(part.startswith(".") for part in p.relative_to(out).parts)], \
        "hidden files (a manifest?) in OUT"
    for path in written:
        data, name = path.read_bytes(), path.relative_to(out).as_posix().encode()
        for secret in secrets:
            assert secret not in data, f"{secret[:40]!r} of the input in {path}"
            assert secret not in name or secret in tables, f"{secret!r} in the output path {name!r}"
    # the manifest lies beside OUT, and it is what maps outputs to inputs
    state = default_state_folder(out)
    assert state == out.parent / "out.cxrlib-state" and manifests_in(state) and not manifests_in(out)

    origin = {output_of(out, p.relative_to(export).as_posix(), key.read_bytes()): p for p in images}
    assert len(origin) == len(images)
    # the order the files were written in (their times; on some file systems the folder's listing order)
    input_order = sorted(origin, key=lambda output: origin[output])
    writes = [p for p in write_order if p in origin]
    correlation = _rank_correlation(input_order, writes)
    assert abs(correlation) < 0.5, f"the write order follows the input order (rank correlation {correlation:.2f})"
    # a listing sorted by name (ls, an archive, a web index): the pseudonymous numbers of the sample's 264
    # patients do not sort as their ids do (a follow-up number keeps its place after the patient's, by design)
    originals = sorted(read_metadata(SAMPLE / METADATA)["patient_id"].unique())
    pseudonym = Pseudonymizer(key.read_bytes()).pseudonym
    correlation = _rank_correlation(originals, sorted(originals, key=lambda p: pseudonym(CXR14_PATIENT_ID, str(p))))
    assert len(originals) == 264
    assert abs(correlation) < 0.2, f"pseudonyms sort as the ids (rank correlation {correlation:.2f})"
    written_ids = {int(p.name[:8]) for p in (out / "images").iterdir()}
    assert written_ids == {int(pseudonym(CXR14_PATIENT_ID, p.name[:8])) for p in images if p.suffix == ".png"}


def test_state_folder_is_outside_out_and_resumes(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    out, state = tmp_path / "out", tmp_path / "private" / "state"
    args = ["--key", str(key), "--state", str(state), "--quiet"]
    assert main(["anonymize", str(folder), str(out), *args]) == 0
    assert manifests_in(state) and not manifests_in(out) and not default_state_folder(out).exists()
    assert output_of(out, "ct.dcm", key.read_bytes(), state).is_file()
    assert "keep the state folder" in capsys.readouterr().out
    # a rerun resumes from the state folder: nothing is written again
    assert main(["anonymize", str(folder), str(out), *args]) == 0
    assert "already done (skipped)        2" in capsys.readouterr().out
    # a state folder inside OUT would be published with it, one inside IN would write to IN
    for inside in (tmp_path / "out2" / "state", folder / "state"):
        assert main(["anonymize", str(folder), str(tmp_path / "out2"), "--key", str(key), "--state", str(inside),
                     "--quiet"]) == 2
        assert "state folder lies inside" in capsys.readouterr().err
        assert not inside.exists() and not (tmp_path / "out2").exists()


def test_a_manifest_left_in_out_by_an_earlier_version_is_refused(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    out = tmp_path / "out"
    assert main(["anonymize", str(folder), str(out), "--key", str(key), "--quiet"]) == 0
    for path in manifests_in(default_state_folder(out)):  # where an earlier cxrlib wrote it
        path.rename(out / path.name)
    assert main(["anonymize", str(folder), str(out), "--key", str(key), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "must not be published" in err and f"{MANIFEST_PREFIX}-0.jsonl" in err


def test_remove_release_lets_another_export_be_written_where_one_was(tmp_path):
    """Deleting OUT alone leaves its manifest beside it, which holds the old outputs' names as taken: another
    export written to the same OUT then fails file by file (notebook 05 did, run on a second data set)."""
    def copy(path, name, input_hash):  # outputs named by position, as new UIDs name DICOM outputs
        return batch.FileResult(output="image" + name[-5:], data=path.read_bytes())

    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for folder, content in ((first, b"one"), (second, b"two")):
        folder.mkdir()
        for k in range(3):
            (folder / f"{folder.name}{k}.png").write_bytes(content + bytes([k]))
    assert batch.run_batch(first, out, copy, settings={}, progress=False).done == 3
    shutil.rmtree(out)
    stale = batch.run_batch(second, out, copy, settings={}, progress=False)
    assert stale.done == 0 and len(stale.failed) == 3 and "already the output of another input" in stale.failed[0][1]
    batch.remove_release(out)
    assert not out.exists() and not default_state_folder(out).exists()
    fresh = batch.run_batch(second, out, copy, settings={}, progress=False)
    assert fresh.done == 3 and not fresh.failed
    assert (out / "image1.png").read_bytes() == b"two\x01"
