import numpy as np
import pandas as pd
import pytest

from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import DataError, make_splits, read_metadata
from cxrlib.data.pairs import (OFFICIAL_PAIR_FILES, make_pairs, max_positive_pairs, official_pair_file,
                               read_pair_file, write_pair_file)


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


@pytest.fixture(scope="module")
def official_splits(real_meta, official_lists_dir):
    """The paper profile's split of the real metadata: official lists, official validation rule."""
    return make_splits(real_meta, official_lists_dir, seed=0,
                       official_train_count=load_profile("paper").data.official_train_count)


def _patient_of(splits) -> dict[str, int]:
    return {name: patient for _, frame in splits.items()
            for name, patient in zip(frame["image"], frame["patient_id"])}


def test_prichexy_net_pair_files_on_the_official_split(official_splits):
    patient_of = _patient_of(official_splits)
    patients = {}
    for split, count in (("train", 10_000), ("val", 2_000), ("test", 5_000)):
        pairs = read_pair_file(official_pair_file(split), known_images=official_splits[split]["image"])
        assert official_pair_file(split).name == OFFICIAL_PAIR_FILES[split]
        assert len(pairs) == count and pairs["label"].sum() == count // 2
        same = pairs["img1"].map(patient_of) == pairs["img2"].map(patient_of)
        assert (same == (pairs["label"] == 1)).all()
        patients[split] = set(pairs["img1"].map(patient_of)) | set(pairs["img2"].map(patient_of))
    assert (len(patients["train"]), len(patients["val"]), len(patients["test"])) == (9_053, 1_742, 1_307)
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    test = read_pair_file(official_pair_file("test"))
    assert (test["label"].iloc[:2_500] == 1).all() and (test["label"].iloc[2_500:] == 0).all()


def test_paper_pair_counts_on_the_official_split(official_splits):
    verification = load_profile("paper").verification
    patient_of = _patient_of(official_splits)
    for split, count in (("train", verification.train_pairs), ("val", verification.val_pairs),
                         ("test", verification.test_pairs)):
        frame = official_splits[split]
        pairs = make_pairs(frame, count, seed=5)
        assert len(pairs) == count and pairs["label"].sum() == count // 2
        same = pairs["img1"].map(patient_of) == pairs["img2"].map(patient_of)
        assert (same == (pairs["label"] == 1)).all()
        key = np.minimum(pairs["img1"], pairs["img2"]) + np.maximum(pairs["img1"], pairs["img2"])
        assert not key.duplicated().any() and (pairs["img1"] != pairs["img2"]).all()
        assert set(pairs["img1"]) | set(pairs["img2"]) <= set(frame["image"])
    # the paper's 792,294 training pairs are exactly every same-patient pair of the official split
    assert max_positive_pairs(official_splits.train) == verification.train_pairs // 2
    pd.testing.assert_frame_equal(make_pairs(official_splits.val, 50_000, seed=5),
                                  make_pairs(official_splits.val, 50_000, seed=5))


def test_positive_pairs_spread_evenly_over_patients(real_splits):
    pairs = make_pairs(real_splits.test, 20_000, seed=0)
    patient = real_splits.test.set_index("image")["patient_id"]
    per_patient = pairs[pairs["label"] == 1]["img1"].map(patient).value_counts()
    counts = real_splits.test.groupby("patient_id").size()
    capacity = (counts * (counts - 1) // 2)[per_patient.index]
    # every patient gets the same share unless its own pairs run out first
    level = per_patient.max()
    assert ((per_patient >= level - 1) | (per_patient == capacity)).all()


def test_small_split_every_pair_drawn_exactly(tiny_dataset):
    two_patients = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv").head(6)  # 2 x 3 images
    pairs = make_pairs(two_patients, 2 * 6 + 1, seed=0)  # all 6 positives, 7 of the 9 negatives
    patient = two_patients.set_index("image")["patient_id"]
    assert (pairs["label"] == 1).sum() == 6 and (pairs["label"] == 0).sum() == 7
    same = pairs["img1"].map(patient) == pairs["img2"].map(patient)
    assert (same == (pairs["label"] == 1)).all()
    assert not pairs[["img1", "img2"]].apply(frozenset, axis=1).duplicated().any()
    with pytest.raises(ValueError, match="allow only 6 distinct ones; ask for at most 12 pairs"):
        make_pairs(two_patients, 14, seed=0)


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
