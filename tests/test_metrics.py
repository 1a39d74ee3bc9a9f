import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrlib.data.chestxray14 import LABELS
from cxrlib.metrics import (fidelity, bootstrap_mean_aucs, multilabel_auc, percentile_ci, resampled_auc, retrieval_metrics,
                            roc_points, verification_metrics)


def _scores(n=200, separation=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    return y, score


def test_verification_metrics_match_definitions():
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.1])
    m = verification_metrics(y, s, n_bootstrap=0)
    assert m["auc"] == pytest.approx(8 / 9)
    # predicted 1 at >= 0.5: [1, 1, 0, 1, 0, 0]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc"]["fpr"][0] == 0 and m["roc"]["tpr"][-1] == 1
    assert "auc_ci" not in m


def test_verification_metrics_accept_tensors_and_give_a_ci_around_the_auc():
    y, s = _scores()
    m = verification_metrics(torch.tensor(y), torch.tensor(s), n_bootstrap=200, seed=1)
    low, high = m["auc_ci"]
    assert low < m["auc"] < high and high - low < 0.2


def test_verification_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="both"):
        verification_metrics([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        verification_metrics([1, 0], [float("nan"), 0.3])
    with pytest.raises(ValueError, match="entries"):
        verification_metrics([1, 0, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="empty"):
        roc_points([], [])


def test_bootstrap_is_seeded_and_narrows_with_more_data():
    y, s = _scores(n=100)
    assert np.array_equal(bootstrap_mean_aucs(y, [s], 100, seed=3), bootstrap_mean_aucs(y, [s], 100, seed=3))
    small = np.diff(percentile_ci(bootstrap_mean_aucs(y, [s], 100, seed=0)))[0]
    y_big, s_big = _scores(n=1000)
    big = np.diff(percentile_ci(bootstrap_mean_aucs(y_big, [s_big], 100, seed=0)))[0]
    assert big < small


def test_bootstrap_skips_undefined_resamples():
    # 1 positive in 20: many resamples miss it and AUC is undefined there
    y = np.r_[1, np.zeros(19, dtype=int)]
    s = np.linspace(1, 0, 20)
    values = bootstrap_mean_aucs(y, [s], 50, seed=0)
    assert values.shape == (50, 1) and (values == 1.0).all()
    with pytest.raises(ValueError, match="undefined"):
        bootstrap_mean_aucs(np.zeros(20, dtype=int), [s], 50)


def test_resampled_auc_equals_sklearn_on_each_resample_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = rng.integers(0, 5, 40) / 4  # many tied scores
    index = rng.integers(0, 40, (30, 40))
    index[0] = np.flatnonzero(y == 0)[0]  # one resample of a single negative row: undefined
    aucs = resampled_auc(y, s, index)
    assert math.isnan(aucs[0])
    np.testing.assert_allclose(aucs[1:], [roc_auc_score(y[i], s[i]) for i in index[1:]], rtol=1e-12)


def test_bootstrap_mean_of_columns_leaves_undefined_columns_out_and_pairs_score_sets():
    rng = np.random.default_rng(2)
    y = (rng.random((80, 3)) < 0.3).astype(int)
    y[:, 2] = 0  # never defined
    s = rng.random(y.shape)
    values = bootstrap_mean_aucs(y, [s, 1 - s], 40, seed=5)
    index = np.random.default_rng(5).integers(0, 80, (40, 80))  # the same resamples
    expected = [np.mean([roc_auc_score(y[i, k], s[i, k]) for k in (0, 1)]) for i in index]
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(values[:, 1], 1 - values[:, 0], rtol=1e-12)


def test_multilabel_auc_reports_single_valued_classes_as_nan_and_excludes_them():
    rng = np.random.default_rng(0)
    y = (rng.random((60, len(LABELS))) < 0.3).astype(int)
    y[:, 3] = 0  # no positives for this finding in the test set
    s = y * 0.5 + rng.random(y.shape) * 0.6
    result = multilabel_auc(y, s, n_bootstrap=20, seed=0)
    assert math.isnan(result["per_class"][LABELS[3]])
    assert result["excluded"] == [LABELS[3]]
    defined = [v for k, v in result["per_class"].items() if k != LABELS[3]]
    assert result["mean_auc"] == pytest.approx(np.mean(defined))
    assert result["ci"][0] <= result["mean_auc"] <= result["ci"][1]
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        multilabel_auc(y[:, :3], s[:, :3])


def test_retrieval_metrics_perfect_and_chance():
    labels = np.repeat(np.arange(10), 3)
    separated = np.eye(10)[labels] * 10 + np.random.default_rng(0).normal(scale=0.01, size=(30, 10))
    perfect = retrieval_metrics(separated, labels)
    assert perfect == {"map_at_r": pytest.approx(1.0), "r_precision": pytest.approx(1.0),
                       "precision_at_1": pytest.approx(1.0)}
    noise = retrieval_metrics(np.random.default_rng(1).normal(size=(30, 8)), labels)
    assert noise["precision_at_1"] < 0.5
    with pytest.raises(ValueError, match="once"):
        retrieval_metrics(np.eye(3), [0, 1, 2])


def test_fidelity_matches_hand_computed_values_and_keeps_unchanged_images():
    torch.manual_seed(0)
    original = torch.rand(5, 1, 16, 16)
    shifted = (original + 0.1).clamp(0, 1)
    mse = ((shifted - original) ** 2).mean().item()
    got = fidelity(original, shifted, batch_size=2)  # batches: the same as one pass
    assert got["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    assert 0 < got["ssim"] < 1 and got["changed_images"] == 5
    assert got == pytest.approx(fidelity(original, shifted, batch_size=5))
    # an unchanged image among changed ones stays in the set's error: PSNR finite, and lower error than all changed
    mixed = torch.cat([original[:1], shifted[1:]])
    partly = fidelity(original, mixed)
    assert partly["changed_images"] == 4 and math.isfinite(partly["psnr"]) and partly["psnr"] > got["psnr"]
    assert fidelity(original, original.clone()) == {"ssim": pytest.approx(1.0), "psnr": None, "changed_images": 0}
    with pytest.raises(ValueError, match="must both be"):
        fidelity(original, original[:1])

def test_retrieval_metrics_can_rank_by_length_as_well_as_direction():
    """Two patients along one direction, told apart by the vectors' length (as by an image's mean and sd)."""
    embeddings = np.array([[1.0, 0.0], [1.2, 0.05], [5.0, 0.02], [5.5, 0.0]])
    labels = [0, 0, 1, 1]
    assert retrieval_metrics(embeddings, labels, normalize=False)["precision_at_1"] == 1.0
    assert retrieval_metrics(embeddings, labels)["precision_at_1"] < 1.0
