"""The pixel step: trained anonymizers loaded from safetensors + sidecar, written back at the input's format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrlib.anonymize.flow_field import FlowFieldAnonymizer
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer
from cxrlib.cli import main
from cxrlib.data.chestxray14 import RAW_COLUMNS, SPLIT_FILES, read_metadata, write_metadata
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.deidentify import CXR14_PATIENT_ID, Pseudonymizer
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.publish.pipeline import find_trained, output_of, pixel_method, trained_anonymizers

#: the 1,000 real ChestX-ray14 radiographs in the release layout
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "chestxray14-sample"
METADATA = "Data_Entry_2017_v2020.csv"
#: the release CSV's columns anonymize blanks unless --keep-patient-characteristics
QUASI_IDENTIFIERS = ("Patient Age", "Patient Gender", "OriginalImage[Width", "Height]",
                     "OriginalImagePixelSpacing[x", "y]")


def write_sample_release(folder: Path, count: int = 40) -> Path:
    """The first ``count`` images of the real ChestX-ray14 sample (patients with follow-ups among them) in
    the release layout: images/, the metadata CSV and the split lists, restricted to those images."""
    names = sorted(p.name for p in (SAMPLE / "images").glob("*.png"))[:count]
    (folder / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(SAMPLE / "images" / name, folder / "images" / name)
    meta = read_metadata(SAMPLE / METADATA)
    write_metadata(meta[meta["image"].isin(names)], folder / METADATA)
    for split in SPLIT_FILES.values():
        listed = [n for n in (SAMPLE / split).read_text().split() if n in set(names)]
        (folder / split).write_text("\n".join(listed) + "\n")
    return folder


def read_release_csv(folder: Path) -> pd.DataFrame:
    """An anonymized release's metadata CSV as text columns (its blanked columns fail read_metadata's checks)."""
    table = pd.read_csv(folder / METADATA, dtype=str, keep_default_na=False)
    assert tuple(table.columns) == RAW_COLUMNS, "not the release's header"
    return table


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixels")
    png = generate_phantom(root / "png", n_patients=3, size=64, seed=2, max_followups=2, progress=False)
    dicom = write_phantom_dicom(png, root / "dicom", progress=False)
    (root / "key").write_bytes(b"p" * 32)
    flow = FlowFieldAnonymizer(mu=0.05, image_size=32, features=8, poolings=2)
    flow.save(root / "artifacts" / "cpu" / "flow_field-x")
    PrivacyNetAnonymizer(features=4, poolings=2).save(root / "privacy_net")
    return {"root": root, "png": png, "dicom": dicom}


@pytest.mark.parametrize("method, extra", [
    ("prichexy", []),
    ("privacy-net", ["--model", "{root}/privacy_net.safetensors", "--size", "32"]),
    ("dp-pix", ["--dp-b", "4", "--dp-eps", "0.5"]),
])
def test_methods_change_pixels_and_keep_the_format(setup, tmp_path, method, extra):
    root = setup["root"]
    extra = [e.format(root=root) for e in extra]
    out = tmp_path / "out"
    assert main(["anonymize", str(setup["dicom"] / "images"), str(out), "--key", str(root / "key"),
                 "--method", method, "--artifacts", str(root / "artifacts"), "--no-text-detection", "--quiet",
                 *extra]) == 0
    for source_path in sorted((setup["dicom"] / "images").glob("*.dcm")):
        result = pydicom.dcmread(output_of(out, source_path.name, (root / "key").read_bytes()))
        source = pydicom.dcmread(source_path)
        for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation",
                        "RescaleSlope", "RescaleIntercept", "WindowCenter"):
            assert source.get(keyword) == result.get(keyword), keyword
        before, after = source.pixel_array.astype(float), result.pixel_array.astype(float)
        assert after.shape == before.shape
        assert after.max() < 2 ** source.BitsStored
        assert not np.array_equal(before, after), f"{method} left {source_path.name} unchanged"
        recorded = [m for m in result.DeidentificationMethod if m.startswith("pixels: ")]
        assert recorded and {"prichexy": "flow_field", "privacy-net": "privacy_net", "dp-pix": "dp_pix"}[method] in recorded[0]


def test_pngs_go_through_the_same_pixel_step(setup, tmp_path):
    root = setup["root"]
    assert main(["anonymize", str(setup["png"] / "images"), str(tmp_path / "out"), "--key", str(root / "key"),
                 "--method", "dp-pix", "--dp-b", "4", "--quiet"]) == 0
    from PIL import Image

    number = Pseudonymizer((root / "key").read_bytes()).patient_number
    for source in sorted((setup["png"] / "images").glob("*.png")):
        renamed = f"{number(int(source.name[:8])):08d}{source.name[8:]}"  # the id in the name is pseudonymized
        a, b = np.asarray(Image.open(source)), np.asarray(Image.open(tmp_path / "out" / "images" / renamed))
        assert a.shape == b.shape and a.dtype == b.dtype and not np.array_equal(a, b)


def test_newest_trained_anonymizer_is_found_and_a_wrong_kind_refused(setup, tmp_path):
    root = setup["root"]
    assert find_trained(root / "artifacts", "flow_field").name == "flow_field-x.safetensors"
    # notebook 02's diagnostic (trained against adversaries never updated) is never picked, however new
    diagnostic = tmp_path / "artifacts" / "cpu" / "prichexy_mu0p01_frozen_adversaries"
    shutil.copytree(root / "artifacts", tmp_path / "artifacts")
    FlowFieldAnonymizer(mu=0.01, image_size=32, features=8, poolings=2).save(diagnostic)
    sidecar = diagnostic.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "training": {"update_adversaries": False}}))
    assert find_trained(tmp_path / "artifacts", "flow_field").name == "flow_field-x.safetensors"
    assert [p.name for p in trained_anonymizers(tmp_path / "artifacts", "flow_field")] == ["flow_field-x.safetensors"]
    method = pixel_method("prichexy", artifacts_dir=root / "artifacts")
    assert method.size == 32
    with pytest.raises(ValueError, match="not flow_field"):
        pixel_method("prichexy", model=root / "privacy_net.safetensors")
    with pytest.raises(ValueError, match="no trained privacy_net"):
        pixel_method("privacy-net", artifacts_dir=root / "artifacts")


def test_a_second_reader_opens_the_written_files(setup, tmp_path):
    """SimpleITK (ITK's GDCM reader, as DICOM viewers use) reads what pydicom reads."""
    import SimpleITK as sitk
    from pydicom.pixels import apply_modality_lut

    root = setup["root"]
    assert main(["anonymize", str(setup["dicom"] / "images"), str(tmp_path / "out"), "--key", str(root / "key"),
                 "--method", "prichexy", "--artifacts", str(root / "artifacts"), "--quiet"]) == 0
    files = sorted((tmp_path / "out").rglob("*.dcm"))  # STUDY/SERIES/SOP.dcm
    assert len(files) == len(list((setup["dicom"] / "images").glob("*.dcm")))
    assert {pydicom.dcmread(f).PhotometricInterpretation for f in files} >= {"MONOCHROME2"}
    for path in files:
        ds = pydicom.dcmread(path)
        ours = apply_modality_lut(ds.pixel_array, ds)
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
        assert theirs.shape == ours.shape
        if ds.PhotometricInterpretation == "MONOCHROME1":
            # ITK/GDCM present MONOCHROME1 inverted (as MONOCHROME2): the same values, mirrored
            slope, offset = np.polyfit(ours.ravel().astype(float), theirs.ravel().astype(float), 1)
            assert slope == pytest.approx(-1.0) and np.allclose(theirs, -ours + offset), path.name
        else:
            assert np.array_equal(theirs, ours), path.name


def test_chestxray14_folder_gets_pseudonymous_ids_in_names_metadata_and_lists(setup, tmp_path):
    from cxrlib.data.chestxray14 import find_metadata_file

    png, root = setup["png"], setup["root"]
    assert main(["anonymize", str(png), str(tmp_path / "out"), "--key", str(root / "key"), "--quiet"]) == 1
    out = tmp_path / "out"
    before = read_metadata(find_metadata_file(png))
    after = read_release_csv(out).rename(columns={"Image Index": "image", "Patient ID": "patient_id"})
    after["patient_id"] = after["patient_id"].astype(int)
    pseudonym = Pseudonymizer((root / "key").read_bytes()).patient_number
    assert sorted(after["patient_id"]) == sorted(pseudonym(int(p)) for p in before["patient_id"])
    assert not set(after["patient_id"]) & set(before["patient_id"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(after["image"])
    listed = (out / "test_list.txt").read_text().split() + (out / "train_val_list.txt").read_text().split()
    assert sorted(listed) == sorted(after["image"])
    # the ground truth is no part of a release: refused, not copied
    assert not (out / "phantom_truth.csv").exists()


def test_release_csv_loses_age_sex_size_and_spacing_unless_patient_characteristics_are_kept(tmp_path):
    """On the real sample: the quasi-identifiers the DICOM path removes are blanked in the CSV too."""
    export = write_sample_release(tmp_path / "export")
    key = tmp_path / "key"
    key.write_bytes(b"q" * 32)
    common = ["--key", str(key), "--method", "none", "--no-text-detection", "--quiet"]
    assert main(["anonymize", str(export), str(tmp_path / "out"), *common]) == 0
    assert main(["anonymize", str(export), str(tmp_path / "kept"), *common, "--keep-patient-characteristics"]) == 0
    raw = pd.read_csv(export / METADATA, dtype=str, keep_default_na=False)
    blanked, kept = read_release_csv(tmp_path / "out"), read_release_csv(tmp_path / "kept")
    assert len(blanked) == len(raw) == 40
    for column in QUASI_IDENTIFIERS:
        assert (raw[column] != "").all(), column
        assert (blanked[column] == "").all(), f"{column} kept without --keep-patient-characteristics"
    # what a release is for stays: the labels, views and follow-up numbers, under the new names
    pseudonymize = Pseudonymizer(key.read_bytes()).pseudonym
    new_name = {n: f"{pseudonymize(CXR14_PATIENT_ID, n[:8])}{n[8:]}" for n in raw["Image Index"]}
    by_new = raw.assign(**{"Image Index": raw["Image Index"].map(new_name)}).set_index("Image Index")
    for table in (blanked, kept):
        table = table.set_index("Image Index")
        written = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
        assert sorted(table.index) == sorted(by_new.index) == written
        for column in ("Finding Labels", "Follow-up #", "View Position"):
            assert (table[column] == by_new.loc[table.index, column]).all(), column
        assert (table["Patient ID"].astype(int) == [int(n[:8]) for n in table.index]).all()
    # with the option they are kept, row by row
    kept = read_metadata(tmp_path / "kept" / METADATA).set_index("image")
    source = read_metadata(export / METADATA).assign(image=lambda m: m["image"].map(new_name)).set_index("image")
    for column in ("age", "sex", "width", "height", "spacing_x", "spacing_y"):
        assert (kept[column] == source.loc[kept.index, column]).all(), column


def test_a_png_without_a_release_name_goes_to_images_under_a_keyed_name(tmp_path):
    export = write_sample_release(tmp_path / "export", count=6)
    shutil.copy(SAMPLE / "images" / "00000013_000.png", export / "images" / "DOE_JOHN_chest.png")
    key = tmp_path / "key"
    key.write_bytes(b"q" * 32)
    out = tmp_path / "out"
    assert main(["anonymize", str(export), str(out), "--key", str(key), "--no-text-detection", "--quiet"]) == 0
    top = sorted(p.name for p in out.iterdir())
    assert top == sorted([METADATA, "images", *SPLIT_FILES.values()]), "a PNG landed outside images/"
    written = output_of(out, "images/DOE_JOHN_chest.png", key.read_bytes())
    assert written.parent == out / "images" and "DOE" not in written.name and written.suffix == ".png"
    assert len(list((out / "images").iterdir())) == 7


def test_two_inputs_with_one_release_name_are_refused_not_overwritten(tmp_path, capsys):
    """images_001/images/ and images_002/images/ both go to images/: one name twice must not lose an image."""
    export = tmp_path / "export"
    for folder, source in (("images_001", "00000001_000.png"), ("images_002", "00000002_000.png")):
        (export / folder / "images").mkdir(parents=True)
        shutil.copy(SAMPLE / "images" / source, export / folder / "images" / "00000001_000.png")
    shutil.copy(SAMPLE / "images" / "00000003_000.png", export / "images_002" / "images" / "00000003_000.png")
    key = tmp_path / "key"
    key.write_bytes(b"q" * 32)
    out = tmp_path / "out"
    args = ["anonymize", str(export), str(out), "--key", str(key), "--no-text-detection", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("failed: ") == 1 and "already the output of another input" in err
    assert len(list((out / "images").iterdir())) == 2
    assert main(args) == 1  # a rerun refuses it again, and keeps the first
    assert "already the output of another input" in capsys.readouterr().err


def test_the_command_names_the_model_it_took_and_the_others_it_could_have(setup, tmp_path, capsys):
    """A model picked by itself may have been trained on other data: the command line says which it took."""
    root = setup["root"]
    artifacts = tmp_path / "artifacts"
    shutil.copytree(root / "artifacts", artifacts)
    args = ["anonymize", str(setup["png"] / "images"), None, "--key", str(root / "key"), "--method", "prichexy",
            "--artifacts", str(artifacts), "--no-text-detection", "--quiet"]
    args[2] = str(tmp_path / "one")
    assert main(args) == 0
    assert "model: " + str(artifacts / "cpu" / "flow_field-x.safetensors") + " (the newest found)" in capsys.readouterr().out
    newer = FlowFieldAnonymizer(mu=0.01, image_size=32, features=8, poolings=2)
    newer.save(artifacts / "cpu" / "other-data" / "flow_field-y")
    os.utime(artifacts / "cpu" / "other-data" / "flow_field-y.safetensors", (2e9, 2e9))  # the newest
    args[2] = str(tmp_path / "two")
    assert main(args) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"model: {artifacts / 'cpu' / 'other-data' / 'flow_field-y.safetensors'} (the newest found; 1 other(s)" in out
    assert "pass --model to choose" in out
