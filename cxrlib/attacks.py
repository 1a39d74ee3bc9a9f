"""Linkage attacks that need no training, and the identity profile they give a data set.

A training-free attack describes each image by a fixed descriptor and links two images by the
Euclidean distance of their descriptors (smaller: more likely the same patient):

* ``raw_pixels`` -- the image as a zero-mean, unit-norm vector (distance ranks like pixel correlation);
* ``block_means_8`` -- the means of an 8 x 8 grid of blocks (what survives pixelization), z-scored;
* ``histogram`` -- 19 intensity quantiles (5 %, 10 %, ..., 95 %), z-scored;
* ``mean_sd`` -- the image's mean and standard deviation, z-scored.

Descriptors other than ``raw_pixels`` are z-scored per feature over the images at hand, so that no
feature dominates by its scale. Measured on real radiographs these simple attacks are often as strong
as a trained network (the real sample's README, ``data/chestxray14-sample/README.md``): every privacy
figure is to be read beside them.

:func:`identity_profile` is the protocol that holds the phantom against real radiographs: every
patient with at least two images, balanced same-patient and different-patient pairs that weigh every
patient the same (:func:`cxrlib.data.pairs.patient_uniform_pairs`), each attack's verification AUC
with a 95 % CI from a bootstrap over patients (:func:`cxrlib.metrics.patient_bootstrap_auc`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from cxrlib.data.images import Images
from cxrlib.data.pairs import patient_uniform_pairs
from cxrlib.metrics import patient_bootstrap_auc, percentile_ci
from cxrlib.metrics import standardized_pixels as pixel_vectors

#: the training-free attacks, in the order tables and figures show them
TRAINING_FREE_ATTACKS = {
    "raw_pixels": "raw pixels (correlation)",
    "block_means_8": "8 x 8 block means",
    "histogram": "intensity histogram (19 quantiles)",
    "mean_sd": "image mean + sd",
}

#: the histogram attack's intensity quantiles (5 %, 10 %, ..., 95 %)
HISTOGRAM_QUANTILES = np.linspace(0.05, 0.95, 19)


def zscored(features: np.ndarray) -> np.ndarray:
    return (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-8)


def block_means(pixels: np.ndarray, grid: int) -> np.ndarray:
    """(N, grid * grid) means of a ``grid`` x ``grid`` partition of each (S, S) image (S a multiple of
    ``grid``; otherwise the image is area-resized to the grid, which is the same for whole blocks)."""
    tensor = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1)
    return torch.nn.functional.adaptive_avg_pool2d(tensor, grid).flatten(1).numpy()


def attack_features(images: Images, kind: str) -> np.ndarray:
    """(N, D) descriptors of one training-free attack (rows follow ``images.names``)."""
    if kind == "raw_pixels":
        return pixel_vectors(torch.from_numpy(images.pixels)).numpy()
    pixels = images.pixels
    x = pixels.reshape(len(images), -1).astype(np.float32)
    if kind == "mean_sd":
        features = np.stack([x.mean(axis=1), x.std(axis=1)], axis=1)
    elif kind == "histogram":
        features = np.quantile(x, HISTOGRAM_QUANTILES, axis=1).T
    elif kind == "block_means_8":
        features = block_means(pixels, 8)
    else:
        raise ValueError(f"unknown attack {kind!r}; choose one of {', '.join(TRAINING_FREE_ATTACKS)}")
    return zscored(features)


def distance_pair_scores(features, images: Images, pairs: pd.DataFrame) -> np.ndarray:
    """Verification scores from descriptors (rows of ``features`` follow ``images.names``): minus the
    Euclidean distance between the two images' descriptors."""
    features = np.asarray(features, dtype=np.float32)
    first, second = images.rows(pairs["img1"].tolist()), images.rows(pairs["img2"].tolist())
    return -np.linalg.norm(features[first] - features[second], axis=1)


