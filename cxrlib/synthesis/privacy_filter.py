"""The privacy-enhancing sampler's test: is a generated image linked to a real training image?

A :class:`PrivacyFilter` owns the real training images (its gallery), the two re-identification models
that embedded them, how many nearest images it checks and its thresholds, so a check can never be run
with other models than those that built the gallery. It rejects an image when the siamese network
links it to one of its nearest real images (found by the retrieval embedding; the paper's rule), or
when an aligned pixel correlation finds a near-copy, which the siamese network cannot see. Both
thresholds are calibrated on real images of patients not in the gallery (the validation split) at a
chosen share of wrongly rejected images (:meth:`PrivacyFilter.calibrated`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrlib.metrics import standardized_pixels
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.runtime import default_device, map_batches

Embedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ReidFeatures:
    """What the re-identification models see in images: the retrieval embedding (L2-normalized, so
    nearest means highest cosine similarity) and the siamese network's features."""

    retrieval: torch.Tensor
    siamese: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor, retrieval: Embedder, siamese: SiameseNetwork, *,
           batch_size: int = 128, device: torch.device | None = None) -> "ReidFeatures":
        device = device or default_device()
        for model in (retrieval, siamese):
            if isinstance(model, nn.Module):
                model.eval().to(device)
        return cls(F.normalize(map_batches(retrieval, images, batch_size=batch_size, device=device), dim=1),
                   map_batches(siamese.embed, images, batch_size=batch_size, device=device))


#: the near-duplicate test compares images at most this large (area-downsampled), aligning them over
#: shifts of up to ``MAX_SHIFT`` pixels at that size, each axis
PIXEL_SIZE, MAX_SHIFT = 64, 2


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    return images if images.shape[-1] <= size else F.interpolate(images, size=size, mode="area")


