import json

import numpy as np
import pytest
import torch

from cxrlib.data import cache as cache_module
from cxrlib.data.cache import COMPLETE_FILE, ImageCache, prepare_cache
from cxrlib.data.chestxray14 import DataError, load_image, read_metadata
from cxrlib.data.datasets import ImageDataset, PairDataset
from cxrlib.data.pairs import make_pairs


def test_prepare_matches_direct_decoding(tiny_dataset):
    cache = prepare_cache(tiny_dataset, 16, workers=2, progress=False)
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    assert list(cache.names) == meta["image"].tolist()
    assert cache.array.shape == (18, 16, 16)
    for name in meta["image"][:4]:
        np.testing.assert_array_equal(cache.get([name])[0], load_image(tiny_dataset / "images" / name, 16))
    assert prepare_cache(tiny_dataset, 16, workers=1).directory == cache.directory  # reused


def test_interrupted_prepare_resumes_and_never_looks_complete(tiny_dataset, monkeypatch):
    calls = {"n": 0}
    real_decode = cache_module._decode_rows

    def failing(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_decode(task)

    monkeypatch.setattr(cache_module, "_CHUNK", 4)
    monkeypatch.setattr(cache_module, "_decode_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(tiny_dataset, 16, workers=1)
    folder = cache_module.default_cache_dir(tiny_dataset, 16)
    assert not (folder / COMPLETE_FILE).exists()
    with pytest.raises(DataError, match="cache is incomplete"):
        ImageCache.open(folder)
    done_before = int(np.fromfile(folder / "done.u8", dtype=np.uint8).sum())
    assert done_before == 4

    monkeypatch.setattr(cache_module, "_decode_rows", real_decode)
    cache = prepare_cache(tiny_dataset, 16, workers=1)
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    for name in meta["image"]:
        np.testing.assert_array_equal(cache.get([name])[0], load_image(tiny_dataset / "images" / name, 16))


def test_index_not_matching_array(tiny_dataset):
    cache = prepare_cache(tiny_dataset, 16, workers=1)
    index = json.loads((cache.directory / "index.json").read_text())
    index["names"] = index["names"][:-1]
    (cache.directory / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="cache index does not match its array"):
        ImageCache.open(cache.directory)


def test_corrupt_png_fails_prepare_naming_the_file(tiny_dataset):
    victim = sorted((tiny_dataset / "images").iterdir())[5]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=victim.name):
        prepare_cache(tiny_dataset, 16, workers=1)
    assert not (cache_module.default_cache_dir(tiny_dataset, 16) / COMPLETE_FILE).exists()


def test_datasets_read_the_cache(tiny_dataset):
    cache = prepare_cache(tiny_dataset, 16, workers=1)
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    images = ImageDataset(cache, meta)
    item = images[2]
    assert set(item) == set(images.keys) == {"image", "labels", "patient"}
    x, y = item["image"], item["labels"]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(y, torch.from_numpy(meta.iloc[2, -14:].to_numpy(dtype=np.float32)))
    assert images[5]["patient"].item() == meta["patient_id"][5]
    pairs = make_pairs(meta, 8, seed=0)
    pair = PairDataset(cache, pairs)[0]
    assert pair["same"].item() == 1.0
    assert torch.equal(pair["image1"], images[int(np.flatnonzero(meta["image"] == pairs["img1"][0])[0])]["image"])
    with pytest.raises(DataError, match="empty split"):
        ImageDataset(cache, meta.iloc[:0])
