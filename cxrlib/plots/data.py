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


def plot_phantom_against_real(phantom: np.ndarray, real: np.ndarray, n_examples: int = 6,
                              size: float = 1.6) -> plt.Figure:
    """The phantom and real radiographs side by side: ``n_examples`` images of each (rows), their
    pooled intensity histograms and their radial power spectra (texture); ``phantom`` and ``real`` are
    (N, S, S) uint8 at one size."""
    from cxrlib.data.appearance import HISTOGRAM_BINS, intensity_histogram, radial_power_spectrum, spectral_slope

    fig = plt.figure(figsize=(size * n_examples + 7.5, 2 * size + 0.6))
    grid = fig.add_gridspec(2, n_examples + 4)
    for row, (name, pixels) in enumerate((("phantom", phantom), ("real", real))):
        picks = np.linspace(0, len(pixels) - 1, n_examples).astype(int)
        for col, index in enumerate(picks):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(pixels[index], cmap="gray", vmin=0, vmax=255)
            ax.axis("off")
            if col == 0:
                ax.set_title(name, fontsize=9, loc="left")
    histogram = fig.add_subplot(grid[:, n_examples:n_examples + 2])
    spectrum = fig.add_subplot(grid[:, n_examples + 2:])
    centres = (HISTOGRAM_BINS[:-1] + HISTOGRAM_BINS[1:]) / 2
    for name, pixels, colour in (("phantom", phantom, "tab:blue"), ("real", real, "tab:orange")):
        histogram.plot(centres, intensity_histogram(pixels) * 100, color=colour, label=name)
        frequency, power = radial_power_spectrum(pixels)
        spectrum.loglog(frequency, power, color=colour,
                        label=f"{name} (slope {spectral_slope(frequency, power):.2f})")
    histogram.set(xlabel="gray level", ylabel="% of pixels", title="intensity histogram")
    spectrum.set(xlabel="cycles per image", ylabel="power", title="radial power spectrum")
    histogram.legend(fontsize=8)
    spectrum.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_identity_profiles(profiles) -> plt.Figure:
    """Each training-free cue's verification AUC with its patient-bootstrap 95 % CI, one marker per
    :class:`cxrlib.attacks.IdentityProfile` (e.g. the phantom and the real sample), chance at 0.5."""
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(profiles[0].cues) + 1.2))
    offsets = np.linspace(-0.15, 0.15, len(profiles))
    for offset, profile in zip(offsets, profiles):
        y = np.arange(len(profile.cues)) + offset
        aucs = np.array([c.auc for c in profile.cues])
        errors = np.array([[c.auc - c.ci_low for c in profile.cues], [c.ci_high - c.auc for c in profile.cues]])
        ax.errorbar(aucs, y, xerr=errors, fmt="o", capsize=3, label=profile.data)
    ax.set_yticks(np.arange(len(profiles[0].cues)), [c.label for c in profiles[0].cues])
    ax.axvline(0.5, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="verification AUC (95 % CI, bootstrap over patients)", title="what identifies a patient without training")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
