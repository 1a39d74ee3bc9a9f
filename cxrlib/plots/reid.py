"""Figures and tables of notebook 01: ROC curves, what identifies (cues), the linkage attack, AUC by time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxrlib.reid import IDENTITY_CUES, Images

#: Packhäuser et al., Sci. Rep. 12:14851 (2022), ChestX-ray14 test set
PUBLISHED = {"verification AUC": 0.9940, "verification accuracy": 0.9555, "retrieval mAP@R": 0.9748,
             "retrieval P@1": 0.9963}


def _auc_label(name: str, metrics: Mapping) -> str:
    ci = metrics.get("auc_ci")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{name}: AUC {metrics['auc']:.3f}{interval}"


def plot_roc(curves: Mapping[str, Mapping], title: str = "") -> plt.Figure:
    """ROC curves; each value is a :func:`cxrlib.metrics.verification_metrics` result (the legend
    gives its AUC and, when present, the bootstrap 95 % CI)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
    for name, metrics in curves.items():
        ax.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], lw=1.6, label=_auc_label(name, metrics))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "Patient verification on held-out patients")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def identity_cue_table(cues: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per cue of :func:`cxrlib.reid.identity_cues`: verification AUC (with its CI when
    computed) and the retrieval metrics (empty for the siamese network)."""
    rows = []
    for kind, cue in cues.items():
        verification, retrieval = cue["verification"], cue["retrieval"] or {}
        ci = verification.get("auc_ci") or [np.nan, np.nan]
        rows.append({"cue": IDENTITY_CUES.get(kind, kind), "verification AUC": verification["auc"],
                     "AUC 95 % CI low": ci[0], "AUC 95 % CI high": ci[1],
                     "retrieval mAP@R": retrieval.get("map_at_r", np.nan),
                     "retrieval P@1": retrieval.get("precision_at_1", np.nan)})
    return pd.DataFrame(rows)


def plot_identity_cues(cues: Mapping[str, Mapping], title: str = "") -> plt.Figure:
    """What identifies and what does not: ROC curves of every cue of :func:`cxrlib.reid.identity_cues`
    on the same pairs (left) and their retrieval P@1 (right; the siamese network ranks no gallery)."""
    fig, (roc, bars) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    roc.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
    colours = dict(zip(cues, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for kind, cue in cues.items():
        v = cue["verification"]
        roc.plot(v["roc"]["fpr"], v["roc"]["tpr"], lw=1.6, color=colours[kind],
                 label=_auc_label(IDENTITY_CUES.get(kind, kind), v))
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
            title="Verification on held-out pairs")
    roc.legend(loc="lower right", fontsize=7)
    ranked = [kind for kind in cues if cues[kind]["retrieval"] is not None]
    p1 = [cues[kind]["retrieval"]["precision_at_1"] for kind in ranked]
    y = np.arange(len(ranked))
    bars.barh(y, p1, color=[colours[k] for k in ranked])
    for yi, value in zip(y, p1):
        bars.text(value + 0.01, yi, f"{value:.2f}", va="center", fontsize=8)
    bars.set_yticks(y, [IDENTITY_CUES.get(k, k) for k in ranked], fontsize=8)
    bars.invert_yaxis()
    bars.set(xlim=(0, 1.1), xlabel="retrieval precision@1 (nearest other image is the same patient)",
             title="Retrieval over all held-out images")
    fig.suptitle(title or "What identifies a patient: intensity statistics, pixels, trained networks", fontsize=10)
    fig.tight_layout()
    return fig


def plot_linkage(images: Images, table: pd.DataFrame, title: str = "") -> plt.Figure:
    """One row per query: the query, then its nearest matches (``distance`` column of
    :func:`cxrlib.reid.linkage_attack`); green frame = same patient."""
    queries = list(dict.fromkeys(table["query"]))
    k = int(table["rank"].max())
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.7 * (k + 1), 1.9 * len(queries)),
                             squeeze=False)
    for row, query in zip(axes, queries):
        matches = table[table["query"] == query].sort_values("rank")
        row[0].imshow(images.pixels[images.rows([query])[0]], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"query\n{query.removesuffix('.png')}", fontsize=7)
        for ax, match in zip(row[1:], matches.itertuples()):
            ax.imshow(images.pixels[images.rows([match.match])[0]], cmap="gray", vmin=0, vmax=255)
            colour = "tab:green" if match.same_patient else "tab:red"
            ax.set_title(f"#{match.rank}  d={match.distance:.2f}\n{match.match.removesuffix('.png')}",
                         fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set(color=colour, linewidth=2.5)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(matches):]:
            ax.axis("off")
    fig.suptitle(title or "Linkage attack: the gallery images nearest to the query in the retrieval embedding",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_auc_by_gap(table: pd.DataFrame, xlabel: str = "years between the two scans",
                    title: str = "") -> plt.Figure:
    """Bars of :func:`cxrlib.reid.auc_by_gap`, with bootstrap CIs and the number of same-patient pairs."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = np.arange(len(table))
    auc = table["auc"].to_numpy(dtype=float)
    err = np.vstack([auc - table["auc_low"].to_numpy(dtype=float), table["auc_high"].to_numpy(dtype=float) - auc])
    lows = table["auc_low"].to_numpy(dtype=float)
    bottom = min(0.45, np.nanmin(lows) - 0.05) if np.isfinite(lows).any() else 0.45
    ax.bar(x, np.nan_to_num(auc, nan=bottom) - bottom, bottom=bottom, color="tab:blue", alpha=0.8)
    ax.errorbar(x, auc, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3, lw=1)
    for xi, a, n in zip(x, auc, table["positives"]):
        ax.text(xi, (bottom if np.isnan(a) else a) + 0.015, "no pairs" if n == 0 else f"n={n}",
                ha="center", fontsize=7)
    ax.set_xticks(x, table["bin"])
    ax.set(xlabel=xlabel, ylabel="verification AUC", ylim=(bottom, 1.08),
           title=title or "Re-identification across time")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    fig.tight_layout()
    return fig


def plot_history(histories: Mapping[str, Sequence[Mapping]], title: str = "") -> plt.Figure:
    """Training and validation loss per epoch of one or more :class:`cxrlib.train.FitResult` histories."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for (name, history), colour in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], color=colour, ls="--", label=f"{name} train")
        ax.plot(epochs, [h["val_loss"] for h in history], color=colour, marker="o", ms=3,
                label=f"{name} validation")
    ax.set(xlabel="epoch", ylabel="loss", title=title or "Training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_blacked_out(original: Images, blacked: Images, names: Sequence[str], title: str = "") -> plt.Figure:
    """Images before and after their burned-in text was blacked out (top / bottom row)."""
    fig, axes = plt.subplots(2, len(names), figsize=(1.9 * len(names), 4.0), squeeze=False)
    for col, name in enumerate(names):
        for row, images in enumerate((original, blacked)):
            axes[row, col].imshow(images.pixels[images.rows([name])[0]], cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[0, col].set_title(name.removesuffix(".png"), fontsize=7)
    axes[0, 0].set_ylabel("as released", fontsize=8)
    axes[1, 0].set_ylabel("text blacked out", fontsize=8)
    fig.suptitle(title or "Conventional anonymization", fontsize=9)
    fig.tight_layout()
    return fig


def comparison_table(columns: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """The published figures, then one column per entry of ``columns`` (label -> figures keyed like
    :data:`PUBLISHED`; a figure a column lacks stays empty)."""
    table = {"metric": list(PUBLISHED),
             "published (ChestX-ray14, ResNet-50, 256 px)": list(PUBLISHED.values())}
    for label, figures in columns.items():
        table[label] = [figures.get(name, np.nan) for name in PUBLISHED]
    return pd.DataFrame(table)
