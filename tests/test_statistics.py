"""Descriptive statistics of metadata: on a hand-made table with known answers, and on the real file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.statistics import (cooccurrence, followup_span_years, images_per_patient, label_frequencies,
                                    summary)


@pytest.fixture
def meta() -> pd.DataFrame:
    """Patient 1: three scans over 12 years; patient 2: one scan; patient 3: two scans, 2 years apart."""
    rows = [(1, 30, "F", "PA"), (1, 35, "F", "AP"), (1, 42, "F", "PA"), (2, 60, "M", "PA"), (3, 50, "M", "AP"),
            (3, 52, "M", "AP")]
    frame = pd.DataFrame(rows, columns=["patient_id", "age", "sex", "view"])
    for label in LABELS:
        frame[label] = 0
    frame.loc[[0, 1], "Mass"] = 1
    frame.loc[[0], "Nodule"] = 1
    return frame


def test_statistics_on_known_values(meta):
    assert images_per_patient(meta).to_dict() == {1: 3, 2: 1, 3: 2}
    assert followup_span_years(meta).to_dict() == {1: 12, 3: 2}  # the one-scan patient has no span
    frequencies = label_frequencies(meta)
    assert frequencies["Mass"] == pytest.approx(2 / 6) and frequencies["No Finding"] == pytest.approx(4 / 6)
    table = cooccurrence(meta)
    assert table.loc["Nodule", "Mass"] == 1.0 and table.loc["Mass", "Nodule"] == 0.5
    assert np.isnan(table.loc["Hernia", "Mass"])  # no Hernia image: undefined, not zero
    result = summary(meta)
    assert result["images"] == 6 and result["patients"] == 3
    assert result["images_per_patient"] == {"mean": 2.0, "median": 2.0, "max": 3,
                                            "share_with_several": pytest.approx(2 / 3)}
    assert result["followup_span_years"] == {"median": 7.0, "share_10_years_or_more": 0.5}
    assert result["female_share"] == 0.5 and result["pa_share"] == 0.5 and result["age_median"] == 46.0


def test_summary_of_the_real_metadata(real_meta):
    result = summary(real_meta)
    assert result["images"] == 112_120 and result["patients"] == 30_805
    assert result["images_per_patient"]["max"] == 184
    assert 0.5 < result["label_frequencies"]["No Finding"] < 0.55
    assert set(result["label_frequencies"]) == {*LABELS, "No Finding"}
