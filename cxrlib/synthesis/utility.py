"""The utility of a synthetic data set: a classifier trained on synthetic images only against one
trained on real images, on the same real test images."""

from __future__ import annotations

import numpy as np

from cxrlib.metrics import bootstrap_mean_aucs, multilabel_auc, percentile_ci


#: "a classifier trained on synthetic images only is within 3.5 % AUC of one trained on real images"
PUBLISHED_AUC_GAP_PERCENT = 3.5


def utility_gap(labels: np.ndarray, real_probabilities: np.ndarray, synthetic_probabilities: np.ndarray,
                *, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Test AUCs of the real-data and the synthetic-only classifier on the same real test images,
    and the gap in mean AUC (real minus synthetic) in points and relative to the real one, with a
    paired bootstrap 95 % CI (both classifiers scored on the same resampled images)."""
    real = multilabel_auc(labels, real_probabilities, n_bootstrap=n_bootstrap, seed=seed)
    synthetic = multilabel_auc(labels, synthetic_probabilities, n_bootstrap=n_bootstrap, seed=seed)
    result = {"real": real, "synthetic": synthetic,
              "gap_points": 100 * (real["mean_auc"] - synthetic["mean_auc"]),
              "gap_percent_of_real": 100 * (real["mean_auc"] - synthetic["mean_auc"]) / real["mean_auc"],
              "published_gap_percent": PUBLISHED_AUC_GAP_PERCENT}
    if n_bootstrap:
        both = bootstrap_mean_aucs(labels, [real_probabilities, synthetic_probabilities], n_bootstrap, seed)
        low, high = percentile_ci(both[:, 0] - both[:, 1])
        result["gap_points_ci"] = [100 * low, 100 * high]
    return result

