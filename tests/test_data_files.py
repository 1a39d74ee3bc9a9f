"""Real-world files the data layer once mishandled (issue 31, item 9): 16-bit PNGs using 12 bits,
PNGs too large to decode, and split lists that share a patient. Each is read through the one PNG
reader (:func:`read_gray`) by both ``cxrlib prepare`` and ``cxrlib anonymize``."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cxrlib.cli import main
from cxrlib.data import cache as cache_module
from cxrlib.data.cache import COMPLETE_FILE, prepare_cache
from cxrlib.data.chestxray14 import (
    DataError, find_metadata_file, load_image, make_splits, read_gray, read_metadata, read_official_lists,
    significant_bits,
)
from cxrlib.publish.batch import iter_manifest
from cxrlib.publish.deidentify import Pseudonymizer


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_declaring(path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` 8-bit gray pixels but holds almost no data:
    a huge image's header at no cost (Pillow sees its size when it opens it)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + _png_chunk(b"IEND", b""))


def save_png16(path, values: np.ndarray, sbit: int | None = None) -> None:
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    assert Image.open(path).mode.startswith("I;16")


# -- 16-bit PNGs: the significant bits decide the scaling to 8 bits --------------------------------

def test_twelve_bit_values_in_a_sixteen_bit_png_use_the_full_uint8_range(tmp_path):
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 0..4095, as 12-bit detectors export
    save_png16(tmp_path / "x.png", values)
    assert read_gray(tmp_path / "x.png").bits == 12
    image = load_image(tmp_path / "x.png")
    assert image.min() == 0 and image.max() == 255  # was 16 when scaled as 16 bits
    np.testing.assert_array_equal(image, np.round(values / 4095 * 255).astype(np.uint8))


def test_a_sixteen_bit_png_using_all_its_bits_maps_as_before(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    save_png16(tmp_path / "x.png", values)
    assert read_gray(tmp_path / "x.png").bits == 16
    # the former mapping: value / 65535 * 255, rounded
    expected = np.clip(values / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_image(tmp_path / "x.png"), expected)


def test_the_sbit_chunk_decides_when_it_holds_the_values(tmp_path):
    dark = np.linspace(0, 1000, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    save_png16(tmp_path / "dark.png", dark, sbit=12)  # a dark 12-bit image stays dark ...
    assert read_gray(tmp_path / "dark.png").bits == 12
    assert load_image(tmp_path / "dark.png").max() == round(1000 / 4095 * 255)
    save_png16(tmp_path / "plain.png", dark)  # ... where without sBIT it would span 10 bits
    assert read_gray(tmp_path / "plain.png").bits == 10
    scaled = (np.arange(4096, dtype=np.uint16) << 4).reshape(64, 64)  # 12 bits scaled up, as the PNG standard has it
    save_png16(tmp_path / "scaled.png", scaled, sbit=12)
    assert read_gray(tmp_path / "scaled.png").bits == 16


@pytest.mark.parametrize("peak, declared, bits", [
    (0, None, 8), (255, None, 8), (256, None, 10), (1023, None, 10), (4095, None, 12), (4096, None, 14),
    (16383, None, 14), (16384, None, 16), (65535, None, 16), (1000, 12, 12), (4095, 12, 12),
    (4096, 12, 14), (65520, 12, 16), (100, 0, 8),
])
def test_significant_bits(peak, declared, bits):
    assert significant_bits(np.array([0, peak], dtype=np.uint16), declared) == bits


def test_prepare_caches_a_twelve_bit_png_at_full_contrast(tiny_dataset):
    victim = sorted((tiny_dataset / "images").iterdir())[0]
    save_png16(victim, (np.arange(40 * 40) * 4095 // (40 * 40 - 1)).reshape(40, 40))  # 0..4095
    cache = prepare_cache(tiny_dataset, 16, workers=1, progress=False)
    row = cache.get([victim.name])[0]
    assert row.min() < 10 and row.max() > 245
    np.testing.assert_array_equal(row, load_image(victim, 16))


def test_a_detector_sized_png_is_read(tmp_path):
    values = np.zeros((4300, 4300), dtype=np.uint16)  # 18.5 million pixels, a large DX detector
    values[:, 2150:] = 4095
    save_png16(tmp_path / "dx.png", values)
    image = load_image(tmp_path / "dx.png", 64)
    assert image.shape == (64, 64) and image[:, 0].max() == 0 and image[:, -1].min() == 255


# -- PNGs too large to decode: a DataError naming the file and its size -----------------------------

def test_a_14000_px_png_is_refused_naming_the_file_and_its_pixel_count(tmp_path):
    path = tmp_path / "00000001_000.png"
    write_png_declaring(path, 14_000, 14_000)
    with pytest.raises(DataError, match=r"00000001_000.png: image too large to decode safely: 14000 x 14000 = "
                                        r"196,000,000 pixels, more than the limit of 89,478,485"):
        load_image(path)


def test_the_limit_follows_pillows_setting(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 - 1)
    with pytest.raises(DataError, match=r"x.png: image too large.*90,000 pixels, more than the limit of 89,999"):
        read_gray(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300)
    assert read_gray(path).values.shape == (300, 300)


def test_prepare_refuses_a_huge_png_naming_it_and_leaves_no_complete_cache(tiny_dataset):
    victim = sorted((tiny_dataset / "images").iterdir())[3]
    write_png_declaring(victim, 14_000, 14_000)
    with pytest.raises(DataError, match=rf"{victim.name}: image too large to decode safely"):
        prepare_cache(tiny_dataset, 16, workers=1, progress=False)
    assert not (cache_module.default_cache_dir(tiny_dataset, 16) / COMPLETE_FILE).exists()


def test_anonymize_refuses_a_huge_png_naming_its_size_and_writes_no_output(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_png_declaring(folder / "huge.png", 14_000, 14_000)
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--key", str(key), "--quiet"]) == 1
    (entry,) = list(iter_manifest(tmp_path / "out"))
    assert entry["file"] == Pseudonymizer(key.read_bytes()).file_name("huge.png")
    assert entry["status"] == "failed"
    assert "too large to decode safely: 14000 x 14000 = 196,000,000 pixels" in entry["error"]
    assert not list((tmp_path / "out").rglob("*.png"))


# -- split lists sharing a patient: refused when the folder is read --------------------------------

def _write_lists_sharing_patient_3(folder) -> None:
    meta = read_metadata(find_metadata_file(folder))
    train_val = meta[meta["patient_id"] <= 4]["image"]
    test = meta[(meta["patient_id"] >= 5) | (meta["image"] == "00000003_002.png")]["image"]
    train_val = train_val[train_val != "00000003_002.png"]
    (folder / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (folder / "test_list.txt").write_text("\n".join(test) + "\n")


def test_lists_sharing_a_patient_are_refused_naming_both_files_and_the_patient(tiny_dataset):
    _write_lists_sharing_patient_3(tiny_dataset)
    meta = read_metadata(find_metadata_file(tiny_dataset))
    problem = (r"test_list.txt: 1 patient\(s\) also listed in .*train_val_list.txt, e.g. patient id\(s\) 3: "
               "train/val and test must not share patients")
    for read in (lambda: read_official_lists(tiny_dataset, meta), lambda: make_splits(meta, tiny_dataset, seed=0),
                 lambda: prepare_cache(tiny_dataset, 16, workers=1, progress=False)):
        with pytest.raises(DataError, match=problem):
            read()


def test_cxrlib_data_refuses_lists_sharing_a_patient_before_caching(tiny_dataset, capsys):
    _write_lists_sharing_patient_3(tiny_dataset)
    assert main(["data", "--profile", "smoke", "--data-dir", str(tiny_dataset)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrlib data: error:") and "train_val_list.txt" in err and "patient id(s) 3" in err
    assert not (tiny_dataset / ".cxrlib_cache").exists()


def test_disjoint_lists_are_read_and_missing_lists_are_none(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    assert read_official_lists(tiny_dataset, meta) is None
    (tiny_dataset / "train_val_list.txt").write_text("\n".join(meta[meta["patient_id"] < 5]["image"]) + "\n")
    assert read_official_lists(tiny_dataset, meta) is None  # one list alone: the seeded split
    (tiny_dataset / "test_list.txt").write_text("\n".join(meta[meta["patient_id"] >= 5]["image"]) + "\n")
    train_val, test = read_official_lists(tiny_dataset, meta)
    assert (len(train_val), len(test)) == (12, 6)
