"""Figures of notebook 02: the classifier's ROC curves, deformations, loss curves, privacy vs utility."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from cxrlib.data.chestxray14 import LABELS


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str] = LABELS,
                    ncols: int = 5, title: str = "") -> plt.Figure:
    """One panel per finding; one ROC curve per entry of ``curves`` (label -> (labels, probabilities)).

    A finding without both positive and negative test images gets an empty panel saying so.
    """
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.9 * nrows), squeeze=False,
                             sharex=True, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for k, (ax, name) in enumerate(zip(axes.flat, names)):
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        for label, (y, p) in curves.items():
            y_k = np.asarray(y)[:, k]
            if y_k.min() == y_k.max():
                ax.text(0.5, 0.5, "one class only\nin the test set", ha="center", va="center", fontsize=8)
                break
            fpr, tpr, _ = roc_curve(y_k, np.asarray(p)[:, k])
            ax.plot(fpr, tpr, lw=1.2, label=label)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("false positive rate")
    for ax in axes[:, 0]:
        ax.set_ylabel("true positive rate")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(curves) > 1 and handles:
        fig.legend(handles, labels, loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_deformations(originals: np.ndarray, anonymized: np.ndarray, displacement: np.ndarray,
                      titles: Sequence[str] | None = None, bound: float | None = None,
                      quiver_step: int | None = None, title: str = "") -> plt.Figure:
    """Per image (row): original, anonymized, difference, displacement magnitude with arrows.

    ``originals``/``anonymized`` are (N, S, S) in [0, 1]; ``displacement`` is (N, 2, S, S) in pixels
    (x, y: where each output pixel was sampled from, relative to itself). ``bound`` (pixels) fixes the
    colour scale of the magnitude map so that several mu compare at a glance.
    """
    n, size = len(originals), originals.shape[-1]
    step = quiver_step or max(1, size // 12)
    fig, axes = plt.subplots(n, 4, figsize=(11, 2.8 * n), squeeze=False)
    magnitude = np.hypot(displacement[:, 0], displacement[:, 1])
    vmax = bound or float(magnitude.max()) or 1.0
    diff_max = float(np.abs(anonymized - originals).max()) or 1.0
    ys, xs = np.mgrid[0:size:step, 0:size:step]
    for i in range(n):
        row = axes[i]
        row[0].imshow(originals[i], cmap="gray", vmin=0, vmax=1)
        row[1].imshow(anonymized[i], cmap="gray", vmin=0, vmax=1)
        diff = row[2].imshow(anonymized[i] - originals[i], cmap="RdBu_r", vmin=-diff_max, vmax=diff_max)
        mag = row[3].imshow(magnitude[i], cmap="magma", vmin=0, vmax=vmax)
        # arrows point from a pixel towards where its value came from, in data coordinates (the image's
        # y axis points down), magnified so that the bound spans one arrow spacing
        row[3].quiver(xs, ys, displacement[i, 0, ::step, ::step], displacement[i, 1, ::step, ::step],
                      color="cyan", angles="xy", scale_units="xy", scale=vmax / step if vmax else 1, width=0.006)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(titles[i] if titles else f"image {i}", fontsize=8)
        if i == 0:
            for ax, name in zip(row, ("original", "anonymized", "anonymized - original",
                                      "displacement (px)")):
                ax.set_title(name, fontsize=9)
        fig.colorbar(diff, ax=row[2], fraction=0.046, pad=0.03)
        fig.colorbar(mag, ax=row[3], fraction=0.046, pad=0.03)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_adversarial_history(histories: Mapping[str, Sequence[Mapping[str, float]]], title: str = "",
                             kept: Mapping[str, int] | None = None) -> plt.Figure:
    """Curves per run (label -> history): AC, -log(1 - s), total, mean score; training solid, validation
    dashed; and, where recorded, the frozen siamese network's validation AUC, with each run's lowest
    marked by a cross. ``kept`` (label -> epoch): the kept epoch, a circle on every validation curve."""
    panels = [("ac", "classifier BCE (AC)"), ("log_ver", "-log(1 - s)"), ("total", "total loss"),
              ("ver", "mean SNN score s")]
    frozen = all(history and "val_frozen_auc" in history[0] for history in histories.values())
    fig, axes = plt.subplots(1, len(panels) + frozen, figsize=(4.0 * (len(panels) + frozen), 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kept = kept or {}
    for (label, history), color in zip(histories.items(), colors * 4):
        epochs = [r["epoch"] for r in history]
        at = {r["epoch"]: r for r in history}
        for ax, (key, name) in zip(axes, panels):
            ax.plot(epochs, [r[f"train_{key}"] for r in history], color=color, label=f"{label} train")
            ax.plot(epochs, [r[f"val_{key}"] for r in history], color=color, ls="--", label=f"{label} val")
            if label in kept:
                ax.plot(kept[label], at[kept[label]][f"val_{key}"], "o", color=color, mfc="none", ms=9)
            ax.set(title=name, xlabel="epoch")
        if frozen:
            curve = [r["val_frozen_auc"] for r in history]
            axes[-1].plot(epochs, curve, color=color, ls="--", marker=".", label=label)
            lowest = int(np.nanargmin(curve))
            axes[-1].plot(epochs[lowest], curve[lowest], "x", color=color, ms=9)
            if label in kept:
                axes[-1].plot(kept[label], at[kept[label]]["val_frozen_auc"], "o", color=color, mfc="none", ms=9)
            axes[-1].set(title="frozen SNN AUC (validation)", xlabel="epoch")
    axes[0].legend(fontsize=7)
    if frozen:
        axes[-1].legend(fontsize=7, title="o kept, x lowest", title_fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_score_histograms(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> plt.Figure:
    """Siamese scores of same- and different-patient pairs, one panel per condition (label -> (scores, same))."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.0), sharey=True, squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, (label, (s, same)) in zip(axes[0], scores.items()):
        s, same = np.asarray(s), np.asarray(same).astype(bool)
        ax.hist(s[same], bins=bins, alpha=0.6, label="same patient", color="tab:red")
        ax.hist(s[~same], bins=bins, alpha=0.6, label="different patients", color="tab:blue")
        ax.set(title=label, xlabel="siamese score s")
    axes[0, 0].set_ylabel("pairs")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_privacy_utility(mu: Sequence[float], verification_auc: Sequence[float], classifier_auc: Sequence[float],
                         classifier_ci: Sequence[tuple[float, float]] | None = None,
                         reference: tuple[float, float] | None = None, title: str = "") -> plt.Figure:
    """Verification AUC (privacy: lower is better) and classifier mean AUC (utility) against mu.

    ``reference`` = (verification AUC, classifier AUC) on the original images, drawn as dotted lines.
    """
    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    ax.plot(mu, verification_auc, "o-", color="tab:red", label="siamese AUC on (anonymized, real) pairs")
    ax.plot(mu, classifier_auc, "s-", color="tab:green", label="classifier mean AUC on anonymized")
    if classifier_ci is not None:
        low, high = np.asarray(classifier_ci).T
        ax.fill_between(mu, low, high, color="tab:green", alpha=0.15)
    if reference is not None:
        ax.axhline(reference[0], color="tab:red", ls=":", lw=1, label="siamese AUC, originals")
        ax.axhline(reference[1], color="tab:green", ls=":", lw=1, label="classifier AUC, originals")
    ax.axhline(0.5, color="0.6", lw=0.8)
    low = min(0.4, float(np.nanmin([*verification_auc, *classifier_auc])) - 0.05)
    ax.set(xlabel="mu (deformation strength)", ylabel="AUC", ylim=(low, 1.02))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def deformation_slider(anonymizers: Mapping[float, Any], images: Any, titles: Sequence[str] | None = None):
    """A live mu slider for teachers (ipywidgets): ``images`` (N, 1, S, S), each deformed at the chosen mu
    by the trained generator of the nearest trained mu (``anonymizers``: mu -> FlowFieldAnonymizer), its
    field scaled to that mu, with the displacement field on the colour scale of the largest mu."""
    import ipywidgets as widgets
    import torch

    trained = sorted(anonymizers)
    largest = anonymizers[trained[-1]].displacement_bound

    def show(mu: float) -> None:
        nearest = min(trained, key=lambda m: abs(m - mu))
        anonymizer = anonymizers[nearest].with_mu(mu).eval()
        with torch.no_grad():
            deformed, shift = anonymizer(images), anonymizer.displacement_pixels(images)
        plot_deformations(images[:, 0].numpy(), deformed[:, 0].numpy(), shift.numpy(), titles=titles, bound=largest,
                          title=f"mu = {mu:.4f}: at most {anonymizer.displacement_bound:.2f} px "
                                f"(the generator trained for mu = {nearest:g})")
        plt.show()

    slider = widgets.FloatSlider(value=trained[-1], min=0.0, max=trained[-1], step=trained[-1] / 40,
                                 readout_format=".4f", description="mu", continuous_update=False)
    return widgets.interactive(show, mu=slider)
