"""Figure of notebook 06: each network trained on real radiographs from scratch and from the phantom's
weights, with patient-bootstrap CIs (:class:`cxrlib.transfer.TransferResult`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from cxrlib.transfer import LABELS, STARTS, TransferResult

#: the panels: (network, figure, its chance level: a number, or the figure holding it)
PANELS = (("verification", "auc", 0.5), ("retrieval", "precision_at_1", "chance_precision_at_1"),
          ("retrieval", "map_at_r", "chance_map_at_r"), ("classifier", "mean_auc", 0.5))
_COLOURS = {"scratch": "tab:blue", "phantom": "tab:orange"}


def plot_transfer(result: TransferResult, title: str = "") -> plt.Figure:
    """One panel per figure (verification AUC, retrieval P@1 and mAP@R, classifier mean AUC): the
    pooled value of each start with its patient-bootstrap 95 % CI, each fold's value as a small dot, the
    chance level as a dotted line, and the phantom start's gain over scratch (with its CI) in the title."""
    panels = [p for p in PANELS if result.get(p[0], "scratch") is not None]
    if not panels:
        raise ValueError("the result holds no network to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels), 3.6), squeeze=False)
    for ax, (network, metric, chance) in zip(axes[0], panels):
        starts = [s for s in STARTS if result.get(network, s) is not None]
        for x, start in enumerate(starts):
            outcome = result.get(network, start)
            estimate = outcome.pooled[metric]
            if estimate.low is not None:
                # a percentile CI of a few resamples (a dry run) need not hold the pooled value
                yerr = np.clip(np.array([[estimate.value - estimate.low], [estimate.high - estimate.value]]), 0, None)
            else:
                yerr = None
            ax.errorbar(x, estimate.value, yerr=yerr, fmt="o", ms=7, capsize=4, color=_COLOURS[start])
            folds = [f.metrics[metric] for f in outcome.folds]
            ax.plot(x + np.linspace(-0.12, 0.12, len(folds)) + 0.22, folds, ".", color=_COLOURS[start],
                    alpha=0.5, ms=5)
        level = chance if isinstance(chance, float) else result.get(network, "scratch").pooled[chance].value
        ax.axhline(level, color="0.5", lw=0.8, ls=":", label="chance" if ax is axes[0, 0] else None)
        ax.set_xticks(range(len(starts)), [LABELS[s] for s in starts], fontsize=8)
        ax.set_xlim(-0.5, len(starts) - 0.3)
        ax.set_ylabel(LABELS[metric], fontsize=9)
        heading = LABELS[network]
        gain = (result.get(network, "phantom").gain or {}).get(metric) if "phantom" in starts else None
        if gain is not None:
            interval = f" [{gain.low:+.3f}, {gain.high:+.3f}]" if gain.low is not None else ""
            heading += f"\ngain {gain.value:+.3f}{interval}"
        ax.set_title(heading, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"Real patients held out, {result.folds} folds by patient "
                          "(dots: folds; bars: 95 % CI over patients)", fontsize=10)
    fig.tight_layout()
    return fig
