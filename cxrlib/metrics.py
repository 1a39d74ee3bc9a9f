"""Every number the papers report: verification, retrieval, multi-label AUC, image fidelity, bootstrap CIs,
and the quality of a synthetic image set (Fréchet distance in a classifier's features, MS-SSIM diversity).

Computed with the libraries that define them (scikit-learn, pytorch-metric-learning, torchmetrics);
inputs may be NumPy arrays or tensors. Results are plain Python floats and lists, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance

from cxrlib.data.chestxray14 import LABELS, NO_FINDING
from cxrlib.runtime import default_device


#: the metric names of pytorch-metric-learning's AccuracyCalculator and ours
_RETRIEVAL_METRICS = {"mean_average_precision_at_r": "map_at_r", "r_precision": "r_precision",
                      "precision_at_1": "precision_at_1"}


def _numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _binary(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = _numpy(y_true, "y_true").astype(int).ravel()
    y_score = _numpy(y_score, "y_score").astype(float).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_score has {y_score.size}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    return y_true, y_score


def bootstrap_mean_aucs(y_true, scores: Sequence, n_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """ROC AUC on ``n_samples`` bootstrap resamples of the rows, for several score sets on the same
    resamples (paired): an ``(n_samples, len(scores))`` array.

    ``y_true`` is (N,) or (N, C) binary; each of ``scores`` has its shape. With C columns the value is
    the mean of the per-column AUCs defined on the resample (both labels present). A resample on
    which no column is defined is drawn again. Each AUC is the Mann-Whitney statistic with ties
    counted half, equal to :func:`sklearn.metrics.roc_auc_score` on the resampled rows, computed from
    the resample's row counts for all resamples at once instead of one sklearn call per resample and
    column (1,000 resamples of 1,137 images and 14 findings: well under a second instead of a minute).
    """
    y_true = np.asarray(y_true)
    scores = [np.asarray(s, dtype=float) for s in scores]
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if any(s.shape != y_true.shape for s in scores):
        raise ValueError(f"every score array must have the labels' shape {y_true.shape}")
    y = y_true.reshape(len(y_true), -1).astype(bool)
    columns = [s.reshape(len(s), -1) for s in scores]
    rng = np.random.default_rng(seed)
    # resamples in blocks of about 5e6 row counts (a few float arrays of that size while one block is
    # scored), so that ChestX-ray14's 25,596 test images take hundreds of MB, not GB
    block = max(1, 5_000_000 // max(1, len(y)))
    values, kept, attempts = [], 0, 0
    while kept < n_samples:
        wanted = min(block, n_samples - kept)
        attempts += wanted
        if attempts > 10 * n_samples + 100:
            raise ValueError("the AUC is undefined on almost every bootstrap resample (too few samples of some class?)")
        index = rng.integers(0, len(y), (wanted, len(y)))
        aucs = [np.stack([resampled_auc(y[:, k], s[:, k], index) for k in range(y.shape[1])], axis=1)
                for s in columns]
        defined = ~np.isnan(aucs[0])  # where both labels occur: the same for every score set
        keep = defined.any(axis=1)
        values.append(np.stack([np.nanmean(a[keep], axis=1) for a in aucs], axis=1))
        kept += int(keep.sum())
    return np.concatenate(values)


def resampled_auc(y_true: np.ndarray, y_score: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``roc_auc_score(y_true[i], y_score[i])`` for every row ``i`` of ``index`` (B, N) at once; NaN
    where the resample holds one label only."""
    counts = np.zeros((len(index), len(y_true)))
    np.add.at(counts, (np.arange(len(index))[:, None], index), 1.0)
    return weighted_auc(y_true, y_score, counts)


