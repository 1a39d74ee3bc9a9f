"""Every notebook under the smoke profile on real pixels: data/chestxray14-sample (1,000 real ChestX-ray14
radiographs, no phantom files), executed by run_all.sh as a user with a ChestX-ray14 folder runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_notebooks import executed_outputs, run_smoke

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "chestxray14-sample"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: what a notebook prints or says where the folder has no phantom ground truth (phantom_truth.csv)
SKIPPED_WITHOUT_TRUTH = {
    "01_reidentification": "has no phantom_truth.csv",
    "05_publishing_a_release": "has no phantom_truth.csv",
}


@pytest.mark.slow  # about 5 minutes on 2 cores (the phantom's smoke run: test_notebooks.py)
def test_run_all_executes_every_notebook_on_the_real_sample(tmp_path):
    assert (SAMPLE / "Data_Entry_2017_v2020.csv").is_file(), f"{SAMPLE}: the real sample is missing"
    assert not (SAMPLE / "phantom_truth.csv").exists(), f"{SAMPLE} must hold the release's files only"
    results = run_smoke(tmp_path, "--data-dir", str(SAMPLE))
    for path in NOTEBOOKS:
        said = SKIPPED_WITHOUT_TRUTH.get(path.stem)
        if said:
            printed = "".join("".join(output.get("text", "")) for output in executed_outputs(results, path.name))
            assert said in printed, f"{path.name} did not say what it skips without phantom truth"
    for name in ("data.json", "reidentification.json", "publishing.json"):
        context = json.loads((results / name).read_text())["context"]
        assert context["profile"] == "smoke" and context["phantom"] is False
        assert str(SAMPLE) in context["data"], f"{name} ran on {context['data']}, not the sample"
    # the sample's real pixels under synthetic headers: an export of its test patients, audited three times
    publishing = json.loads((results / "publishing.json").read_text())
    assert publishing["release"]["images"] > 0
    assert set(publishing["audits"]) == {"raw", "conventional", "prichexy"}
    assert json.loads((results / "reidentification.json").read_text())["text_boxes"] is None
