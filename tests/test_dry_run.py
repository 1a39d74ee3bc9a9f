"""The ``paper`` path on this CPU: a 1024 px phantom in the release's own layout through every notebook
with the paper profile's architectures, image sizes and settings, every loop capped at one step
(``run_all.sh --profile paper --data-dir DIR --max-steps 1``; the README documents 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrlib.config import DRY_RUN_BATCH, load_profile
from cxrlib.data.chestxray14 import to_release_layout
from cxrlib.data.phantom import generate_phantom
from cxrlib.workspace import MAX_STEPS_VARIABLE, Workspace

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_STEPS = 1


def write_dry_run_release(folder: Path) -> Path:
    """A small phantom at the release's 1024 px, laid out as the downloaded release is."""
    generate_phantom(folder, n_patients=20, size=1024, seed=0, max_followups=4, progress=False)
    return to_release_layout(folder)


def test_dry_run_profile_keeps_the_models_and_caps_the_loops():
    paper = load_profile("paper")
    with pytest.warns(UserWarning, match="batch sizes capped at 4"):
        dry = load_profile("paper", max_steps=MAX_STEPS)
    assert dry.data.max_steps == MAX_STEPS and paper.data.max_steps == 0
    for section in ("verification", "retrieval", "classifier"):
        assert getattr(dry, section).backbone == getattr(paper, section).backbone
    assert dry.image_size == paper.image_size == 256 and dry.classifier.input_size == 224
    assert dry.synthesis.unet_channels == paper.synthesis.unet_channels
    assert dry.anonymization.generator_features == paper.anonymization.generator_features
    assert (dry.verification.max_epochs, dry.classifier.max_epochs, dry.synthesis.unet_epochs) == (1, 1, 1)
    assert (dry.retrieval.frozen_epochs, dry.retrieval.unfrozen_epochs) == (1, 1)
    assert dry.verification.runs == dry.evaluation.attack_runs == MAX_STEPS
    assert dry.anonymization.mu_values == paper.anonymization.mu_values[-MAX_STEPS:]
    assert dry.synthesis.sampling_steps == MAX_STEPS
    assert max(dry.verification.batch_size, dry.anonymization.batch_size, dry.synthesis.batch_size) == DRY_RUN_BATCH
    # capped checkpoints never pass for a real run's
    assert dry.fingerprint("data") != paper.fingerprint("data")


def test_workspace_dry_run_caps_splits_and_pairs(tmp_path, monkeypatch):
    data = generate_phantom(tmp_path / "phantom", n_patients=30, size=32, seed=3, max_followups=4, progress=False)
    monkeypatch.setenv(MAX_STEPS_VARIABLE, str(MAX_STEPS))
    with pytest.warns(UserWarning, match="batch sizes capped"):
        ws = Workspace.open("smoke", data, seed=0, results_dir=tmp_path / "results",
                            artifacts_dir=tmp_path / "artifacts", progress=False)
    assert ws.profile.data.max_steps == MAX_STEPS
    limit = MAX_STEPS * DRY_RUN_BATCH
    for _, frame in ws.splits.items():
        assert frame["patient_id"].nunique() >= 2
        assert len(frame) <= limit or frame["patient_id"].nunique() == 2
    assert len(ws.pairs("train", 10**6, "verification")) <= limit


@pytest.mark.slow  # tens of minutes on 2 cores; CI runs it (`-m "not slow"` skips it)
def test_paper_profile_dry_run_executes_every_notebook(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    data = write_dry_run_release(tmp_path / "chestxray14")
    assert len(list(data.glob("images_*/images"))) == 12 and not (data / "images").exists()
    monkeypatch.setenv(MAX_STEPS_VARIABLE, str(MAX_STEPS))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's cxrlib
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    for path in NOTEBOOKS:
        executed = tmp_path / path.name
        papermill.execute_notebook(
            str(path), str(executed), kernel_name="cxrlib", cwd=str(ROOT / "notebooks"),
            parameters={"profile": "paper", "data_dir": str(data), "seed": 0, "results_dir": str(results),
                        "artifacts_dir": str(artifacts)},
            progress_bar=False)
        if path.stem != "00_data":
            assert "batch sizes capped at 4" in executed.read_text(), f"{path.name} did not say it capped batches"
    assert json.loads((results / "data.json").read_text())["context"]["profile"] == "paper"
    assert len(list((results / "figures").glob("*.png"))) >= 10
    # the paper's networks were built, trained for one capped epoch each and checkpointed
    siamese = json.loads(next(artifacts.rglob("siamese-*-seed0.json")).read_text())
    assert siamese["config"]["backbone"] == "resnet50" and siamese["finished"]
    assert len(siamese["history"]) == 1
    classifier = json.loads(next(artifacts.rglob("classifier-*-seed0.json")).read_text())
    assert classifier["config"]["classifier"]["backbone"] == "densenet121"
