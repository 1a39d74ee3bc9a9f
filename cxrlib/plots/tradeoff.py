"""Figure of notebook 03: the privacy-utility trade-off of every anonymization method."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: one marker and colour per method family; unknown methods fall back to grey circles
_STYLE = {
    "identity": ("o", "black"),
    "flow_field": ("s", "tab:green"),
    "privacy_net": ("^", "tab:purple"),
    "dp_pix": ("D", "tab:orange"),
}
_FAMILY = {"identity": "no anonymization", "flow_field": "PriCheXy-Net", "privacy_net": "Privacy-Net",
           "dp_pix": "DP-Pix"}

REQUIRED_COLUMNS = ("method", "label", "attack_auc", "attack_auc_std", "utility_auc", "utility_ci_low",
                    "utility_ci_high")


def plot_tradeoff(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """One point per method and setting: x the privacy an attacker leaves -- the worst case of the attack
    panel (the strongest attack's verification AUC with its patient-bootstrap 95 % CI; lower is more
    private), with the re-trained attack of the papers (mean +- std over runs) as a hollow marker joined
    to it; where a result has no panel, the re-trained attack alone. y the frozen classifier's mean AUC
    on anonymized images (bootstrap 95 % CI; higher is more useful). The ideal corner -- chance-level
    linkage at the utility of the original images -- is marked with a star.

    ``table`` is :func:`cxrlib.evaluate.results_table`'s output (one row per evaluated anonymizer).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"trade-off table lacks column(s) {missing}; build it with cxrlib.evaluate.results_table")
    if table.empty:
        raise ValueError("trade-off table is empty: evaluate at least one anonymizer")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    has_panel = "worst_auc" in table.columns and table["worst_auc"].notna().any()
    seen: set[str] = set()
    for row in table.itertuples(index=False):
        marker, color = _STYLE.get(row.method, ("o", "0.5"))
        family = _FAMILY.get(row.method, row.method)
        # bootstrap percentile CIs may miss the pooled value on few resamples: clip, never negative
        yerr = np.clip([[row.utility_auc - row.utility_ci_low], [row.utility_ci_high - row.utility_auc]], 0, None)
        x = row.attack_auc
        if has_panel and np.isfinite(row.worst_auc):
            x = row.worst_auc
            xerr = np.clip([[x - row.worst_auc_low], [row.worst_auc_high - x]], 0, None)
            ax.errorbar(row.attack_auc, row.utility_auc, xerr=row.attack_auc_std, fmt=marker, mfc="white",
                        color=color, ms=6, capsize=2, lw=0.6, alpha=0.7)
            ax.plot([row.attack_auc, x], [row.utility_auc] * 2, color=color, lw=0.6, ls="--", alpha=0.7)
        else:
            xerr = row.attack_auc_std
        ax.errorbar(x, row.utility_auc, xerr=xerr, yerr=yerr, fmt=marker,
                    color=color, ms=7, capsize=3, lw=1, label=None if family in seen else family)
        seen.add(family)
        ax.annotate(row.label, (x, row.utility_auc), xytext=(5, 4), textcoords="offset points",
                    fontsize=7, color=color)
    if has_panel:
        ax.plot([], [], "o", mfc="white", color="0.4", label="re-trained attack (papers' protocol)")

    identity = table[table["method"] == "identity"]
    top = float(identity["utility_auc"].iloc[0]) if len(identity) else float(table["utility_auc"].max())
    ax.plot([0.5], [top], marker="*", ms=16, color="gold", mec="black", ls="none",
            label="ideal: chance-level linkage,\noriginal utility")
    ax.axvline(0.5, color="0.6", lw=0.8, ls=":")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    low = min(0.45, float((table["attack_auc"] - table["attack_auc_std"]).min()) - 0.02,
              float(table["utility_ci_low"].min()) - 0.02,
              float(table["worst_auc_low"].min()) - 0.02 if has_panel else 1.0)
    high = min(1.02, max(top, float(table["utility_ci_high"].max())) + 0.08)
    ax.set(xlabel=("worst-case verification AUC of the attack panel on (anonymized, real) images"
                   if has_panel else "re-trained verification AUC on (anonymized, real) pairs")
           + "  (privacy: lower is better)",
           ylabel="classifier mean AUC on anonymized images\n(utility: higher is better)",
           xlim=(low, 1.02), ylim=(low, high))
    ax.xaxis.label.set_fontsize(8)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_variants(originals: np.ndarray, variants: dict[str, np.ndarray], row_titles: list[str] | None = None,
                  title: str = "", size: float = 1.9) -> plt.Figure:
    """Rows: images; columns: the original, then each variant (label -> images of the same shape).

    Every panel shows [0, 1] on one fixed grey scale, so noise and contrast changes compare at a glance.
    """
    originals = np.asarray(originals)
    columns = {"original": originals, **{k: np.asarray(v) for k, v in variants.items()}}
    for label, images in columns.items():
        if images.shape != originals.shape:
            raise ValueError(f"variant {label!r} has shape {images.shape}, the originals {originals.shape}")
    n = len(originals)
    fig, axes = plt.subplots(n, len(columns), figsize=(size * len(columns), size * n + 0.4), squeeze=False)
    for col, (label, images) in enumerate(columns.items()):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(images[row], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=8)
            if col == 0 and row_titles:
                ax.set_ylabel(row_titles[row], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
