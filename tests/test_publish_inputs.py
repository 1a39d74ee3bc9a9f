"""`cxrlib anonymize` on files nobody here wrote (pydicom's test files) and on bad input."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files

from cxrlib.cli import main
from cxrlib.data.chestxray14 import DataError
from cxrlib.publish.batch import iter_manifest
from cxrlib.publish.deidentify import TABLE_E1_1, REPLACE, Pseudonymizer, iter_elements
from cxrlib.publish.dicom import dicom_pixels, read_dicom, read_png
from cxrlib.publish.pipeline import output_of


@pytest.fixture()
def key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(bytes(range(32)))
    return path


def _entries(out, folder, key) -> dict[str, dict]:
    """Input name -> manifest entry (the manifest names inputs by their keyed hash)."""
    names = {Pseudonymizer(key.read_bytes()).file_name(p.name): p.name for p in folder.iterdir()}
    return {names[e["file"]]: e for e in iter_manifest(out)}


def _failures(out, folder, key) -> dict[str, str]:
    return {name: e["error"] for name, e in _entries(out, folder, key).items() if e["status"] == "failed"}


def test_pydicom_test_files_are_anonymized_or_refused_with_a_reason(tmp_path, key, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*.dcm")
    assert len(files) > 50
    for f in files:
        shutil.copy(f, folder)
    code = main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--quiet"])
    assert code == 1  # some are not single grayscale images
    entries = _entries(tmp_path / "out", folder, key)
    assert set(entries) == {p.name for p in folder.iterdir()}
    done = [n for n, e in entries.items() if e["status"] == "done"]
    failed = _failures(tmp_path / "out", folder, key)
    assert len(done) >= 10 and failed
    for name, reason in failed.items():
        assert reason, name
    for name in done:
        source = pydicom.dcmread(folder / name, force=True)
        written = output_of(tmp_path / "out", name, key.read_bytes())
        out = pydicom.dcmread(written)
        assert out.PatientIdentityRemoved == "YES"
        assert out.pixel_array.shape == source.pixel_array.shape
        for elem in iter_elements(out):
            assert not elem.tag.is_private, f"private {elem} in {name}"
            assert elem.keyword not in TABLE_E1_1 or elem.keyword in REPLACE, f"{elem.keyword} left in {name}"
        original_name = str(source.get("PatientName", ""))
        if len(original_name) > 3:
            assert original_name.encode() not in written.read_bytes()
    reasons = " ".join(failed.values())
    assert "multi-frame" in failed["rtdose.dcm"]
    assert "colour image" in failed["examples_rgb_color.dcm"]
    assert "without pixel data" in failed["rtplan.dcm"]
    assert "no installed decoder" in failed["JPEGLSNearLossless_08.dcm"]
    assert "JPEG-LS" in failed["JPEGLSNearLossless_08.dcm"]
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in failed["JPEGLSNearLossless_08.dcm"]
    assert "corrupt pixel data" in failed["MR_truncated.dcm"]
    assert "Traceback" not in reasons
    assert "failed: JPEGLSNearLossless_08.dcm" in capsys.readouterr().err


def test_a_text_file_named_dcm_is_reported_and_the_batch_goes_on(tmp_path, key):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.dcm").write_text("not an image\n")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--quiet"]) == 1
    assert "not a DICOM file" in _failures(tmp_path / "out", folder, key)["notes.dcm"]
    assert output_of(tmp_path / "out", "ct.dcm", key.read_bytes()).is_file()
    assert len([p for p in (tmp_path / "out").rglob("*.dcm")]) == 1


def test_sixteen_bit_png_using_twelve_bits_keeps_its_values(tmp_path, key):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    values = rng.integers(200, 4000, (48, 48)).astype(np.uint16)
    Image.fromarray(values).save(folder / "x.png")
    display, codec = read_png(folder / "x.png")
    assert display.min() == 0.0 and display.max() == 1.0  # contrast of the 12 bits used, not of 16
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--no-text-detection",
                 "--quiet"]) == 0
    written = np.asarray(Image.open(output_of(tmp_path / "out", "x.png", key.read_bytes())))
    assert written.dtype == np.uint16 and np.array_equal(written, values)


def test_image_beyond_the_decompression_bomb_limit_is_refused_clearly(tmp_path, key, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--quiet"]) == 1
    assert "too large to decode safely" in _failures(tmp_path / "out", folder, key)["big.png"]


def test_out_inside_in_and_bad_keys_are_refused_before_anything_is_written(tmp_path, key, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    assert main(["anonymize", str(folder), str(folder / "out"), "--key", str(key)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["ct.dcm"]
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(short)]) == 2
    assert "at least 32" in capsys.readouterr().err
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(tmp_path / "nokey")]) == 2
    assert "key file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_deid_data_files_lose_every_identifying_value(tmp_path, key):
    """The synthetic DICOM sets of the deid-data package (colour, JPEG): header-only de-identification."""
    import deid_data

    source = Path(deid_data.__file__).parent / "data"
    folder = tmp_path / "in"
    for sub in ("dicom-cookies", "humans", "animals"):
        shutil.copytree(source / sub, folder / sub)
    files = sorted(folder.rglob("*.dcm"))
    assert len(files) >= 9
    # colour JPEGs: the pixel steps refuse them, the header step alone copies their pixel data as stored
    assert main(["anonymize", str(folder), str(tmp_path / "refused"), "--key", str(key), "--quiet"]) == 1
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--no-text-detection",
                 "--quiet"]) == 0
    for path in files:
        ds = pydicom.dcmread(path)
        out_path = output_of(tmp_path / "out", path.relative_to(folder).as_posix(), key.read_bytes())
        out, raw = pydicom.dcmread(out_path), out_path.read_bytes()
        planted = {str(e.value) for e in iter_elements(ds)
                   if (e.keyword in TABLE_E1_1 or e.tag.is_private) and e.VR not in ("SQ", "OB", "OW", "UN")
                   and len(str(e.value).strip()) >= 5}
        assert planted, path
        for value in planted:
            assert value.encode() not in raw, f"{value!r} of {path.name} kept"
        assert out.PatientIdentityRemoved == "YES"
        assert out.PixelData == ds.PixelData
        assert out.pixel_array.shape == ds.pixel_array.shape


def _decode_error(name: str) -> str:
    path = get_testdata_file(name)
    with pytest.raises(DataError) as caught:
        dicom_pixels(read_dicom(path), path)
    assert caught.value.path == Path(path)
    return caught.value.problem


def test_undecodable_compressed_dicom_names_the_packages_for_its_transfer_syntax():
    """JPEG-LS and JPEG lossless need libjpeg (or GDCM, or pyjpegls for JPEG-LS), never openjpeg; 12-bit
    JPEG, which the installed Pillow reads not, names Pillow's failure and the packages that would."""
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("libjpeg", "gdcm", "jpeg_ls")):
        pytest.skip("a JPEG-LS decoder is installed here")
    jpeg_ls = _decode_error("JPEGLSNearLossless_08.dcm")
    assert "JPEG-LS" in jpeg_ls and "no installed decoder reads it" in jpeg_ls
    for command in ("`pip install pylibjpeg pylibjpeg-libjpeg`", "`pip install python-gdcm`", "`pip install pyjpegls`"):
        assert command in jpeg_ls
    assert "openjpeg" not in jpeg_ls
    twelve_bit = _decode_error("JPEG-lossy.dcm")  # JPEG Extended, 12 bits
    assert "JPEG Extended" in twelve_bit and "installed decoder (pillow) failed" in twelve_bit
    assert "12-bit" in twelve_bit and "`pip install pylibjpeg pylibjpeg-libjpeg`" in twelve_bit
    assert "openjpeg" not in twelve_bit and "pyjpegls" not in twelve_bit
