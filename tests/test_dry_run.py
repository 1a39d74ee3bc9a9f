"""The ``paper`` path on this CPU: a 1024 px phantom in the release's own layout, stripped of every file
the release does not have (the phantom's ground truth), through every notebook with the paper profile's
architectures, image sizes and settings, every loop capped at one step (``run_all.sh --profile paper
--data-dir DIR --max-steps 1``; the README documents 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrlib.config import DRY_RUN_BATCH, load_profile
from cxrlib.data.chestxray14 import SPLIT_FILES, to_release_layout
from cxrlib.data.pairs import official_pair_file, read_pair_file
from cxrlib.data.phantom import METADATA_FILE, PHANTOM_TRUTH, generate_phantom
from cxrlib.workspace import MAX_STEPS_VARIABLE, RELEASE_IMAGES, Workspace

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_STEPS = 1


#: what a downloaded release holds beside its images_00X/images/ folders (data/README.md)
RELEASE_FILES = {METADATA_FILE, *SPLIT_FILES.values()}


def write_dry_run_release(folder: Path, size: int = 1024, n_patients: int = 20) -> Path:
    """A small phantom at the release's 1024 px, laid out as the downloaded release is and holding only
    the release's files: the phantom's ground truth removed, so nothing can lean on it."""
    generate_phantom(folder, n_patients=n_patients, size=size, seed=0, max_followups=4, progress=False)
    (folder / PHANTOM_TRUTH).unlink()
    return to_release_layout(folder)


def test_dry_run_release_holds_only_what_the_release_has(tmp_path):
    data = write_dry_run_release(tmp_path / "chestxray14", size=32, n_patients=4)
    files = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    images = {name for name in files if name.startswith("images_")}
    assert files - images == RELEASE_FILES
    assert all(name.split("/")[1] == "images" and name.endswith(".png") for name in images)


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


def test_part_of_the_release_draws_validation_and_pairs_with_the_seed(tmp_path, monkeypatch):
    # the paper profile's official rules need the whole release: 75,708 train/val entries, pair files
    # naming its images; a part of it (the dry run's folder, data/chestxray14-sample) draws both
    data = write_dry_run_release(tmp_path / "chestxray14", size=32, n_patients=30)
    monkeypatch.setenv(MAX_STEPS_VARIABLE, str(MAX_STEPS))
    with pytest.warns(UserWarning, match="batch sizes capped"):
        ws = Workspace.open("paper", data, seed=0, results_dir=tmp_path / "results",
                            artifacts_dir=tmp_path / "artifacts", progress=False)
    assert ws.phantom_truth is None and not ws.is_chestxray14
    assert ws.splits.source == "official" and len(ws.splits.val)
    assert len(ws.pairs("train", 10**6, "anonymization")) <= MAX_STEPS * DRY_RUN_BATCH


def test_whole_release_dry_run_draws_the_pairs_its_capped_splits_allow(tmp_path, real_meta, official_lists_dir):
    # the release itself (its metadata and lists; pairs need no pixels): a real run reads PriCheXy-Net's
    # pair files, a dry run's few images are not in them
    assert len(real_meta) == RELEASE_IMAGES
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    with pytest.warns(UserWarning, match="batch sizes capped"):
        dry = Workspace(load_profile("paper", max_steps=MAX_STEPS), official_lists_dir, is_phantom=False, seed=0,
                        results_dir=results, artifacts_dir=artifacts)
    full = Workspace(load_profile("paper"), official_lists_dir, is_phantom=False, seed=0, results_dir=results,
                     artifacts_dir=artifacts)
    dry.metadata = full.metadata = real_meta
    assert dry.is_chestxray14 and full.is_chestxray14
    assert len(dry.pairs("test", 5000, "anonymization")) <= MAX_STEPS * DRY_RUN_BATCH
    official = read_pair_file(official_pair_file("test"))
    pairs = full.pairs("test", len(official), "anonymization")
    assert pairs.equals(official)


@pytest.mark.slow  # tens of minutes on 2 cores; CI runs it (`-m "not slow"` skips it)
def test_paper_profile_dry_run_executes_every_notebook(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    data = write_dry_run_release(tmp_path / "chestxray14")
    assert len(list(data.glob("images_*/images"))) == 12 and not (data / "images").exists()
    assert not (data / PHANTOM_TRUTH).exists()
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
