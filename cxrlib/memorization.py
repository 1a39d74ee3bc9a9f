"""Memorization: does a synthetic image lie closer to a training image than real images of unseen patients
do? Judged by every attack of the linkage panel (:mod:`cxrlib.linkage`), its worst case read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrlib.data.images import Images
from cxrlib.linkage import descriptor_attacks, network_attacks, percentile_interval
from cxrlib.metrics import patient_bootstrap_mean


#: a synthetic image is "closer than an unseen patient" when its nearest training image is more similar
#: than for this share of real images of patients never trained on
UNSEEN_QUANTILE = 0.95


@dataclass(frozen=True)
class MemorizationFigures:
    """One attack's view of memorization: how similar each synthetic image is to its most similar training
    image, against the same for real images of unseen patients."""

    attack: str
    label: str
    #: share of synthetic images more similar to a training image than UNSEEN_QUANTILE of the unseen real
    #: images are (expected 1 - UNSEEN_QUANTILE when the generator copies no more than new patients resemble)
    share_closer: float
    share_closer_ci: tuple[float, float]
    #: chance that a synthetic image lies closer to the training set than an unseen real image (0.5: as close)
    auc: float
    auc_ci: tuple[float, float]
    median_synthetic: float
    median_unseen: float


@dataclass(frozen=True)
class MemorizationPanel:
    """Every attack's memorization figures (:func:`memorization_panel`)."""

    samples: int
    training_images: int
    unseen_images: int
    quantile: float
    attacks: tuple[MemorizationFigures, ...]

    @property
    def expected_share(self) -> float:
        return 1 - self.quantile

    def worst_case(self) -> MemorizationFigures:
        """The attack under which the most synthetic images come closer to a training image than unseen
        patients do."""
        return max(self.attacks, key=lambda a: a.share_closer)

    def table(self) -> pd.DataFrame:
        worst = self.worst_case().attack
        return pd.DataFrame([{
            "attack": a.label + (" (worst case)" if a.attack == worst else ""),
            f"synthetic closer than {self.quantile:.0%} of unseen": a.share_closer,
            "95 % CI": f"{a.share_closer_ci[0]:.3f}-{a.share_closer_ci[1]:.3f}", "expected": self.expected_share,
            "AUC synthetic vs unseen": a.auc, "AUC 95 % CI": f"{a.auc_ci[0]:.3f}-{a.auc_ci[1]:.3f}"}
            for a in self.attacks]).set_index("attack")

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {"samples": self.samples, "training_images": self.training_images,
                "unseen_images": self.unseen_images, "quantile": self.quantile,
                "expected_share": self.expected_share, "attacks": [asdict(a) for a in self.attacks],
                "worst_case": self.worst_case().attack}

    @classmethod
    def from_json(cls, payload: dict) -> "MemorizationPanel":
        attacks = tuple(MemorizationFigures(**{**a, "share_closer_ci": tuple(a["share_closer_ci"]),
                                               "auc_ci": tuple(a["auc_ci"])}) for a in payload["attacks"])
        return cls(payload["samples"], payload["training_images"], payload["unseen_images"], payload["quantile"],
                   attacks)


def images_from_tensor(images: torch.Tensor, prefix: str) -> Images:
    """(N, 1, H, W) images in [0, 1] as 8-bit :class:`Images` named ``prefix0``, ``prefix1``, ..."""
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return Images(tuple(f"{prefix}{i}" for i in range(len(pixels))), pixels)


def memorization_panel(samples: Images, training: Images, unseen: Images, *, siamese=None, retrieval=None,
                       quantile: float = UNSEEN_QUANTILE, n_bootstrap: int = 200, seed: int = 0) -> MemorizationPanel:
    """Each attack's similarity of every synthetic image (``samples``) and every real image of an unseen
    patient (``unseen``) to its most similar ``training`` image; per attack the share of samples more
    similar than ``quantile`` of the unseen images, and the AUC separating the two by that similarity.

    The unseen real images are the yardstick: a new patient resembles some training patient by chance, and
    a generator that copies no more than that is not memorizing by this attack's light. Descriptors are
    z-scored over the three sets together, so they share one scale."""
    from cxrlib.metrics import verification_metrics

    queries = Images((*samples.names, *unseen.names), np.concatenate([samples.pixels, unseen.pixels]))
    attacks = [*network_attacks(queries, training, siamese=siamese, retrieval=retrieval),
               *descriptor_attacks(queries, training)]
    n = len(samples)
    is_sample = np.r_[np.ones(n), np.zeros(len(unseen))]
    figures = []
    for attack in attacks:
        similarity = attack.search(1, None)[0][:, 0].astype(np.float64)
        synthetic, real = similarity[:n], similarity[n:]
        threshold = np.quantile(real, quantile)
        closer = (synthetic > threshold).astype(float)
        share, resampled = patient_bootstrap_mean(closer, np.arange(n), n_samples=n_bootstrap, seed=seed)
        separation = verification_metrics(is_sample, similarity, n_bootstrap=n_bootstrap, seed=seed)
        figures.append(MemorizationFigures(attack.name, attack.label, share, percentile_interval(resampled),
                                           separation["auc"],
                                           tuple(separation.get("auc_ci", (math.nan, math.nan))),
                                           float(np.median(synthetic)), float(np.median(real))))
    return MemorizationPanel(n, len(training), len(unseen), quantile, tuple(figures))
