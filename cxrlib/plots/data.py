"""Figures of notebook 00: the metadata statistics of ChestX-ray14 (or any data in its layout)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from cxrlib.data import statistics


def plot_metadata_overview(meta: pd.DataFrame, title: str = "") -> plt.Figure:
    """Images per patient, follow-up span, age by sex, and label frequencies in one figure."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    per_patient = statistics.images_per_patient(meta)
    axes[0].hist(per_patient.clip(upper=30), bins=np.arange(1, 32) - 0.5, color="tab:blue")
    axes[0].set(xlabel="images per patient (30 = 30 or more)", ylabel="patients", yscale="log")
    span = statistics.followup_span_years(meta)
    axes[1].hist(span, bins=np.arange(0, max(span.max(), 1) + 2) - 0.5, color="tab:green")
    axes[1].set(xlabel="years between first and last scan", ylabel="patients (several scans)", yscale="log")
    sns.histplot(data=meta, x="age", hue="sex", element="step", bins=np.arange(0, 101, 5), ax=axes[2])
    axes[2].set(xlabel="age at scan", ylabel="images")
    freq = statistics.label_frequencies(meta).sort_values()
    axes[3].barh(freq.index, freq.to_numpy() * 100, color="tab:red")
    axes[3].set(xlabel="% of images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cooccurrence(meta: pd.DataFrame, title: str = "") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8.5, 7))
    sns.heatmap(statistics.cooccurrence(meta), vmin=0, vmax=1, cmap="viridis", square=True, ax=ax,
                cbar_kws={"label": "P(column | row)"})
    ax.set_title(title or "finding co-occurrence on one image")
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles=None, ncols: int = 6, size: float = 2.0) -> plt.Figure:
    """A grid of grayscale images (arrays in [0, 255] or [0, 1])."""
    images = list(images)
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * bool(titles)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(np.asarray(image), cmap="gray")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def plot_lung_field_comparison(real: pd.DataFrame, phantom: pd.DataFrame, comparison: pd.DataFrame) -> plt.Figure:
    """One histogram per lung-field statistic (columns of ``real`` and ``phantom``, as
    :func:`cxrlib.data.lung_fields.lung_field_statistics` names them), real against phantom, with the
    real central range of ``comparison`` shaded."""
    names = list(comparison.index)
    ncols = 5
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = pd.concat([real[name], phantom[name]])
        bins = np.linspace(values.quantile(0.005), values.quantile(0.995), 30)
        ax.hist(real[name].clip(bins[0], bins[-1]), bins=bins, density=True, alpha=0.55, label=f"real ({len(real)})")
        ax.hist(phantom[name].clip(bins[0], bins[-1]), bins=bins, density=True, alpha=0.55,
                label=f"phantom ({len(phantom)})")
        ax.axvspan(comparison.at[name, "real_low"], comparison.at[name, "real_high"], color="grey", alpha=0.12)
        ax.set(xlabel=name.replace("_", " "), yticks=[])
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Lung fields: real masks (torchxrayvision) against the phantom; grey: real central 95 %")
    fig.tight_layout()
    return fig
