import numpy as np
import pandas as pd
import pytest

from cxrlib.data import lung_fields, phantom
from cxrlib.data.lung_fields import (
    LUNG_FIELD_STATISTICS, compare_lung_fields, lung_field_statistics, outside_real_range,
    phantom_lung_field_statistics, real_lung_field_statistics,
)


@pytest.fixture(scope="module")
def real():
    return real_lung_field_statistics()


def test_two_rectangles_give_their_exact_statistics():
    mask = np.zeros((100, 200), bool)
    mask[20:80, 20:80] = True    # image left: the patient's right lung, 60 x 60
    mask[10:90, 120:170] = True  # 50 wide, 80 high
    stats = lung_field_statistics(mask)
    assert stats["area_share"] == pytest.approx((3600 + 4000) / 20000)
    assert stats["right_width"] == pytest.approx(60 / 200) and stats["right_height"] == pytest.approx(0.6)
    assert stats["left_width"] == pytest.approx(50 / 200) and stats["left_height"] == pytest.approx(0.8)
    assert stats["right_left_area_ratio"] == pytest.approx(0.9)
    assert stats["right_centroid_x"] == pytest.approx(50 / 200) and stats["left_centroid_x"] == pytest.approx(145 / 200)
    assert stats["right_centroid_y"] == pytest.approx(0.5) and stats["left_centroid_y"] == pytest.approx(0.5)
    assert list(stats) == list(LUNG_FIELD_STATISTICS)


def test_masks_without_two_lungs_are_not_counted():
    one = np.zeros((50, 50), bool)
    one[10:40, 10:40] = True
    assert lung_field_statistics(one) is None
    speck = one.copy()
    speck[45, 45] = True  # a second part far below MIN_LUNG_SHARE of the mask
    assert lung_field_statistics(speck) is None
    with pytest.raises(ValueError, match="2-D"):
        lung_field_statistics(np.zeros((2, 3, 4)))


def test_the_real_masks_are_all_read_and_plausible(real):
    stats, count = real
    assert count == 517
    assert 400 <= len(stats) <= count and stats.notna().all().all()
    median = stats.median()
    assert 0.2 < median["area_share"] < 0.5
    assert 0.7 < median["right_left_area_ratio"] < 1.3
    assert (stats["right_centroid_x"] < stats["left_centroid_x"]).all()
    assert 0.2 < median["right_centroid_x"] < 0.4 and 0.6 < median["left_centroid_x"] < 0.8
    assert 0.5 < median["right_height"] < 0.9 and 0.25 < median["right_width"] < 0.5


def test_bad_archive_names_the_file(tmp_path):
    bad = tmp_path / "masks.zip"
    bad.write_text("not a zip")
    with pytest.raises(lung_fields.DataError, match="masks.zip"):
        real_lung_field_statistics(bad)


def test_phantom_lung_fields_and_the_comparison(real):
    meta = phantom.sample_metadata(12, 3, 64, seed=3)
    stats = phantom_lung_field_statistics(meta, seed=3, size=64, n_images=20)
    assert 15 <= len(stats) <= 20 and set(stats.index) <= set(meta["image"])
    assert stats["area_share"].between(0.1, 0.6).all()
    comparison = compare_lung_fields(real[0], stats)
    assert list(comparison.index) == list(LUNG_FIELD_STATISTICS)
    assert (comparison["real_low"] < comparison["real_median"]).all()
    assert (comparison["real_median"] < comparison["real_high"]).all()
    assert comparison[["phantom_below", "phantom_above"]].stack().between(0, 1).all()


def test_outside_real_range_names_only_the_statistics_that_leave_it():
    real = pd.DataFrame({name: np.linspace(0.0, 1.0, 101) for name in LUNG_FIELD_STATISTICS})
    inside = real.sample(50, random_state=0)
    shifted = inside.assign(area_share=inside["area_share"] + 2.0)
    assert outside_real_range(compare_lung_fields(real, inside)) == {}
    found = outside_real_range(compare_lung_fields(real, shifted))
    assert list(found) == ["area_share"] and "100% above" in found["area_share"]
