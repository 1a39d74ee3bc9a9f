"""Figures of notebook 04: latent diffusion synthesis and its privacy-enhancing sampler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from cxrlib.data.chestxray14 import LABELS, NO_FINDING
from cxrlib.synthesis.decomposition import GapDecomposition


def _show(ax, image, title: str = "", fontsize: int = 8) -> None:
    ax.imshow(np.asarray(torch.as_tensor(image).squeeze().float()), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> plt.Figure:
    """Train and validation loss per epoch, one panel per model (``{"autoencoder": history, ...}``)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.2), squeeze=False)
    for ax, (name, history) in zip(axes.flat, histories.items()):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
        ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
        ax.set(title=name, xlabel="epoch", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_reconstructions(real: torch.Tensor, reconstructed: torch.Tensor) -> plt.Figure:
    """Real images (top), their autoencoder reconstructions (middle), the absolute error (bottom)."""
    n = len(real)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for i in range(n):
        _show(axes[0, i], real[i])
        _show(axes[1, i], reconstructed[i])
        error = (real[i] - reconstructed[i]).abs().squeeze()
        axes[2, i].imshow(error.numpy(), cmap="magma", vmin=0, vmax=0.5)
        axes[2, i].set_xticks([])
        axes[2, i].set_yticks([])
    for row, name in enumerate(("real", "reconstruction", "|error|")):
        axes[row, 0].set_ylabel(name)
    fig.tight_layout()
    return fig


def plot_class_grid(images: torch.Tensor, classes: Sequence[str], per_row: int = 8,
                    title: str = "") -> plt.Figure:
    """One row per class (No Finding, then each finding alone), up to ``per_row`` images each."""
    classes = np.asarray(classes)
    names = [name for name in [NO_FINDING, *LABELS] if (classes == name).any()]
    fig, axes = plt.subplots(len(names), per_row, figsize=(1.2 * per_row + 1.6, 1.25 * len(names)),
                             squeeze=False)
    for row, name in enumerate(names):
        rows = np.flatnonzero(classes == name)[:per_row]
        for col in range(per_row):
            ax = axes[row, col]
            if col < len(rows):
                _show(ax, images[rows[col]])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    # leave the title a fixed height however tall the grid is
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig


def plot_matches(generated: torch.Tensor, real: torch.Tensor, captions: Sequence[str],
                 real_names: Sequence[str], title: str, max_shown: int = 8) -> plt.Figure:
    """Generated images (top) above the real training images they were linked to (bottom)."""
    n = min(len(generated), max_shown)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        return fig
    fig, axes = plt.subplots(2, n, figsize=(1.75 * n + 0.9, 4.3), squeeze=False)
    for i in range(n):
        _show(axes[0, i], generated[i], captions[i], fontsize=7)
        _show(axes[1, i], real[i], real_names[i], fontsize=6)
    axes[0, 0].set_ylabel("generated")
    axes[1, 0].set_ylabel("real training image")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_utility(results: Mapping[str, Mapping[str, object]], published_gap: float) -> plt.Figure:
    """Per-finding test AUC of each classifier (``{"real": auc, "synthetic": auc}``, results of
    :func:`cxrlib.metrics.multilabel_auc`), means with their 95 % CI in the legend."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(results)
    x = np.arange(len(LABELS))
    for i, (name, auc) in enumerate(results.items()):
        per_class = [auc["per_class"].get(label, np.nan) for label in LABELS]
        low, high = auc["ci"]
        ax.bar(x + (i - (len(results) - 1) / 2) * width, per_class, width,
               label=f"{name}: mean {auc['mean_auc']:.3f} [{low:.3f}, {high:.3f}]")
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, [label.replace("_", " ") for label in LABELS], rotation=35, ha="right")
    ax.set(ylabel="test AUC (real images)", ylim=(0.3, 1.0),
           title=f"classifier trained on real vs synthetic images (published gap: {published_gap:.1f} %)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_gap_decomposition(decomposition: GapDecomposition) -> plt.Figure:
    """Left: per finding, the synthetic-only classifier's loss split into what training on the
    autoencoder's reconstructions loses and what the generator loses beyond it (AUC points, means over
    the classifier seeds), the largest loss on top; right: how well each finding is rendered (the real
    classifier's AUC on the synthetic images against the labels they were drawn for; 0.5 is chance)."""
    findings = decomposition.worst_findings(count=len(decomposition.findings))[::-1]
    autoencoder = decomposition.gap_per_finding("autoencoder_in_training")
    generator = decomposition.gap_per_finding("generator")
    rendering = decomposition.rendering_per_finding()
    y = np.arange(len(findings))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(findings) + 1.6), sharey=True,
                             gridspec_kw={"width_ratios": [3, 2]})
    first = np.array([autoencoder[f].mean for f in findings])
    second = np.array([generator[f].mean for f in findings])
    axes[0].barh(y, first, color="tab:blue", label="autoencoder (a - c)")
    # stacked where both parts have the same sign; a part of the other sign is drawn from zero
    axes[0].barh(y, second, left=np.where(np.sign(second) == np.sign(first), first, 0), color="tab:orange",
                 label="generator (c - d)")
    axes[0].axvline(0, color="gray", lw=0.8)
    seeds = len(decomposition.seeds)
    axes[0].set(xlabel="AUC points lost on the real test images",
                title=f"where the synthetic-only classifier loses ({seeds} classifier seed{'s' * (seeds > 1)})")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].barh(y, [rendering[f].mean for f in findings], color="tab:green")
    axes[1].axvline(0.5, color="gray", lw=0.8, ls="--")
    axes[1].set(xlabel="real classifier's AUC on the synthetic images", xlim=(0.3, 1.0),
                title="is the finding asked for rendered?")
    axes[0].set_yticks(y, [f.replace("_", " ") for f in findings])
    fig.tight_layout()
    return fig


