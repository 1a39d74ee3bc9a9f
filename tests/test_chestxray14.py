import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.data.chestxray14 import (
    LABELS, DataError, ImageLocator, find_metadata_file, load_image, make_splits, read_metadata,
    read_split_list, write_metadata,
)

# Per-label image counts of the real Data_Entry_2017_v2020.csv (NIH, 112,120 images).
REAL_LABEL_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667,
    "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}


def test_real_metadata_counts(real_meta):
    assert len(real_meta) == 112_120
    assert real_meta["patient_id"].nunique() == 30_805
    assert {k: int(real_meta[k].sum()) for k in LABELS} == REAL_LABEL_COUNTS
    assert int((real_meta[list(LABELS)].sum(axis=1) == 0).sum()) == 60_361  # "No Finding"
    assert list(real_meta.columns[:6]) == ["image", "finding_labels", "follow_up", "patient_id", "age", "sex"]
    assert set(real_meta["view"]) == {"PA", "AP"} and set(real_meta["sex"]) == {"M", "F"}
    assert real_meta[list(LABELS)].to_numpy().dtype == np.uint8


def test_real_metadata_splits_are_patient_disjoint_and_seeded(real_meta):
    splits = make_splits(real_meta, None, seed=3)
    patients = [set(frame["patient_id"]) for _, frame in splits.items()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sum(len(frame) for _, frame in splits.items()) == len(real_meta)
    assert splits.source == "seeded"
    again = make_splits(real_meta, None, seed=3)
    assert splits.test["image"].tolist() == again.test["image"].tolist()
    assert make_splits(real_meta, None, seed=4).test["image"].tolist() != splits.test["image"].tolist()
    test_share = len(splits.test) / len(real_meta)
    assert 0.18 < test_share < 0.28  # the official test list holds 22.8 % of the images


def test_official_split_lists_used_when_present(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    test_images = meta[meta["patient_id"] >= 5]["image"]
    (tiny_dataset / "test_list.txt").write_text("\n".join(test_images) + "\n")
    (tiny_dataset / "train_val_list.txt").write_text("\n".join(meta[meta["patient_id"] < 5]["image"]) + "\n")
    splits = make_splits(meta, tiny_dataset, seed=0)
    assert splits.source == "official"
    assert set(splits.test["image"]) == set(test_images)
    assert set(splits.train["patient_id"]).isdisjoint(splits.val["patient_id"])


def test_split_list_naming_unknown_image(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    (tiny_dataset / "test_list.txt").write_text("00099999_000.png\n")
    with pytest.raises(DataError, match=r"test_list.txt.*not in the metadata"):
        read_split_list(tiny_dataset / "test_list.txt", meta)


def test_gzip_and_plain_metadata_agree(tiny_dataset, tmp_path):
    plain = tiny_dataset / "Data_Entry_2017_v2020.csv"
    zipped = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    pd.testing.assert_frame_equal(read_metadata(plain), read_metadata(zipped))


def test_write_metadata_round_trip_keeps_real_header(tiny_dataset, tmp_path):
    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    write_metadata(meta, tmp_path / "again.csv")
    header = (tmp_path / "again.csv").read_text().splitlines()[0]
    assert header == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                      "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    pd.testing.assert_frame_equal(read_metadata(tmp_path / "again.csv"), meta)


@pytest.mark.parametrize("layout", ["flat", "release"])
def test_locator_finds_both_layouts(tmp_path, layout):
    from tests.conftest import write_tiny_dataset

    meta = write_tiny_dataset(tmp_path / "d", layout=layout)
    locate = ImageLocator(tmp_path / "d")
    locate.check(meta["image"].tolist())
    assert locate(meta["image"][0]).is_file()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_load_image_any_mode_gives_gray8(tmp_path, mode):
    gradient = np.tile(np.linspace(0, 1, 32), (32, 1))
    path = tmp_path / "x.png"
    if mode == "I;16":
        Image.fromarray((gradient * 65535).astype(np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I;16")
    else:
        Image.fromarray((gradient * 255).astype(np.uint8), mode="L").convert(mode).save(path)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (32, 32)
    # the ramp survives every conversion (a blindly taken alpha channel would be flat 255)
    assert image[0, 0] < 10 and image[0, -1] > 245
    assert load_image(path, 16).shape == (16, 16)


# -- bad input: each names the file and the problem ------------------------------------------------

def test_missing_csv(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no metadata file"):
        find_metadata_file(tmp_path)


def test_empty_data_folder(tmp_path):
    with pytest.raises(DataError, match="data folder is empty"):
        find_metadata_file(tmp_path)


def test_missing_or_renamed_column(tiny_dataset):
    csv = tiny_dataset / "Data_Entry_2017_v2020.csv"
    csv.write_text(csv.read_text().replace("Patient Gender", "Gender", 1))
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv: missing column\(s\) \['Patient Gender'\]"):
        read_metadata(csv)


def test_unknown_label(tiny_dataset):
    csv = tiny_dataset / "Data_Entry_2017_v2020.csv"
    lines = csv.read_text().splitlines()
    fields = lines[1].split(",")
    fields[1] = "Infiltrate"
    lines[1] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="unknown label 'Infiltrate'"):
        read_metadata(csv)


def test_non_numeric_age(tiny_dataset):
    csv = tiny_dataset / "Data_Entry_2017_v2020.csv"
    lines = csv.read_text().splitlines()
    fields = lines[2].split(",")
    fields[4] = "58Y"
    lines[2] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="column 'age' must be numeric"):
        read_metadata(csv)


def test_image_missing_on_disk(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    (tiny_dataset / "images" / meta["image"][3]).unlink()
    with pytest.raises(DataError, match="missing on disk"):
        ImageLocator(tiny_dataset).check(meta["image"].tolist())


def test_truncated_png(tiny_dataset):
    path = next((tiny_dataset / "images").iterdir())
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"{path.name}: not a readable image"):
        load_image(path)


def test_non_image_with_png_name(tmp_path):
    path = tmp_path / "00000001_000.png"
    path.write_text("this is not an image")
    with pytest.raises(DataError, match="not a readable image"):
        load_image(path)


def test_official_split_lists_of_the_release(real_meta, official_lists_dir):
    train_val = read_split_list(official_lists_dir / "train_val_list.txt", real_meta)
    test = read_split_list(official_lists_dir / "test_list.txt", real_meta)
    assert (len(train_val), len(test)) == (86_524, 25_596)
    assert set(train_val) | set(test) == set(real_meta["image"])
    patient = real_meta.set_index("image")["patient_id"]
    assert set(patient[train_val]).isdisjoint(patient[test])


def test_official_validation_rule_on_the_real_lists(real_meta, official_lists_dir):
    from cxrlib.config import load_profile

    rule = load_profile("paper").data.official_train_count
    splits = make_splits(real_meta, official_lists_dir, seed=0, official_train_count=rule)
    assert splits.source == "official"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (75_708, 10_816, 25_596)
    listed = (official_lists_dir / "train_val_list.txt").read_text().split()
    assert set(splits.train["image"]) == set(listed[:75_708])
    patients = [set(frame["patient_id"]) for _, frame in splits.items()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # the seeded rule (profiles without official_train_count) gives another validation split
    seeded = make_splits(real_meta, official_lists_dir, seed=0)
    assert set(seeded.val["image"]) != set(splits.val["image"]) and len(seeded.test) == 25_596


def test_official_validation_rule_refuses_a_cut_through_a_patient(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    (tiny_dataset / "train_val_list.txt").write_text("\n".join(meta[meta["patient_id"] < 5]["image"]) + "\n")
    (tiny_dataset / "test_list.txt").write_text("\n".join(meta[meta["patient_id"] >= 5]["image"]) + "\n")
    assert len(make_splits(meta, tiny_dataset, seed=0, official_train_count=6).train) == 6
    with pytest.raises(DataError, match="train_val_list.txt: entry 7 does not end at a patient boundary"):
        make_splits(meta, tiny_dataset, seed=0, official_train_count=7)


def test_split_list_may_be_gzipped(tiny_dataset):
    meta = read_metadata(find_metadata_file(tiny_dataset))
    names = meta["image"].tolist()[:5]
    (tiny_dataset / "list.txt.gz").write_bytes(gzip.compress(("\n".join(names) + "\n").encode()))
    assert read_split_list(tiny_dataset / "list.txt.gz", meta) == names


def test_release_layout_of_a_flat_folder(tiny_dataset):
    from cxrlib.data.chestxray14 import to_release_layout

    meta = read_metadata(find_metadata_file(tiny_dataset))
    to_release_layout(tiny_dataset)
    assert not (tiny_dataset / "images").exists()
    folders = sorted(p.parent.name for p in tiny_dataset.glob("images_*/images"))
    assert folders == [f"images_{i:03d}" for i in range(1, 13)]
    locator = ImageLocator(tiny_dataset)
    locator.check(meta["image"].tolist())
    assert locator(meta["image"].iloc[0]).parent.parent.name == "images_001"
    assert locator(meta["image"].iloc[-1]).parent.parent.name == "images_012"
