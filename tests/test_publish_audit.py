"""`cxrlib audit`: internal linkage equals notebook 01's retrieval figures with the same model; reports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxrlib import reid
from cxrlib.cli import main
from cxrlib.data.chestxray14 import write_metadata
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Notebook 01's retrieval steps on a small phantom (smoke profile), and its test split as a folder."""
    root = tmp_path_factory.mktemp("audit")
    phantom = generate_phantom(root / "phantom", n_patients=40, size=32, seed=7, max_followups=4, progress=False)
    ws = Workspace.open("smoke", phantom, seed=7, results_dir=root / "results", artifacts_dir=root / "artifacts",
                        progress=False)
    config = ws.profile.retrieval
    path = ws.artifact_path("retrieval", "retrieval")
    model, _ = reid.train_retrieval(ws.images("train", target="patient"), ws.images("val", target="patient"),
                                    config, seed=ws.seed, checkpoint_path=path, progress=False)
    test = ws.splits.test
    images = reid.Images.from_cache(ws.cache, test["image"])
    ids = test.set_index("image").loc[list(images.names), "patient_id"].to_numpy()
    notebook = reid.evaluate_retrieval(model, images, ids)
    release = root / "release"
    (release / "images").mkdir(parents=True)
    for name in test["image"]:
        shutil.copy(phantom / "images" / name, release / "images" / name)
    write_metadata(ws.metadata[ws.metadata["image"].isin(test["image"])], release / "Data_Entry_2017_v2020.csv")
    return {"root": root, "phantom": phantom, "model": path.with_suffix(".safetensors"), "notebook": notebook,
            "release": release}


def test_internal_linkage_equals_notebook_01_retrieval(trained, capsys):
    out = trained["root"] / "report"
    assert main(["audit", str(trained["release"]), "--model", str(trained["model"]), "--profile", "smoke",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "audit.json").read_text())
    for metric, value in trained["notebook"].items():
        assert result["retrieval"][metric] == pytest.approx(value, abs=1e-9), metric
    assert 0 <= result["patients_relinked"] <= 1
    assert result["roc"]["auc"] > 0
    page = (out / "audit.html").read_text()
    assert "evidence, not proof" in page and "data:image/png;base64," in page
    assert f"{trained['notebook']['precision_at_1']:.1%}" in page
    assert "internal linkage: P@1" in capsys.readouterr().out


def test_audit_of_raw_and_anonymized_dicom_release(trained, tmp_path):
    dicom = write_phantom_dicom(trained["phantom"], tmp_path / "dicom", progress=False)
    key = tmp_path / "key"
    key.write_bytes(b"a" * 32)
    assert main(["anonymize", str(dicom / "images"), str(tmp_path / "anon"), "--key", str(key), "--quiet"]) == 0
    common = ["--model", str(trained["model"]), "--profile", "smoke", "--quiet"]
    assert main(["audit", str(dicom / "images"), "--out", str(tmp_path / "raw_report"), *common]) == 0
    raw = json.loads((tmp_path / "raw_report" / "audit.json").read_text())
    assert raw["headers"]["files_without_identity_removed"] == raw["images"]
    assert {"PatientBirthDate", "InstitutionName", "OtherPatientIDsSequence"} <= set(raw["headers"]["table_e1_1_present"])
    assert raw["headers"]["files_with_private_tags"] == raw["images"]
    assert raw["burned_in_text"]["images_with_text"] > 0
    assert main(["audit", str(tmp_path / "anon"), "--against", str(dicom / "images"), "--key", str(key),
                 "--out", str(tmp_path / "anon_report"), *common]) == 0
    anon = json.loads((tmp_path / "anon_report" / "audit.json").read_text())
    assert anon["headers"]["table_e1_1_present"] == {}
    assert anon["headers"]["files_with_private_tags"] == 0
    assert anon["headers"]["files_without_identity_removed"] == 0
    # the pseudonyms group the same patients as the original ids
    assert anon["patients"] == raw["patients"]
    # the key maps the raw ids onto the pseudonyms: every anonymized image's patient is in the raw set
    assert anon["against"]["queries_with_patient_in_other"] == anon["images"]
    assert 0 <= anon["against"]["top1"] <= 1


def test_near_duplicates_are_found(trained, tmp_path):
    release = tmp_path / "dup"
    shutil.copytree(trained["release"] / "images", release)
    first = sorted(release.iterdir())[0]
    shutil.copy(first, release / "copy_of_first.png")
    assert main(["audit", str(release), "--model", str(trained["model"]), "--profile", "smoke",
                 "--out", str(tmp_path / "r"), "--no-text-detection", "--quiet"]) == 0
    result = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert sorted(map(sorted, result["near_duplicates"])) == [sorted([first.name, "copy_of_first.png"])]
    assert not result["patient_ids_known"]  # a file name outside the ChestX-ray14 pattern: ids unknown
    assert np.isfinite(result["suspected_clusters"]["link_distance"])
