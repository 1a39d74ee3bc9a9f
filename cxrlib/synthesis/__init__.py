"""Latent diffusion synthesis with privacy-enhancing sampling ("Generation of Anonymous Chest
Radiographs Using Latent Diffusion Models", Packhäuser et al.), one module per job:

* :mod:`~cxrlib.synthesis.training` -- the autoencoder and the latent U-Net through the shared loop;
* :mod:`~cxrlib.synthesis.sampling` -- guided DDIM sampling and the privacy-enhancing sampler;
* :mod:`~cxrlib.synthesis.privacy_filter` -- :class:`PrivacyFilter`, the test every sample must pass,
  which owns its gallery of real training images, the models that embedded it and its thresholds;
* :mod:`~cxrlib.synthesis.conditions` -- the label vectors images are drawn for;
* :mod:`~cxrlib.synthesis.utility` -- the synthetic-only classifier against the real-data one;
* :mod:`~cxrlib.synthesis.decomposition` -- that gap split into what the autoencoder and what the
  generator lose, per finding and over classifier seeds.

The quality metrics of a synthetic image set (Fréchet distance, MS-SSIM diversity) are in
:mod:`cxrlib.metrics`.
"""

from cxrlib.synthesis.conditions import (class_conditions, single_class_names, synthetic_label_vectors,
                                         synthetic_set_conditions)
from cxrlib.synthesis.decomposition import GapDecomposition, SeedAUCs, Spread, gap_decomposition
from cxrlib.synthesis.privacy_filter import (FilterResult, NearestReal, PrivacyFilter, ReidFeatures,
                                             Thresholds, aligned_correlation, near_copies)
from cxrlib.synthesis.sampling import (Rejection, SamplingResult, generate, privacy_enhancing_sample,
                                       reconstruct, reconstruction_quality)
from cxrlib.synthesis.training import (TrainedLatentDiffusion, diffusion_loss, encode_posteriors,
                                       latent_scaling_factor, train_autoencoder, train_latent_diffusion,
                                       train_latent_unet, training_config)
from cxrlib.synthesis.utility import PUBLISHED_AUC_GAP_PERCENT, utility_gap

__all__ = [
    "FilterResult", "GapDecomposition", "NearestReal", "PUBLISHED_AUC_GAP_PERCENT", "PrivacyFilter",
    "ReidFeatures", "Rejection", "SamplingResult", "SeedAUCs", "Spread", "Thresholds", "TrainedLatentDiffusion",
    "aligned_correlation", "class_conditions",
    "diffusion_loss", "encode_posteriors", "gap_decomposition", "generate", "latent_scaling_factor", "near_copies",
    "privacy_enhancing_sample", "reconstruct", "reconstruction_quality", "single_class_names",
    "synthetic_label_vectors", "synthetic_set_conditions",
    "train_autoencoder", "train_latent_diffusion", "train_latent_unet", "training_config", "utility_gap",
]
