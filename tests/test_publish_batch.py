"""The batch runner: kill -9 in the middle and a rerun give the same OUT as an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cxrlib.cli import main
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.batch import MANIFEST_PREFIX, PARTIAL_MARK, remove_partials, sha256_file
from cxrlib.publish.phantom_dicom import write_phantom_dicom

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(MANIFEST_PREFIX)}


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
    manifest = out / f"{MANIFEST_PREFIX}-0.jsonl"
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
    shares = [[line for line in (out / f"{MANIFEST_PREFIX}-{rank}.jsonl").read_text().splitlines()[1:]]
              for rank in (0, 1)]
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