def plot_quality(frechet: Mapping[str, float], diversity: Mapping[str, Mapping[str, float]]) -> plt.Figure:
    """Left: Fréchet distances to the real test images; right: mean pairwise MS-SSIM per class
    (``{"real": {class: value}, "synthetic": {...}}``; lower is more diverse)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    axes[0].bar(list(frechet), list(frechet.values()), color=["tab:blue", "tab:orange"][:len(frechet)])
    axes[0].set(ylabel="Fréchet distance to real test images",
                title="classifier-feature Fréchet distance")
    axes[0].tick_params(axis="x", labelsize=8)
    classes = [name for name in [NO_FINDING, *LABELS] if any(name in d for d in diversity.values())]
    x = np.arange(len(classes))
    width = 0.8 / len(diversity)
    for i, (name, values) in enumerate(diversity.items()):
        axes[1].bar(x + (i - (len(diversity) - 1) / 2) * width,
                    [values.get(c, np.nan) for c in classes], width, label=name)
    axes[1].set_xticks(x, [c.replace("_", " ") for c in classes], rotation=35, ha="right")
    axes[1].set(ylabel="mean pairwise MS-SSIM", title="within-class similarity (lower = more diverse)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memorization(statistics: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      thresholds: tuple[float, float]) -> plt.Figure:
    """Memorization check: how close images come to the real training images, per set of images
    (``{name: (siamese scores, pixel correlations)}``, e.g. generated vs real held-out patients),
    beside the sampler's thresholds (siamese, pixels)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    panels = (("highest siamese score against the nearest real training images", 0, (0, 1)),
              ("highest aligned pixel correlation with a real training image", 1, (-0.2, 1)))
    for ax, (xlabel, column, limits) in zip(axes, panels):
        bins = np.linspace(*limits, 41)
        for name, values in statistics.items():
            data = np.asarray(values[column])
            ax.hist(data, bins=bins, histtype="step", lw=1.8, density=True, label=f"{name} (n={len(data)})")
        ax.axvline(thresholds[column], color="k", ls="--", label=f"threshold {thresholds[column]:.3f}")
        ax.set(xlabel=xlabel, ylabel="density")
        ax.legend(fontsize=8)
    fig.suptitle("nearest real training image: memorization check")
    fig.tight_layout()
    return fig
