"""The DICOM export with synthetic PHI: on any ChestX-ray14 folder (the real sample's own pixels), and on
the phantom, whose text-box truth comes along."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrlib.cli import main
from cxrlib.data.chestxray14 import DataError, ImageLocator, find_metadata_file, load_image, read_metadata
from cxrlib.data.phantom import PHANTOM_TRUTH, generate_phantom
from cxrlib.publish.phantom_dicom import write_phantom_dicom, write_synthetic_phi_dicom

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "chestxray14-sample"


@pytest.fixture(scope="module")
def sample_images() -> list[str]:
    """Two patients of the real sample: AP and PA views (CR and DX files), RGB and RGBA PNGs."""
    if not (SAMPLE / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip(f"{SAMPLE} is missing")
    meta = read_metadata(find_metadata_file(SAMPLE))
    chosen = meta[meta["patient_id"].isin([4, 5])]
    assert set(chosen["view"]) == {"AP", "PA"}
    assert {Image.open(ImageLocator(SAMPLE)(name)).mode for name in chosen["image"]} == {"RGB", "RGBA"}
    return chosen["image"].tolist()


def test_real_pixels_get_the_synthetic_phi_and_keep_their_values(tmp_path, sample_images):
    out = write_synthetic_phi_dicom(SAMPLE, tmp_path / "raw", images=sample_images, seed=4, progress=False)
    files = sorted((out / "images").glob("*.dcm"))
    assert [f.stem for f in files] == sorted(Path(name).stem for name in sample_images)
    assert not (out / PHANTOM_TRUTH).exists(), "a real folder has no phantom truth to copy"
    truth = json.loads((out / "phi_truth.json").read_text())
    meta = read_metadata(find_metadata_file(SAMPLE)).set_index("image")
    locate = ImageLocator(SAMPLE)
    for path in files:
        ds = pydicom.dcmread(path)
        planted = truth["files"][f"images/{path.name}"]
        source = planted["source_image"]
        assert str(ds.PatientName) in planted["names"] and ds.PatientID == planted["patient_id"]
        assert ds.ViewPosition == meta.at[source, "view"] and ds.Modality == ("CR" if ds.ViewPosition == "AP" else "DX")
        # the folder's own pixels in the export's bit depth and photometry (DX 12 bits, CR 10 bits inverted)
        stored = ds.pixel_array.astype(int)
        pixels = 255 - stored // 4 if ds.Modality == "CR" else (stored - 8) // 16
        assert np.array_equal(pixels, load_image(locate(source))), path.name
        # the metadata's spacing describes the 1024 px-class original; the export's the 64 px copy
        expected = [meta.at[source, "spacing_y"] * meta.at[source, "height"] / ds.Rows,
                    meta.at[source, "spacing_x"] * meta.at[source, "width"] / ds.Columns]
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx(expected)
    # one synthetic person per real patient, the same for all of a patient's images
    assert len(truth["patients"]) == 2
    assert {truth["patients"][p["patient_id"]]["source_patient"] for p in truth["files"].values()} == \
        set(int(meta.at[p["source_image"], "patient_id"]) for p in truth["files"].values())


def test_real_pixel_export_anonymizes_without_a_trace_of_its_phi(tmp_path, sample_images):
    raw = write_synthetic_phi_dicom(SAMPLE, tmp_path / "raw", images=sample_images, progress=False)
    (tmp_path / "key").write_bytes(b"r" * 32)
    assert main(["anonymize", str(raw / "images"), str(tmp_path / "out"), "--key", str(tmp_path / "key"),
                 "--quiet"]) == 0
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm"))
    assert written
    for planted in json.loads((raw / "phi_truth.json").read_text())["files"].values():
        for value in planted["strings"] + planted["names"] + planted["uids"]:
            assert value.encode() not in written, value


def test_phantom_writer_copies_the_text_box_truth_and_refuses_other_folders(tmp_path, tiny_dataset):
    phantom = generate_phantom(tmp_path / "phantom", n_patients=2, size=32, seed=1, max_followups=2,
                               progress=False)
    out = write_phantom_dicom(phantom, tmp_path / "dicom", progress=False)
    assert (out / PHANTOM_TRUTH).read_bytes() == (phantom / PHANTOM_TRUTH).read_bytes()
    # the same files as the writer for any folder: the phantom's truth only adds its text boxes
    generic = write_synthetic_phi_dicom(phantom, tmp_path / "generic", progress=False)
    assert sorted(p.read_bytes() for p in generic.rglob("*") if p.is_file()) == \
        sorted(p.read_bytes() for p in out.rglob("*") if p.is_file())
    with pytest.raises(DataError, match="no phantom_truth.csv.*write_synthetic_phi_dicom"):
        write_phantom_dicom(tiny_dataset, tmp_path / "refused", progress=False)
    with pytest.raises(DataError, match="not in its metadata"):
        write_synthetic_phi_dicom(tiny_dataset, tmp_path / "unknown", images=["99999999_000.png"], progress=False)
