import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from cxrlib.metrics import verification_metrics
from cxrlib.plots import reid as plots
from cxrlib.reid import Images


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return Images(tuple(f"{p:08d}_{f:03d}.png" for p in range(3) for f in range(2)),
                  rng.integers(0, 256, (6, 16, 16), dtype=np.uint8))


def test_figures_draw(images):
    y = np.r_[np.ones(20), np.zeros(20)]
    metrics = verification_metrics(y, np.random.default_rng(0).random(40), n_bootstrap=20)
    fig = plots.plot_roc({"net": metrics})
    assert "AUC" in fig.axes[0].get_legend().get_texts()[0].get_text()
    table = pd.DataFrame({"query": [images.names[0]] * 2, "rank": [1, 2], "match": list(images.names[1:3]),
                          "distance": [0.2, 0.7], "same_patient": [True, False]})
    assert len(plots.plot_linkage(images, table).axes) == 3
    gaps = pd.DataFrame({"bin": ["0-1", "≥1"], "positives": [5, 0], "auc": [0.9, np.nan],
                         "auc_low": [0.8, np.nan], "auc_high": [0.95, np.nan]})
    assert plots.plot_auc_by_gap(gaps).axes[0].get_ylim()[1] > 1
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6}]
    assert plots.plot_history({"net": history}).axes
    assert len(plots.plot_blacked_out(images, images, images.names[:2]).axes) == 4


def test_comparison_table_puts_ours_beside_published():
    table = plots.comparison_table({"ours": {"verification AUC": 0.97}})
    assert table["metric"].tolist() == list(plots.PUBLISHED)
    assert table["ours"].iloc[0] == 0.97 and table["ours"].isna().sum() == 3


def test_identity_cues_table_and_figure(images):
    y = np.r_[np.ones(20), np.zeros(20)]
    scores = np.random.default_rng(1).random(40)
    cues = {"mean_sd": {"verification": verification_metrics(y, scores, n_bootstrap=0),
                        "retrieval": {"map_at_r": 0.1, "r_precision": 0.1, "precision_at_1": 0.2}},
            "siamese": {"verification": verification_metrics(y, y + scores, n_bootstrap=20), "retrieval": None}}
    table = plots.identity_cue_table(cues)
    assert table["cue"].tolist() == ["image mean + sd", "siamese network"]
    assert table.loc[1, "verification AUC"] == 1.0 and np.isnan(table.loc[1, "retrieval P@1"])
    assert np.isnan(table.loc[0, "AUC 95 % CI low"]) and table.loc[1, "AUC 95 % CI low"] <= 1.0
    fig = plots.plot_identity_cues(cues)
    roc, bars = fig.axes
    assert len(roc.get_legend().get_texts()) == 2
    assert [t.get_text() for t in bars.get_yticklabels()] == ["image mean + sd"]  # the siamese ranks no gallery
