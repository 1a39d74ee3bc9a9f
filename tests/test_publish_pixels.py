"""The pixel step: trained anonymizers loaded from safetensors + sidecar, written back at the input's format."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from cxrlib.anonymize.flow_field import FlowFieldAnonymizer
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer
from cxrlib.cli import main
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.publish.pipeline import find_trained, output_of, pixel_method


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

    from cxrlib.publish.deidentify import Pseudonymizer

    number = Pseudonymizer((root / "key").read_bytes()).patient_number
    for source in sorted((setup["png"] / "images").glob("*.png")):
        renamed = f"{number(int(source.name[:8])):08d}{source.name[8:]}"  # the id in the name is pseudonymized
        a, b = np.asarray(Image.open(source)), np.asarray(Image.open(tmp_path / "out" / renamed))
        assert a.shape == b.shape and a.dtype == b.dtype and not np.array_equal(a, b)


def test_newest_trained_anonymizer_is_found_and_a_wrong_kind_refused(setup):
    root = setup["root"]
    assert find_trained(root / "artifacts", "flow_field").name == "flow_field-x.safetensors"
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
    from cxrlib.data.chestxray14 import find_metadata_file, read_metadata
    from cxrlib.publish.deidentify import Pseudonymizer

    png, root = setup["png"], setup["root"]
    assert main(["anonymize", str(png), str(tmp_path / "out"), "--key", str(root / "key"), "--quiet"]) == 1
    out = tmp_path / "out"
    before, after = read_metadata(find_metadata_file(png)), read_metadata(find_metadata_file(out))
    pseudonym = Pseudonymizer((root / "key").read_bytes()).patient_number
    assert sorted(after["patient_id"]) == sorted(pseudonym(int(p)) for p in before["patient_id"])
    assert not set(after["patient_id"]) & set(before["patient_id"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(after["image"])
    listed = (out / "test_list.txt").read_text().split() + (out / "train_val_list.txt").read_text().split()
    assert sorted(listed) == sorted(after["image"])
    # the ground truth is no part of a release: refused, not copied
    assert not (out / "phantom_truth.csv").exists()
