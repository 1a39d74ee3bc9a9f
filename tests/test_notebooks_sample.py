"""Every notebook under the smoke profile on real pixels: data/chestxray14-sample (1,000 real ChestX-ray14
radiographs, no phantom files), executed by run_all.sh as a user with a ChestX-ray14 folder runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.test_notebooks import EXPECTED_METRICS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "chestxray14-sample"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: what a notebook prints or says where the folder has no phantom ground truth (phantom_truth.csv)
SKIPPED_WITHOUT_TRUTH = {
    "01_reidentification": "has no phantom_truth.csv",
    "05_publishing_a_release": "has no phantom_truth.csv",
}


def _outputs(notebook: dict) -> list[dict]:
    return [output for cell in notebook["cells"] for output in cell.get("outputs", [])]


@pytest.mark.slow  # about 5 minutes on 2 cores (the phantom's smoke run: test_notebooks.py)
def test_run_all_executes_every_notebook_on_the_real_sample(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    assert "cxrlib" in KernelSpecManager().find_kernel_specs(), (
        "the 'cxrlib' Jupyter kernel is not registered; run ./run_tests.sh (scripts/setup.sh registers it)")
    assert (SAMPLE / "Data_Entry_2017_v2020.csv").is_file(), f"{SAMPLE}: the real sample is missing"
    assert not (SAMPLE / "phantom_truth.csv").exists(), f"{SAMPLE} must hold the release's files only"
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    run = subprocess.run([str(ROOT / "run_all.sh"), "--profile", "smoke", "--data-dir", str(SAMPLE),
                          "--results", str(results), "--artifacts", str(artifacts)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for path in NOTEBOOKS:
        for name in EXPECTED_METRICS[path.stem]:
            written = results / name
            assert written.is_file() and written.stat().st_size > 0, f"{path.name} did not write {name}"
        executed = json.loads((results / "notebooks" / path.name).read_text())
        outputs = _outputs(executed)
        assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.name} showed no figure"
        said = SKIPPED_WITHOUT_TRUTH.get(path.stem)
        if said:
            printed = "".join("".join(output.get("text", "")) for output in outputs)
            assert said in printed, f"{path.name} did not say what it skips without phantom truth"
    figures = list((results / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures), "an empty figure was saved"
    for name in ("data.json", "reidentification.json", "publishing.json"):
        context = json.loads((results / name).read_text())["context"]
        assert context["profile"] == "smoke" and context["phantom"] is False
        assert str(SAMPLE) in context["data"], f"{name} ran on {context['data']}, not the sample"
    # the sample's real pixels under synthetic headers: an export of its test patients, audited three times
    publishing = json.loads((results / "publishing.json").read_text())
    assert publishing["release"]["images"] > 0
    assert set(publishing["audits"]) == {"raw", "conventional", "prichexy"}
    assert json.loads((results / "reidentification.json").read_text())["text_boxes"] is None
