"""Descriptive statistics of a metadata table: what makes re-identification possible at all."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlib.data.chestxray14 import LABELS


def images_per_patient(meta: pd.DataFrame) -> pd.Series:
    return meta.groupby("patient_id").size()


def followup_span_years(meta: pd.DataFrame) -> pd.Series:
    """Per patient with several scans: age at the last scan minus age at the first (whole years)."""
    ages = meta.groupby("patient_id")["age"]
    span = ages.max() - ages.min()
    return span[images_per_patient(meta) > 1]


def label_frequencies(meta: pd.DataFrame) -> pd.Series:
    """Share of images carrying each finding, plus the share with no finding."""
    labels = meta[list(LABELS)]
    freq = labels.mean(axis=0)
    freq["No Finding"] = float((labels.sum(axis=1) == 0).mean())
    return freq


def cooccurrence(meta: pd.DataFrame) -> pd.DataFrame:
    """P(column finding | row finding): how often findings appear together on one image."""
    labels = meta[list(LABELS)].to_numpy(dtype=np.float64)
    joint = labels.T @ labels
    with np.errstate(invalid="ignore", divide="ignore"):
        conditional = joint / np.diag(joint)[:, None]
    return pd.DataFrame(conditional, index=list(LABELS), columns=list(LABELS))


def summary(meta: pd.DataFrame) -> dict:
    per_patient = images_per_patient(meta)
    span = followup_span_years(meta)
    return {
        "images": int(len(meta)),
        "patients": int(meta["patient_id"].nunique()),
        "images_per_patient": {"mean": float(per_patient.mean()), "median": float(per_patient.median()),
                               "max": int(per_patient.max()),
                               "share_with_several": float((per_patient > 1).mean())},
        "followup_span_years": {"median": float(span.median()) if len(span) else float("nan"),
                                "share_10_years_or_more": float((span >= 10).mean()) if len(span) else 0.0},
        "female_share": float((meta["sex"] == "F").mean()),
        "pa_share": float((meta["view"] == "PA").mean()),
        "age_median": float(meta["age"].median()),
        "label_frequencies": {k: float(v) for k, v in label_frequencies(meta).items()},
    }
