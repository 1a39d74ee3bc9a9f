"""Notebook 00's results (``data.json``): the real release's metadata and the working data's, the splits,
the phantom's lung fields against real masks, and what identifies a patient without training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cxrlib.artifacts import MetricsFile
from cxrlib.attacks import IdentityProfile
from cxrlib.data import statistics


@dataclasses.dataclass(frozen=True)
class DataResults(MetricsFile):
    """``data.json`` (without its context); the fields are its keys."""

    #: :func:`cxrlib.data.statistics.summary` of ChestX-ray14's metadata
    real_metadata: dict[str, Any]
    #: the same of the working data
    working_data: dict[str, Any]
    #: ``source`` and per split its images, patients and patients with two or more images
    splits: dict[str, Any]
    #: the real masks, and (on the phantom) its lung fields compared with them
    lung_fields: dict[str, Any]
    #: the training-free cues per data set (the real sample's, then the phantom's)
    identity_profiles: list[IdentityProfile]
    #: per cue, whether the phantom's AUC lies inside the real sample's CI; None without a phantom
    phantom_cues_inside_real_ci: dict[str, bool] | None

    def to_json(self) -> dict[str, Any]:
        return {"real_metadata": self.real_metadata, "working_data": self.working_data, "splits": self.splits,
                "lung_fields": self.lung_fields,
                "identity_profiles": [profile.to_json() for profile in self.identity_profiles],
                "phantom_cues_inside_real_ci": self.phantom_cues_inside_real_ci}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "DataResults":
        """From ``data.json`` as read (its ``context`` left out)."""
        return cls(real_metadata=payload["real_metadata"], working_data=payload["working_data"],
                   splits=payload["splits"], lung_fields=payload["lung_fields"],
                   identity_profiles=[IdentityProfile.from_json(p) for p in payload["identity_profiles"]],
                   phantom_cues_inside_real_ci=payload["phantom_cues_inside_real_ci"])


def data_results(*, real_metadata: Mapping[str, Any], working_metadata: pd.DataFrame, splits_source: str,
                 split_table: pd.DataFrame, real_mask_count: int, real_masks_with_two_lungs: int,
                 lung_comparison: pd.DataFrame | None, outside_real_range: Mapping[str, Any] | None,
                 identity_profiles: Sequence[IdentityProfile],
                 phantom_cues_inside_real_ci: Mapping[str, bool] | None) -> DataResults:
    """Notebook 00's results from what it measured: the summary of the real metadata, the working data's
    metadata (summarised here), where the splits came from and the notebook's table of them (a row per split),
    the count of real lung masks (and of those with two lungs), the comparison with the phantom's lung fields
    and where they lie outside the real range (None on real data), the identity profiles and, on the
    phantom, which of its cues lie inside the real CI."""
    return DataResults(
        real_metadata=dict(real_metadata), working_data=statistics.summary(working_metadata),
        splits={"source": splits_source, **split_table.to_dict(orient="index")},
        lung_fields={"real_masks": real_mask_count, "real_masks_with_two_lungs": real_masks_with_two_lungs,
                     "comparison": None if lung_comparison is None else lung_comparison.to_dict(orient="index"),
                     "outside_real_range": outside_real_range},
        identity_profiles=list(identity_profiles),
        phantom_cues_inside_real_ci=None if phantom_cues_inside_real_ci is None else dict(phantom_cues_inside_real_ci))
