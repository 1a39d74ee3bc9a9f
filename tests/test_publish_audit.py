"""`cxrlib audit`: internal linkage equals notebook 01's retrieval figures with the same model; the linkage
attack meets anonymize's pseudonyms (PNG and DICOM); files without a patient id are listed, not fatal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlib import reid
from cxrlib.cli import main
from cxrlib.data.chestxray14 import write_metadata
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.publish.pipeline import output_of
from cxrlib.workspace import Workspace
from tests.test_publish_pixels import SAMPLE, write_sample_release


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Notebook 01's retrieval steps on a small phantom (smoke profile), and its test split as a folder."""
    root = tmp_path_factory.mktemp("audit")
    phantom = generate_phantom(root / "phantom", n_patients=40, size=32, seed=7, max_followups=4, progress=False)
    ws = Workspace.open("smoke", phantom, seed=7, results_dir=root / "results", artifacts_dir=root / "artifacts",
                        progress=False)
    config = ws.profile.retrieval
    path = ws.artifact_path("retrieval", "retrieval")
    model, _ = reid.train_retrieval(ws.images("train"), ws.images("val"),
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
    # no pixel method: each image's nearest raw image is itself (or the same patient's)
    assert anon["against"]["top1"] >= 0.9


def test_near_duplicates_are_found(trained, tmp_path):
    release = tmp_path / "dup"
    shutil.copytree(trained["release"] / "images", release)
    first = sorted(release.iterdir())[0]
    shutil.copy(first, release / "copy_of_first.png")
    (release / ".cxrlib-manifest-0.jsonl").write_text("{}\n")  # as an earlier cxrlib left it in OUT
    assert main(["audit", str(release), "--model", str(trained["model"]), "--profile", "smoke",
                 "--out", str(tmp_path / "r"), "--no-text-detection", "--quiet"]) == 0
    result = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert result["manifests_in_release"] == [".cxrlib-manifest-0.jsonl"]
    assert "Do not publish this folder" in (tmp_path / "r" / "audit.html").read_text()
    assert sorted(map(sorted, result["near_duplicates"])) == [sorted([first.name, "copy_of_first.png"])]
    # a file name outside the ChestX-ray14 pattern: that file's id is unknown, the others' are not
    assert result["files_without_patient_id"] == ["copy_of_first.png"] and "retrieval" in result
    assert np.isfinite(result["suspected_clusters"]["link_distance"])


def _audit(trained, folder: Path, out: Path, *extra: str) -> dict:
    assert main(["audit", str(folder), "--model", str(trained["model"]), "--profile", "smoke", "--out", str(out),
                 "--quiet", *extra]) == 0
    return json.loads((out / "audit.json").read_text())


def test_png_release_is_linked_to_its_export_through_the_pseudonyms_anonymize_wrote(trained, tmp_path, capsys):
    """40 real ChestX-ray14 images: the audit pseudonymizes the export's ids as anonymize did (8 digits, not
    DICOM's ANON-...), so the id-based linkage figures are computed, and high, as they must be without a
    pixel method."""
    export = write_sample_release(tmp_path / "export")
    key = tmp_path / "key"
    key.write_bytes(b"r" * 32)
    assert main(["anonymize", str(export), str(tmp_path / "release"), "--key", str(key), "--method", "none",
                 "--quiet"]) == 0
    result = _audit(trained, tmp_path / "release", tmp_path / "report", "--against", str(export), "--key", str(key))
    against = result["against"]
    assert "linkage_not_scored" not in against, against.get("linkage_not_scored")
    assert against["queries_with_patient_in_other"] == result["images"] == 40
    assert against["top1"] >= 0.95 and against["top5"] >= against["top1"]
    assert result["files_without_patient_id"] == [] and against["files_without_patient_id"] == []
    assert result["patients"] == len({p.name[:8] for p in (export / "images").iterdir()})
    assert 0 <= result["retrieval"]["precision_at_1"] <= 1
    out = capsys.readouterr().out
    assert "linkage attack against" in out and "top-1" in out
    page = (tmp_path / "report" / "audit.html").read_text()
    assert "Patient ids not compared" not in page and f"{against['top1']:.1%}" in page
    # without the key the export's raw ids cannot meet the pseudonyms: said, not silently skipped
    result = _audit(trained, tmp_path / "release", tmp_path / "no_key", "--against", str(export))
    assert "pass --key" in result["against"]["linkage_not_scored"] and "top1" not in result["against"]
    assert "patient ids not compared" in capsys.readouterr().err
    assert "Patient ids not compared" in (tmp_path / "no_key" / "audit.html").read_text()


def test_a_png_without_a_release_name_is_listed_and_left_out_of_the_id_figures(trained, tmp_path, capsys):
    export = write_sample_release(tmp_path / "export", count=20)
    shutil.copy(SAMPLE / "images" / "00000099_000.png", export / "images" / "scan_of_doe.png")
    key = tmp_path / "key"
    key.write_bytes(b"r" * 32)
    release = tmp_path / "release"
    assert main(["anonymize", str(export), str(release), "--key", str(key), "--method", "none", "--quiet"]) == 0
    stray = output_of(release, "images/scan_of_doe.png", key.read_bytes()).relative_to(release).as_posix()
    assert stray.startswith("images/")
    result = _audit(trained, release, tmp_path / "report", "--against", str(export), "--key", str(key))
    assert result["images"] == 21 and result["files_without_patient_id"] == [stray]
    assert result["images_with_patient_id"] == 20 and "retrieval" in result, result.get("linkage_not_scored")
    against = result["against"]
    assert against["files_without_patient_id"] == ["images/scan_of_doe.png"]
    assert against["queries_with_patient_in_other"] == 20 and against["top1"] >= 0.95
    # the nearest-neighbour pairs involving the stray file are neither "same" nor "other" patient
    names = sorted(p.relative_to(release).as_posix() for p in (release / "images").iterdir())
    assert result["nearest_neighbour"]["same_patient"][names.index(stray)] is None
    assert "1 file(s) without a patient id" in capsys.readouterr().out
    page = (tmp_path / "report" / "audit.html").read_text()
    assert stray in page and "carry no patient id" in page and "Linkage is not scored" not in page


def test_a_dicom_with_an_empty_patient_id_is_listed_and_left_out_of_the_id_figures(trained, tmp_path):
    import pydicom

    raw = write_phantom_dicom(trained["phantom"], tmp_path / "dicom", progress=False) / "images"
    first = sorted(raw.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.PatientID = ""
    ds.save_as(first)
    key = tmp_path / "key"
    key.write_bytes(b"d" * 32)
    release = tmp_path / "release"
    assert main(["anonymize", str(raw), str(release), "--key", str(key), "--quiet"]) == 0
    written = output_of(release, first.name, key.read_bytes())
    # no id in, no id out: never one pseudonym shared by every file without an id
    assert pydicom.dcmread(written).PatientID == "" and pydicom.dcmread(written).PatientName == ""
    result = _audit(trained, release, tmp_path / "report", "--against", str(raw), "--key", str(key))
    count = len(list(raw.glob("*.dcm")))
    assert result["files_without_patient_id"] == [written.relative_to(release).as_posix()]
    assert "retrieval" in result and result["images_with_patient_id"] == count - 1
    against = result["against"]
    assert against["files_without_patient_id"] == [first.name]
    assert against["queries_with_patient_in_other"] == count - 1 and against["top1"] >= 0.9