def weighted_auc(y_true: np.ndarray, y_score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The ROC AUC with row ``i`` counted ``counts[b, i]`` times, for every row ``b`` of ``counts`` (B, N);
    NaN where the weighted rows hold one label only."""
    y_true = np.asarray(y_true).astype(bool)
    n = len(y_true)
    order = np.argsort(y_score, kind="stable")
    ranked, positive = np.asarray(y_score)[order], y_true[order]
    weights = counts[:, order]
    negatives = np.where(positive, 0.0, weights)
    below = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(negatives, axis=1)], axis=1)
    # each positive beats the negatives of lower scores and ties (half) those of its own score
    first = np.r_[True, ranked[1:] != ranked[:-1]]
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    ends = np.r_[starts[1:], n]
    at = np.flatnonzero(positive)
    lower, through = below[:, starts[group[at]]], below[:, ends[group[at]]]
    wins = (weights[:, at] * (lower + 0.5 * (through - lower))).sum(axis=1)
    pairs = weights[:, at].sum(axis=1) * below[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def patient_bootstrap_auc(y_true, y_score, first_patient, second_patient, *, n_samples: int = 1000,
                          seed: int = 0) -> tuple[float, np.ndarray]:
    """Verification AUC of pairs, and its value on ``n_samples`` bootstrap resamples of the patients.

    Pairs of one patient are not independent, so the resample draws patients with replacement: a
    pair of patients ``a`` and ``b`` (the same for a same-patient pair) counts ``m_a * m_b`` times, or
    ``m_a`` times when ``a == b``, where ``m`` is how often the resample drew each patient. Returns
    ``(auc, resampled)``; resamples on which the AUC is undefined are left out.
    """
    y_true, y_score = _binary(y_true, y_score)
    first, second = np.asarray(first_patient), np.asarray(second_patient)
    if first.shape != y_true.shape or second.shape != y_true.shape:
        raise ValueError("every pair needs its two patients")
    auc = float(skm.roc_auc_score(y_true, y_score))
    if n_samples < 1:
        return auc, np.empty(0)
    patients, codes = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = codes[: len(first)], codes[len(first):]
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_samples, 100):  # blocks keep the (B, pairs) weights small
        draws = rng.integers(0, len(patients), (min(100, n_samples - start), len(patients)))
        multiplicity = np.zeros((len(draws), len(patients)))
        np.add.at(multiplicity, (np.arange(len(draws))[:, None], draws), 1.0)
        weights = np.where(a == b, multiplicity[:, a], multiplicity[:, a] * multiplicity[:, b])
        values.append(weighted_auc(y_true, y_score, weights))
    resampled = np.concatenate(values)
    return auc, resampled[~np.isnan(resampled)]


def _patient_multiplicities(patients, n_samples: int, seed: int, block: int = 100):
    """The patients' codes (N,) and, in blocks of at most ``block`` resamples, how often each of them
    was drawn when as many patients are drawn with replacement: ``(codes, iterator of (B, P) arrays)``."""
    unique, codes = np.unique(np.asarray(patients), return_inverse=True)
    rng = np.random.default_rng(seed)

    def blocks():
        for start in range(0, n_samples, block):
            draws = rng.integers(0, len(unique), (min(block, n_samples - start), len(unique)))
            multiplicity = np.zeros((len(draws), len(unique)))
            np.add.at(multiplicity, (np.arange(len(draws))[:, None], draws), 1.0)
            yield multiplicity

    return codes.reshape(-1), blocks()


def patient_bootstrap_mean_auc(y_true, y_score, patients, *, n_samples: int = 1000,
                               seed: int = 0) -> tuple[float, np.ndarray]:
    """Mean AUC over the columns of image-wise labels (N, C) -- the columns with both labels, as
    :func:`multilabel_auc` averages them -- and its value on ``n_samples`` resamples of the patients.

    The image-wise sibling of :func:`patient_bootstrap_auc`: the images of one patient are not
    independent, so a resample draws patients with replacement and counts each image as often as its
    patient (``patients``, (N,)) was drawn; on each resample the mean is over the columns defined there.
    Returns ``(mean_auc, resampled)``; resamples on which no column is defined are left out.
    """
    y_true = _numpy(y_true, "y_true").astype(int)
    y_score = _numpy(y_score, "y_score").astype(float)
    y = y_true.reshape(len(y_true), -1)
    s = y_score.reshape(len(y_score), -1)
    if y.shape != s.shape or len(np.asarray(patients)) != len(y):
        raise ValueError(f"y_true {y_true.shape}, y_score {y_score.shape} and {len(np.asarray(patients))} "
                         "patients must describe the same images")
    aucs = _per_class_auc(y, s)
    if np.isnan(aucs).all():
        raise ValueError("no column has both positive and negative labels: AUC is undefined")
    if n_samples < 1:
        return float(np.nanmean(aucs)), np.empty(0)
    codes, blocks = _patient_multiplicities(patients, n_samples, seed)
    values = []
    for multiplicity in blocks:
        weights = multiplicity[:, codes]
        per_column = np.stack([weighted_auc(y[:, k], s[:, k], weights) for k in range(y.shape[1])], axis=1)
        defined = ~np.isnan(per_column).all(axis=1)
        values.append(np.nanmean(per_column[defined], axis=1))
    return float(np.nanmean(aucs)), np.concatenate(values)


def patient_bootstrap_mean(values, patients, *, n_samples: int = 1000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The mean of per-row ``values`` (e.g. each retrieval query's precision at 1) and its value on
    ``n_samples`` resamples of the patients, each row counted as often as its patient was drawn.
    Returns ``(mean, resampled)``."""
    values = _numpy(values, "values").astype(float).reshape(-1)
    if len(np.asarray(patients)) != len(values):
        raise ValueError(f"{len(values)} values but {len(np.asarray(patients))} patients")
    if n_samples < 1:
        return float(values.mean()), np.empty(0)
    codes, blocks = _patient_multiplicities(patients, n_samples, seed)
    resampled = [(multiplicity[:, codes] @ values) / multiplicity[:, codes].sum(axis=1) for multiplicity in blocks]
    return float(values.mean()), np.concatenate(resampled)


def percentile_ci(values, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding ``level`` of ``values`` (a bootstrap CI)."""
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def roc_points(y_true, y_score) -> dict[str, list[float]]:
    """The ROC curve as false/true positive rates."""
    y_true, y_score = _binary(y_true, y_score)
    fpr, tpr, _ = skm.roc_curve(y_true, y_score)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def verification_metrics(y_true, y_score, *, threshold: float = 0.5, n_bootstrap: int = 1000,
                         seed: int = 0) -> dict:
    """AUC with bootstrap 95 % CI, accuracy/F1/precision/recall at ``threshold``, the ROC curve.

    ``y_score`` is the probability that a pair shows the same patient (label 1).
    """
    y_true, y_score = _binary(y_true, y_score)
    if len(np.unique(y_true)) < 2:
        raise ValueError("verification metrics need both same-patient and different-patient pairs")
    predicted = (y_score >= threshold).astype(int)
    result = {
        "auc": float(skm.roc_auc_score(y_true, y_score)),
        "accuracy": float(skm.accuracy_score(y_true, predicted)),
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "threshold": threshold,
        "n_pairs": int(len(y_true)),
        "roc": roc_points(y_true, y_score),
    }
    if n_bootstrap:
        result["auc_ci"] = list(percentile_ci(bootstrap_mean_aucs(y_true, [y_score], n_bootstrap, seed)[:, 0]))
    return result


def multilabel_auc(y_true, y_score, labels: Sequence[str] | None = None, n_bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    """Per-class ROC AUC, their mean, and a bootstrap 95 % CI of the mean (resampling images).

    A class whose test labels are all 0 (or all 1) has no AUC: it is reported as NaN and left out of
    the mean, and ``excluded`` names it.
    """
    y_true = _numpy(y_true, "y_true").astype(int)
    y_score = _numpy(y_score, "y_score").astype(float)
    labels = list(labels or LABELS)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(labels):
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be "
                         f"(N, {len(labels)}), one column per label")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    per_class = _per_class_auc(y_true, y_score)
    defined = ~np.isnan(per_class)
    if not defined.any():
        raise ValueError("no class has both positive and negative test labels: AUC is undefined")
    result = {
        "per_class": {label: float(auc) for label, auc in zip(labels, per_class)},
        "mean_auc": float(per_class[defined].mean()),
        "excluded": [label for label, ok in zip(labels, defined) if not ok],
    }
    if n_bootstrap:
        result["ci"] = list(percentile_ci(bootstrap_mean_aucs(y_true, [y_score], n_bootstrap, seed)[:, 0]))
    return result


def _per_class_auc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    aucs = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if 0 < y_true[:, k].sum() < len(y_true):
            aucs[k] = skm.roc_auc_score(y_true[:, k], y_score[:, k])
    return aucs


def nearest_neighbours(queries, gallery=None, k: int = 1, *,
                       own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The project's one k-NN: exact Euclidean search (faiss ``IndexFlatL2``), nearest first.

    ``gallery`` None searches the queries among themselves and leaves each query's own row out. ``own``
    (one gallery index per query, or -1) leaves that row out instead: the query's source image, when
    the queries are anonymized versions of the gallery's images. Rows are left out by index, not by
    being nearest, so an exact duplicate of a query still counts as a neighbour. ``k`` is capped at the
    gallery's size (less the row left out). Returns (distances, indices), both (Q, k).
    """
    import faiss

    queries = np.ascontiguousarray(_numpy(queries, "queries"), dtype=np.float32)
    if gallery is None:
        gallery, own = queries, np.arange(len(queries))
    gallery = np.ascontiguousarray(_numpy(gallery, "gallery"), dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be (N, D) with one D")
    leave_out = own is not None
    k = min(k, len(gallery) - leave_out)
    if k < 1:
        raise ValueError(f"need k >= 1 and a gallery with another row, got k = {k} and {len(gallery)} rows")
    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(gallery)
    squared, indices = index.search(queries, k + leave_out)
    distances = np.sqrt(np.maximum(squared, 0))
    if leave_out:
        excluded = indices == np.asarray(own)[:, None]
        # the rows left out move to the end, the others keep their order
        order = np.argsort(excluded, axis=1, kind="stable")[:, :k]
        distances, indices = np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)
    return distances, indices


class _NearestNeighboursKNN:
    """:func:`nearest_neighbours` as pytorch-metric-learning's ``knn_func``, so its accuracy calculator
    ranks with the project's one k-NN."""

    def __call__(self, query, k, reference, ref_includes_query=False):
        own = np.arange(len(query)) if ref_includes_query else None
        distances, indices = nearest_neighbours(query, reference, k, own=own)
        return torch.from_numpy(distances), torch.from_numpy(indices)


def retrieval_metrics(embeddings, labels, *, normalize: bool = True) -> dict[str, float]:
    """mAP@R, R-precision and precision@1, querying every embedding against all the others.

    ``labels`` are identities (patient ids); queries whose identity occurs once are skipped, as in
    pytorch-metric-learning. Neighbours by Euclidean distance (:func:`nearest_neighbours`) between
    L2-normalized embeddings unless ``normalize`` is False (descriptors whose length carries
    information, such as an image's mean and standard deviation).
    """
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    embeddings = torch.as_tensor(_numpy(embeddings, "embeddings"), dtype=torch.float32)
    labels = torch.as_tensor(_numpy(labels, "labels").astype(np.int64))
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {tuple(embeddings.shape)} must be (N, D) with N = {len(labels)} labels")
    if len(torch.unique(labels)) == len(labels):
        raise ValueError("every identity occurs once: retrieval needs several images per patient")
    if normalize:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    calculator = AccuracyCalculator(include=tuple(_RETRIEVAL_METRICS), k="max_bin_count",
                                    device=torch.device("cpu"), knn_func=_NearestNeighboursKNN())
    accuracy = calculator.get_accuracy(embeddings, labels)
    return {ours: float(accuracy[theirs]) for theirs, ours in _RETRIEVAL_METRICS.items()}


def fidelity(original: torch.Tensor, processed: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """How closely ``processed`` images keep their ``original`` (both (N, C, H, W) in [0, 1], the same order):
    the project's one SSIM and PSNR, for anonymized images, releases and autoencoder reconstructions alike.

    ``ssim``: the mean over images; ``psnr`` (dB): of the whole set, from the mean squared error over all of
    its pixels, so that images left exactly unchanged (a release where only some images lost burned-in
    text, rounding to 8 bits) neither make it infinite nor drop out; None when no pixel changed at all.
    ``changed_images``: how many images differ in any pixel. Computed in batches (torchmetrics).
    """
    if original.shape != processed.shape or original.ndim != 4:
        raise ValueError(f"original {tuple(original.shape)} and processed {tuple(processed.shape)} "
                         "must both be (N, C, H, W)")
    ssim, psnr, changed = StructuralSimilarityIndexMeasure(data_range=1.0), PeakSignalNoiseRatio(data_range=1.0), 0
    for start in range(0, len(original), batch_size):
        x, y = original[start:start + batch_size].float(), processed[start:start + batch_size].float()
        ssim.update(y, x)
        psnr.update(y, x)
        changed += int((x != y).flatten(1).any(dim=1).sum())
    value = float(psnr.compute())
    return {"ssim": float(ssim.compute()), "psnr": value if math.isfinite(value) and changed else None,
            "changed_images": changed}


def quantiles(values, levels: Sequence[float] = (0.05, 0.5, 0.95)) -> dict[str, float]:
    """``{"q5": ..., "q50": ..., "q95": ...}`` for the default ``levels``."""
    values = _numpy(values, "values")
    return {f"q{round(q * 100)}": float(np.quantile(values, q)) for q in levels}


def standardized_pixels(images: torch.Tensor) -> torch.Tensor:
    """Each image (N, ...) a zero-mean, unit-norm float vector (N, D): dot products are pixel
    correlations, blind to brightness and contrast."""
    flat = images.flatten(1).float()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


# -- quality and diversity of a synthetic image set --------------------------------------------------

#: the five scale weights of MS-SSIM (Wang et al. 2003)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(image_size: int, kernel_size: int = 11) -> int:
    """How many MS-SSIM scales an image supports: each halves it, and the coarsest must still be
    larger than the Gaussian window (5 at 256 px, 3 at 64 px, 2 at 32 px)."""
    scales = 1
    while scales < len(MS_SSIM_BETAS) and image_size > (kernel_size - 1) * 2 ** scales:
        scales += 1
    return scales


def mean_pairwise_ms_ssim(images: torch.Tensor) -> float:
    """Mean MS-SSIM over all pairs of ``images`` (N >= 2, (N, 1, S, S) in [0, 1]): lower is more
    diverse. Uses as many scales as the image size allows, their standard weights renormalized."""
    if len(images) < 2:
        raise ValueError(f"pairwise MS-SSIM needs at least 2 images, got {len(images)}")
    first, second = torch.triu_indices(len(images), len(images), offset=1)
    betas = MS_SSIM_BETAS[:ms_ssim_scales(images.shape[-1])]
    betas = tuple(b / sum(betas) for b in betas)
    values = multiscale_structural_similarity_index_measure(
        images[first].float(), images[second].float(), data_range=1.0, betas=betas,
        reduction="none", normalize="relu")
    return float(values.mean())


def diversity_by_class(images: torch.Tensor, classes: np.ndarray, *, per_class: int | None = None,
                       seed: int = 0) -> dict[str, float]:
    """Mean pairwise MS-SSIM within each class (classes with fewer than 2 images are skipped);
    ``per_class`` caps the images used per class (a seeded subset)."""
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    out = {}
    for name in [NO_FINDING, *LABELS]:
        rows = np.flatnonzero(classes == name)
        if per_class is not None and len(rows) > per_class:
            rows = np.sort(rng.choice(rows, per_class, replace=False))
        if len(rows) >= 2:
            out[name] = mean_pairwise_ms_ssim(images[torch.from_numpy(rows)])
    return out


class PenultimateFeatures(nn.Module):
    """A classifier's penultimate features: the input of its last linear layer, taken with a hook,
    so it works for any backbone that ends in ``nn.Linear``. ``num_features`` tells torchmetrics the
    width."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(classifier).__name__} has no linear layer to take features before")
        self.classifier = classifier.eval()
        self.last_linear = linears[-1]
        self.num_features = self.last_linear.in_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        captured = []
        # hooked only for this call, so the classifier stays untouched for everyone else
        hook = self.last_linear.register_forward_hook(
            lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.classifier(images)
        finally:
            hook.remove()
        return captured[0].flatten(1)


@torch.no_grad()
def frechet_distance(real: torch.Tensor, generated: torch.Tensor, features: nn.Module, *,
                     batch_size: int = 128, device: torch.device | None = None) -> float:
    """Fréchet distance between two image sets (N, 1, S, S) in a feature space (e.g.
    :class:`PenultimateFeatures` of the real-data classifier; Inception needs weights we lack)."""
    device = device or default_device()
    metric = FrechetInceptionDistance(feature=features.to(device)).to(device)
    for images, is_real in ((real, True), (generated, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start:start + batch_size].to(device), real=is_real)
    return float(metric.compute())

