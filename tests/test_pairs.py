import pandas as pd
import pytest

from cxrlib.data.chestxray14 import DataError, make_splits, read_metadata
from cxrlib.data.pairs import make_pairs, max_positive_pairs, read_pair_file, write_pair_file


@pytest.fixture(scope="module")
def real_splits(real_meta):
    return make_splits(real_meta, None, seed=0)


def test_real_metadata_pairs_balanced_disjoint_reproducible(real_splits):
    pairs = {name: make_pairs(frame, n, seed=1)
             for (name, frame), n in zip(real_splits.items(), (10_000, 2_000, 5_000))}
    patient_of = {}
    for _, frame in real_splits.items():
        patient_of.update(zip(frame["image"], frame["patient_id"]))
    for name, frame in pairs.items():
        n = {"train": 10_000, "val": 2_000, "test": 5_000}[name]
        assert len(frame) == n and frame["label"].sum() == n // 2
        assert (frame["label"].iloc[: n // 2] == 1).all()  # positives first, as in the official files
        same = frame["img1"].map(patient_of) == frame["img2"].map(patient_of)
        assert (same == (frame["label"] == 1)).all()
        assert (frame["img1"] != frame["img2"]).all()
        assert not frame[["img1", "img2"]].apply(frozenset, axis=1).duplicated().any()
        assert set(frame["img1"]) | set(frame["img2"]) <= set(real_splits[name]["image"])
    split_patients = {name: set(frame["img1"].map(patient_of)) | set(frame["img2"].map(patient_of))
                      for name, frame in pairs.items()}
    assert not (split_patients["train"] & split_patients["test"])
    assert not (split_patients["train"] & split_patients["val"])
    pd.testing.assert_frame_equal(make_pairs(real_splits.test, 5_000, seed=1), pairs["test"])
    assert not make_pairs(real_splits.test, 5_000, seed=2).equals(pairs["test"])


def test_too_many_positive_pairs_is_a_clear_error(tiny_dataset):
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    assert max_positive_pairs(meta) == 6 * 3
    with pytest.raises(ValueError, match="allow only 18 distinct"):
        make_pairs(meta, 40, seed=0)


def test_pair_file_round_trip_official_format(tiny_dataset, tmp_path):
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    pairs = make_pairs(meta, 10, seed=0)
    path = write_pair_file(pairs, tmp_path / "pairs.txt")
    first = path.read_text().splitlines()[0].split("\t")
    assert len(first) == 3 and first[2] == "1.0"
    pd.testing.assert_frame_equal(read_pair_file(path, known_images=meta["image"]), pairs)


def test_pair_file_wrong_column_count(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("00000001_000.png\t00000001_001.png\t1.0\n00000001_000.png 00000002_000.png 0.0\n")
    with pytest.raises(DataError, match="pairs.txt: line 2: expected 3 tab-separated columns"):
        read_pair_file(path)


def test_pair_file_naming_missing_images(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("00000001_000.png\t00000009_001.png\t1.0\n")
    with pytest.raises(DataError, match="not in the data"):
        read_pair_file(path, known_images=["00000001_000.png"])