def attack_pair_scores(images: Images, pairs: pd.DataFrame, kind: str) -> np.ndarray:
    """Verification scores of a training-free attack: minus the descriptors' Euclidean distance."""
    return distance_pair_scores(attack_features(images, kind), images, pairs)


@dataclass(frozen=True)
class CueAUC:
    """One attack's verification AUC on a set of pairs, with its patient-bootstrap 95 % CI."""

    attack: str
    label: str
    auc: float
    ci_low: float
    ci_high: float

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


@dataclass(frozen=True)
class IdentityProfile:
    """What identifies a patient without training, on one data set (:func:`identity_profile`)."""

    data: str
    patients: int
    images: int
    same_patient_pairs: int
    different_patient_pairs: int
    n_bootstrap: int
    seed: int
    cues: tuple[CueAUC, ...]

    def cue(self, attack: str) -> CueAUC:
        for cue in self.cues:
            if cue.attack == attack:
                return cue
        raise KeyError(f"no cue {attack!r} in this profile; it has {', '.join(c.attack for c in self.cues)}")

    def inside(self, reference: "IdentityProfile") -> dict[str, bool]:
        """Per cue: does this profile's AUC lie within ``reference``'s 95 % CI (e.g. the phantom's
        within the real sample's)?"""
        return {c.attack: reference.cue(c.attack).contains(c.auc) for c in self.cues}

    def table(self) -> pd.DataFrame:
        """One row per cue: AUC and its CI."""
        return pd.DataFrame([{"cue": c.label, "AUC": c.auc, "95 % CI": f"{c.ci_low:.3f}-{c.ci_high:.3f}"}
                             for c in self.cues]).set_index("cue")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict) -> "IdentityProfile":
        return cls(**{**payload, "cues": tuple(CueAUC(**c) for c in payload["cues"])})


def identity_profile(images: Images, meta: pd.DataFrame, *, data: str, pairs_per_class: int = 3000,
                     n_bootstrap: int = 1000, seed: int = 0) -> IdentityProfile:
    """Each training-free attack's verification AUC over the patients of ``meta`` with two or more images.

    ``meta`` has ``image`` and ``patient_id`` columns (images of ``images``); ``pairs_per_class``
    same-patient and as many different-patient pairs are drawn with :func:`patient_uniform_pairs`. The
    CI resamples patients, not pairs: pairs of one patient are not independent (:func:`cxrlib.metrics.patient_bootstrap_auc`).
    """
    counts = meta.groupby("patient_id")["image"].transform("size")
    meta = meta.loc[counts >= 2, ["image", "patient_id"]]
    if meta["patient_id"].nunique() < 2:
        raise ValueError(f"{data}: the identity profile needs at least two patients with two or more images")
    pairs = patient_uniform_pairs(meta, pairs_per_class, seed)
    patient_of = dict(zip(meta["image"], meta["patient_id"]))
    first = pairs["img1"].map(patient_of).to_numpy()
    second = pairs["img2"].map(patient_of).to_numpy()
    subset = _subset(images, meta["image"].tolist())
    labels = pairs["label"].to_numpy()
    cues = []
    for kind, label in TRAINING_FREE_ATTACKS.items():
        scores = attack_pair_scores(subset, pairs, kind)
        auc, resampled = patient_bootstrap_auc(labels, scores, first, second, n_samples=n_bootstrap, seed=seed)
        low, high = percentile_ci(resampled) if n_bootstrap else (float("nan"), float("nan"))
        cues.append(CueAUC(kind, label, auc, low, high))
    return IdentityProfile(data=data, patients=int(meta["patient_id"].nunique()), images=len(meta),
                           same_patient_pairs=int(labels.sum()), different_patient_pairs=int((1 - labels).sum()),
                           n_bootstrap=n_bootstrap, seed=seed, cues=tuple(cues))


def _subset(images: Images, names: list[str]) -> Images:
    """The images ``names`` of ``images`` (descriptors are z-scored over the images they are given)."""
    return Images(names, images.uint8(images.rows(names)))
