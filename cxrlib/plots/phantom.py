"""Figures of notebook 00's phantom section: patients across follow-ups, the 14 findings, and the
phantom's metadata beside the real release's."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxrlib.data import statistics
from cxrlib.data.chestxray14 import ImageLocator, find_metadata_file, load_image, read_metadata


def plot_patient_gallery(data_dir: str | Path, n_patients: int = 4, n_followups: int = 5,
                         size: float = 1.9) -> plt.Figure:
    """One row per patient (those with the most scans), its first ``n_followups`` scans side by side:
    the same anatomy under a new pose, exposure and annotation each time."""
    meta = read_metadata(find_metadata_file(data_dir))
    counts = meta.groupby("patient_id").size().sort_values(ascending=False, kind="stable")
    patients = counts.index[:n_patients]
    if len(patients) == 0:
        raise ValueError(f"{data_dir}: no patients to show")
    locate = ImageLocator(data_dir)
    fig, axes = plt.subplots(len(patients), n_followups, figsize=(size * n_followups, (size + 0.35) * len(patients)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, patient in enumerate(patients):
        scans = meta[meta["patient_id"] == patient].sort_values("follow_up").head(n_followups)
        for col, scan in enumerate(scans.itertuples()):
            ax = axes[row, col]
            ax.imshow(load_image(locate(scan.image)), cmap="gray", vmin=0, vmax=255)
            findings = scan.finding_labels.replace("|", ", ").replace("_", " ")
            ax.set_title(f"patient {patient}, {scan.age} y {scan.view}\n{findings}", fontsize=7)
    fig.tight_layout()
    return fig


def plot_finding_examples(no_finding: np.ndarray, examples: dict[str, np.ndarray], ncols: int = 5,
                          size: float = 2.2) -> plt.Figure:
    """The output of :func:`cxrlib.data.phantom.finding_examples`: one scan without findings, then the
    same scan with each finding alone."""
    images = {"No Finding": no_finding, **examples}
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.2) * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image) in zip(axes.flat, images.items()):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(label.replace("_", " "), fontsize=9)
    fig.tight_layout()
    return fig


def plot_metadata_comparison(phantom_meta: pd.DataFrame, real_meta: pd.DataFrame) -> plt.Figure:
    """Phantom beside ChestX-ray14: label frequencies, images per patient (the real counts capped at
    the phantom's maximum), age, and the shares of women and AP views."""
    sources = {"phantom": phantom_meta, "ChestX-ray14": real_meta}
    colors = {"phantom": "tab:orange", "ChestX-ray14": "tab:blue"}
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2, 0.8]})

    freq = pd.DataFrame({k: statistics.label_frequencies(m) * 100 for k, m in sources.items()})
    freq = freq.sort_values("ChestX-ray14")
    y = np.arange(len(freq))
    for offset, (name, column) in zip((-0.2, 0.2), freq.items()):
        axes[0].barh(y + offset, column, height=0.4, label=name, color=colors[name])
    axes[0].set(yticks=y, yticklabels=[i.replace("_", " ") for i in freq.index], xlabel="% of images",
                title="findings")
    axes[0].legend(loc="lower right")

    cap = int(statistics.images_per_patient(phantom_meta).max())
    bins = np.arange(1, cap + 2) - 0.5
    for name, meta in sources.items():
        per_patient = statistics.images_per_patient(meta).clip(upper=cap)
        axes[1].hist(per_patient, bins=bins, density=True, histtype="step", linewidth=2, label=name,
                     color=colors[name])
    axes[1].set(xlabel=f"images per patient ({cap} = {cap} or more)", ylabel="share of patients",
                title="follow-ups")

    for name, meta in sources.items():
        axes[2].hist(meta["age"], bins=np.arange(0, 101, 5), density=True, histtype="step", linewidth=2,
                     label=name, color=colors[name])
    axes[2].set(xlabel="age at scan", ylabel="density", title="age")

    shares = pd.DataFrame({name: {"female": (m["sex"] == "F").mean() * 100, "AP view": (m["view"] == "AP").mean() * 100}
                           for name, m in sources.items()})
    x = np.arange(len(shares))
    for offset, (name, column) in zip((-0.2, 0.2), shares.items()):
        axes[3].bar(x + offset, column, width=0.4, color=colors[name], label=name)
    axes[3].set(xticks=x, xticklabels=shares.index, ylabel="% of images", title="sex and view")
    fig.tight_layout()
    return fig
