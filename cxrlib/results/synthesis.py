"""Notebook 04's results (``synthesis.json``): the latent diffusion model's training, its privacy-enhancing
sampler, the utility of a classifier trained on its images only, their quality and diversity, and the
memorization checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxrlib.artifacts import MetricsFile
from cxrlib.memorization import MemorizationPanel
from cxrlib.metrics import quantiles
from cxrlib.synthesis.decomposition import GapDecomposition
from cxrlib.synthesis.privacy_filter import Thresholds
from cxrlib.synthesis.training import TrainedLatentDiffusion

CONDITIONING = "14-label multi-hot vector (MLP to the time embedding) with a separate null flag"


@dataclasses.dataclass(frozen=True)
class SynthesisResults(MetricsFile):
    """``synthesis.json`` (without its context); the fields are its keys."""

    conditioning: str
    #: ``training`` (:meth:`FitResult.record`), ``best_val_loss``, ``validation_reconstruction``
    autoencoder: dict[str, Any]
    unet: dict[str, Any]
    latent_shape: list[int]
    scaling_factor: float
    thresholds: dict[str, Any]
    planted_copies: dict[str, Any]
    #: each sampling run's summary by its name, and over all of them ``drawn``, ``rejected``, ``rejection_rate``
    sampler: dict[str, Any]
    utility: dict[str, Any]
    synthetic_classifier: dict[str, Any]
    real_training_images: int
    frechet_distance_classifier_features: dict[str, float]
    #: per image set, the mean pairwise MS-SSIM by class, and (``mean``) each set's mean over its classes
    diversity_ms_ssim: dict[str, Any]
    #: per image set, the quantiles of its siamese scores and pixel correlations
    memorization: dict[str, dict[str, dict[str, float]]]
    memorization_panel: dict[str, Any]
    #: :class:`~cxrlib.synthesis.GapDecomposition`: its ``summary``, ``worst_findings`` and (``decomposition``)
    #: every seed's AUCs as ``to_json`` writes them
    gap_decomposition: dict[str, Any]
    wall_seconds: float



def synthesis_results(ldm: TrainedLatentDiffusion, *, reconstruction: Mapping[str, float], thresholds: Thresholds,
                      planted: Mapping[str, Any], sampler: Mapping[str, Mapping[str, Any]],
                      utility: Mapping[str, Any], synthetic_fit: Any, synthetic_training_images: int,
                      real_training_images: int, frechet: Mapping[str, float],
                      diversity: Mapping[str, Mapping[str, float]],
                      memorization: Mapping[str, tuple[Any, Any]], memorization_panel: MemorizationPanel,
                      gap_decomposition: GapDecomposition, wall_seconds: float) -> SynthesisResults:
    """Notebook 04's results from what it measured: ``reconstruction`` of the validation images by the
    autoencoder, the sampler's ``thresholds``, the rates at which it caught ``planted`` copies, each sampling
    run's summary (``sampler``, by name: :meth:`SamplingResult.summary`), :func:`~cxrlib.synthesis.utility_gap`
    (``utility``), the synthetic-only classifier's training (``synthetic_fit``, a :class:`cxrlib.train.FitResult`)
    and its number of images, the Fréchet distances and diversity by image set, and per image set its siamese
    scores and pixel correlations (``memorization``), the memorization panel and the gap decomposition."""
    unet_config = ldm.model.unet.config
    drawn = sum(s["drawn"] for s in sampler.values())
    rejected = sum(s["rejected"] for s in sampler.values())
    return SynthesisResults(
        conditioning=CONDITIONING,
        autoencoder={"training": ldm.autoencoder_fit.record(), "best_val_loss": ldm.autoencoder_fit.best_val_loss,
                     "validation_reconstruction": dict(reconstruction)},
        unet={"training": ldm.unet_fit.record(), "best_val_loss": ldm.unet_fit.best_val_loss},
        latent_shape=[unet_config.latent_channels, unet_config.sample_size, unet_config.sample_size],
        scaling_factor=ldm.model.scaling_factor,
        thresholds=dataclasses.asdict(thresholds),
        planted_copies=dict(planted),
        sampler={**sampler, "drawn": drawn, "rejected": rejected, "rejection_rate": rejected / drawn},
        utility=dict(utility),
        synthetic_classifier={"training": synthetic_fit.record(), "training_images": synthetic_training_images},
        real_training_images=real_training_images,
        frechet_distance_classifier_features=dict(frechet),
        diversity_ms_ssim={**diversity, "mean": {k: float(np.mean(list(d.values()))) for k, d in diversity.items()}},
        memorization={name: {"siamese_score": quantiles(s), "pixel_correlation": quantiles(r)}
                      for name, (s, r) in memorization.items()},
        memorization_panel=memorization_panel.to_json(),
        gap_decomposition={"summary": gap_decomposition.summary(), "worst_findings": gap_decomposition.worst_findings(),
                           "decomposition": gap_decomposition.to_json()},
        wall_seconds=wall_seconds)