@torch.no_grad()
def aligned_correlation(images: torch.Tensor, gallery_images: torch.Tensor, *, batch_size: int = 256,
                        chunk_size: int = 4096, device: torch.device | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the highest pixel correlation with any gallery image over shifts of up to
    ``MAX_SHIFT`` pixels (overlapping windows only), and which gallery image gives it: a
    near-duplicate detector that needs no model. Exhaustive over the gallery, since every chest
    radiograph looks alike at the coarse sizes a shortlist would use.

    Images are taken ``chunk_size`` at a time (their correlations with the whole gallery are held
    at once), and within a chunk shift by shift, so that each shift's gallery windows are
    standardized once per chunk rather than once per batch of ``batch_size`` (which was two thirds
    of the time); the products are the same batch-by-gallery matrices either way."""
    device = device or default_device()
    gallery = _resized(gallery_images, PIXEL_SIZE).to(device)
    size = gallery.shape[-1]

    def window(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return x[..., max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)]

    best, best_index = [], []
    for chunk_start in range(0, len(images), chunk_size):
        chunk = _resized(images[chunk_start:chunk_start + chunk_size], PIXEL_SIZE).to(device)
        correlation = torch.full((len(chunk), len(gallery)), -1.0, device=device)
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                theirs = standardized_pixels(window(gallery, -dy, -dx)).T
                for start in range(0, len(chunk), batch_size):
                    rows = correlation[start:start + batch_size]
                    mine = standardized_pixels(window(chunk[start:start + batch_size], dy, dx))
                    torch.maximum(rows, mine @ theirs, out=rows)
        values, index = correlation.max(dim=1)
        best.append(values.cpu())
        best_index.append(index.cpu())
    return torch.cat(best).numpy(), torch.cat(best_index).numpy()


@dataclass
class NearestReal:
    """Per image: the highest siamese score against its nearest real images (by retrieval embedding)
    and which real image (gallery index) gave it; the highest aligned pixel correlation with any real
    image and which one."""

    scores: np.ndarray
    score_matches: np.ndarray
    correlations: np.ndarray
    correlation_matches: np.ndarray


@dataclass(frozen=True)
class Thresholds:
    """The sampler's rejection thresholds: ``siamese`` on the highest same-patient probability
    against the nearest real images, ``pixels`` on the highest aligned pixel correlation. Together
    they wrongly reject at most a share ``fpr`` of real images of unseen patients."""

    siamese: float
    pixels: float
    fpr: float


@dataclass
class FilterResult(NearestReal):
    """:class:`NearestReal` and which test rejected each candidate."""

    by_siamese: np.ndarray
    by_pixels: np.ndarray

    @property
    def rejected(self) -> np.ndarray:
        return self.by_siamese | self.by_pixels

    @property
    def culprits(self) -> np.ndarray:
        """The real image each rejected candidate was linked to: its pixel match when it is a
        near-duplicate (the copy's source), else its highest-scoring siamese match."""
        return np.where(self.by_pixels, self.correlation_matches, self.score_matches)

    @property
    def reasons(self) -> np.ndarray:
        return np.select([self.by_siamese & self.by_pixels, self.by_siamese, self.by_pixels],
                         ["both", "siamese", "near-duplicate"], "")

    def rates(self) -> dict[str, float]:
        """The share of candidates each test rejected, and the filter as a whole."""
        return {"siamese test": float(self.by_siamese.mean()),
                "near-duplicate test": float(self.by_pixels.mean()),
                "rejected": float(self.rejected.mean())}


class PrivacyFilter:
    """The real training images a generated image must not resemble, embedded once by the two
    re-identification models kept with them, and the thresholds of the two tests.

    ``thresholds`` None builds an uncalibrated filter: it can measure (:meth:`nearest_real`) but not
    :meth:`check` until :meth:`calibrated` gives it thresholds.
    """

    def __init__(self, images: torch.Tensor, names: Sequence[str], retrieval: Embedder,
                 siamese: SiameseNetwork, *, neighbours: int, thresholds: Thresholds | None = None,
                 device: torch.device | None = None):
        if len(images) != len(names) or len(images) == 0:
            raise ValueError(f"gallery needs one name per image and at least one image; got "
                             f"{len(images)} images and {len(names)} names")
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self.images, self.names = images, list(names)
        self.retrieval, self.siamese = retrieval, siamese
        self.neighbours, self.thresholds = neighbours, thresholds
        self.device = device or default_device()
        self.features = ReidFeatures.of(images, retrieval, siamese, device=self.device)

    def __len__(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def nearest_real(self, images: torch.Tensor) -> NearestReal:
        """How close ``images`` (N, 1, S, S) in [0, 1] come to the gallery.

        The retrieval embedding shortlists each image's ``neighbours`` nearest real images; the siamese
        network scores each of those pairs (both networks embed every image once; pairs only meet in
        the siamese network's last layer). Independently, :func:`aligned_correlation` finds its
        closest real image in pixels.
        """
        device = self.device
        k = min(self.neighbours, len(self.images))
        found = ReidFeatures.of(images, self.retrieval, self.siamese, device=device)
        nearest = (found.retrieval @ self.features.retrieval.T).topk(k, dim=1).indices  # (N, k)
        first = found.siamese.repeat_interleave(k, dim=0).to(device)
        second = self.features.siamese[nearest.reshape(-1)].to(device)
        scores = torch.sigmoid(self.siamese.compare(first, second).float()).cpu().reshape(-1, k)
        best = scores.argmax(dim=1, keepdim=True)
        correlations, correlation_matches = aligned_correlation(images, self.images, device=device)
        return NearestReal(scores=scores.gather(1, best).squeeze(1).numpy(),
                           score_matches=nearest.gather(1, best).squeeze(1).numpy(),
                           correlations=correlations, correlation_matches=correlation_matches)

    def calibrated(self, real_images: torch.Tensor, *, fpr: float) -> "PrivacyFilter":
        """This filter with thresholds from real images of patients *not* in the gallery.

        Each such image paired with its nearest gallery images is a real different-patient pair, and
        exactly the kind the sampler tests: calibrating on random pairs instead would put the
        threshold below what the nearest of hundreds of strangers reaches, and the sampler would
        reject nearly everything. Each test takes ``fpr / 2``, so that together they reject at most
        ``fpr`` of these images.
        """
        if not 0 < fpr < 1:
            raise ValueError(f"sampler false-positive rate must lie in (0, 1), got {fpr}")
        near = self.nearest_real(real_images)
        calibrated = copy.copy(self)
        calibrated.thresholds = Thresholds(siamese=_exceeded_by(near.scores, fpr / 2),
                                           pixels=_exceeded_by(near.correlations, fpr / 2), fpr=fpr)
        return calibrated

    def check(self, candidates: torch.Tensor) -> FilterResult:
        """Check ``candidates`` (N, 1, S, S) in [0, 1] against the gallery (:meth:`nearest_real`).

        A candidate is rejected when the siamese network links it to a real training image (the
        paper's rule), or when it is a near-duplicate of one in pixels. The second test is there
        because the first cannot see copies: the siamese network scores ``|f1 - f2|``, so an exact copy
        always gets one and the same score, ``sigmoid(bias)``, which a trained network need not put
        above its threshold, and a lightly shifted copy gets about that (the tests plant copies to
        check this).
        """
        if self.thresholds is None:
            raise ValueError("the privacy filter has no thresholds: calibrate it first (calibrated())")
        near = self.nearest_real(candidates)
        return FilterResult(**vars(near), by_siamese=near.scores > self.thresholds.siamese,
                            by_pixels=near.correlations > self.thresholds.pixels)

    def planted_copy_rates(self, count: int, seed: int) -> dict[str, dict[str, float]]:
        """Plant :func:`near_copies` of ``count`` gallery images (drawn with ``seed``) and check them:
        per kind of copy, the share rejected by each test, by the filter, and linked back to its source."""
        sources = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].numpy()
        rates = {}
        for kind, copies in near_copies(self.images[torch.as_tensor(sources)], seed).items():
            checked = self.check(copies)
            rates[kind] = {**checked.rates(),
                           "linked to its source": float((checked.culprits == np.asarray(sources)).mean())}
        return rates


def _exceeded_by(values: np.ndarray, rate: float) -> float:
    """The value that a share ``rate`` of ``values`` exceeds."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), 1 - rate, method="higher"))


def _shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Moved by (dy, dx) pixels, the uncovered border repeating the edge (no wrap-around)."""
    size = images.shape[-1]
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + size, left:left + size]


def near_copies(images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Copies of real images and light perturbations of them (shift, noise, contrast, brightness):
    what a memorizing generator might emit and a post-hoc filter is known to miss. Planted among
    generated images, every one of them must be rejected."""
    generator = torch.Generator().manual_seed(seed)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return {
        "exact copy": images.clone(),
        "shifted 1 px": _shifted(images, 1, -1),
        "shifted 2 px": _shifted(images, -2, 2),
        "noise (sd 0.03)": (images + 0.03 * torch.randn(images.shape, generator=generator)).clamp(0, 1),
        "contrast x1.15": ((images - mean) * 1.15 + mean).clamp(0, 1),
        "brighter +0.05": (images + 0.05).clamp(0, 1),
    }
