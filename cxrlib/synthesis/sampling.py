"""Sampling from a trained latent diffusion model: DDIM with classifier-free guidance
(:func:`generate`), and the privacy-enhancing sampler (:func:`privacy_enhancing_sample`), which draws
again every image its :class:`~cxrlib.synthesis.privacy_filter.PrivacyFilter` links to a real
training image, a bounded number of times, and keeps every rejection with the real image it resembled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrlib.config import SynthesisConfig
from cxrlib.metrics import fidelity
from cxrlib.models.diffusion import LatentDiffusion
from cxrlib.synthesis.privacy_filter import PrivacyFilter, Thresholds
from cxrlib.runtime import cpu_uses_bf16, default_device, tqdm_disabled

try:  # diffusers >= 0.35 holds it here (older ones only inside pipelines that need transformers)
    from diffusers.guiders.guider_utils import rescale_noise_cfg
except ImportError:  # pragma: no cover - the same rule, as diffusers writes it
    def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor,
                          guidance_rescale: float = 0.0) -> torch.Tensor:
        dims = list(range(1, noise_pred_text.ndim))
        rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
        return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


@torch.no_grad()
def reconstruct(model: LatentDiffusion, images: torch.Tensor, *, batch_size: int = 64,
                device: torch.device | None = None) -> torch.Tensor:
    """Images (N, 1, S, S) in [0, 1] through the autoencoder and back (posterior means)."""
    device = device or default_device()
    model.to(device)
    model.autoencoder.eval()
    return torch.cat([model.decode(model.encode(images[i:i + batch_size].to(device))).float().cpu()
                      for i in range(0, len(images), batch_size)])


def reconstruction_quality(model: LatentDiffusion, images: torch.Tensor, *, batch_size: int = 64,
                           device: torch.device | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """What the autoencoder keeps of ``images``: their reconstructions (:func:`reconstruct`) and the
    mean absolute error ``l1`` with SSIM and PSNR (:func:`cxrlib.metrics.fidelity`)."""
    reconstructed = reconstruct(model, images, batch_size=batch_size, device=device)
    quality = fidelity(images, reconstructed)
    quality["l1"] = float((images - reconstructed).abs().mean())
    return reconstructed, quality


@torch.no_grad()
def generate(model: LatentDiffusion, labels: torch.Tensor, *, steps: int, guidance_scale: float,
             generator: torch.Generator, batch_size: int = 64, device: torch.device | None = None,
             cpu_bf16: bool = True, progress: bool | None = None, sampler: str = "ddim",
             guidance_rescale: float = 0.0) -> torch.Tensor:
    """Images in [0, 1] (N, 1, S, S) for label vectors (N, 14): DDIM (or with ``sampler="dpm"``
    DPM-Solver++, :meth:`LatentDiffusion.sampling_scheduler`) with classifier-free guidance,
    ``eps = eps_null + guidance_scale * (eps_cond - eps_null)``. The initial noise is drawn on the CPU
    from ``generator``, so a seed gives the same images on any device of the same precision.

    DDIM ends at its last step's clean estimate x0: where ``steps`` does not divide the training steps
    (15 of 1000), its last step lands on t = 0, whose alpha-bar is 0.99915, not 1, and would leave
    about 3 % of the latent's noise in the image (DPM-Solver++ ends at sigma 0 by itself).

    ``guidance_rescale`` phi in [0, 1] pulls the guided prediction's standard deviation (per image)
    back towards the conditional one's, ``eps <- phi * eps * std(eps_cond) / std(eps) + (1 - phi) * eps``
    (Lin et al. 2024, section 3.4; diffusers' ``rescale_noise_cfg``): a high guidance scale inflates
    it and over-saturates images. 0 leaves the guided prediction as it is.

    On a CPU that computes bf16 in hardware the U-Net predicts the noise under bf16 autocast (unless
    ``cpu_bf16`` is False or ``CXRLIB_CPU_BF16=0``); the latents, the DDIM update and the decoder stay
    fp32. ``benchmarks/bench_sampling_precision.py`` draws the synthetic set both ways and trains the
    synthetic-only classifier on each (``benchmarks/results/sampling_precision.json`` holds the last
    figures: speed, pixel differences and both AUCs)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, 14) label vectors, got shape {tuple(labels.shape)}")
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}")
    model.sampling_scheduler(sampler, steps)  # an unknown sampler fails here, before any work
    device = device or default_device()
    model.to(device)
    model.autoencoder.eval()
    model.unet.eval()
    unet_config = model.unet.config
    shape = (unet_config.latent_channels, unet_config.sample_size, unet_config.sample_size)
    images = []
    bf16 = device.type == "cpu" and cpu_uses_bf16(cpu_bf16)
    for start in tqdm(range(0, len(labels), batch_size), desc="sample", leave=False,
                      disable=tqdm_disabled(progress)):
        batch = labels[start:start + batch_size].to(device)
        count = len(batch)
        latents = torch.randn((count, *shape), generator=generator).to(device)
        scheduler = model.sampling_scheduler(sampler, steps)
        both = torch.cat([batch, batch])
        unconditional = torch.cat([torch.zeros(count, dtype=torch.bool),
                                   torch.ones(count, dtype=torch.bool)]).to(device)
        for index, t in enumerate(scheduler.timesteps):
            timestep = torch.full((2 * count,), int(t), device=device)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                eps = model.unet(torch.cat([latents, latents]), timestep, both, unconditional)
            eps_cond, eps_null = eps.float().chunk(2)
            eps = eps_null + guidance_scale * (eps_cond - eps_null)
            if guidance_rescale:
                eps = rescale_noise_cfg(eps, eps_cond, guidance_rescale=guidance_rescale)
            step = scheduler.step(eps, t, latents)
            last = index == len(scheduler.timesteps) - 1
            latents = step.pred_original_sample if last and sampler == "ddim" else step.prev_sample
        images.append(model.decode(latents).float().cpu())
    return torch.cat(images)


@dataclass
class Rejection:
    """One discarded sample: the condition it was drawn for, the attempt (0 = first draw), its
    highest siamese score and pixel correlation, which test fired ("siamese", "near-duplicate" or
    "both") and the real training image it was linked to."""

    condition: int
    attempt: int
    score: float
    correlation: float
    reason: str
    real_image: str


@dataclass
class SamplingResult:
    #: accepted images (K, 1, S, S) with their label vectors (K, 14) and the index of their condition
    images: torch.Tensor
    labels: torch.Tensor
    conditions: np.ndarray
    #: memorization check of each accepted image: its highest siamese score against its nearest real
    #: training images and that image's name; its highest aligned pixel correlation and that image's
    scores: np.ndarray
    nearest_real: list[str]
    correlations: np.ndarray
    closest_in_pixels: list[str]
    rejections: list[Rejection]
    #: the rejected images, in the order of ``rejections``
    rejected_images: torch.Tensor
    #: conditions for which every attempt was rejected (no image)
    exhausted: np.ndarray
    drawn: int
    thresholds: Thresholds

    def drawn_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Siamese scores and pixel correlations of every image drawn, accepted ones first."""
        return (np.r_[self.scores, [r.score for r in self.rejections]],
                np.r_[self.correlations, [r.correlation for r in self.rejections]])

    @property
    def rejection_rate(self) -> float:
        return len(self.rejections) / self.drawn if self.drawn else 0.0

    def summary(self) -> dict:
        reasons = [r.reason for r in self.rejections]
        return {"drawn": self.drawn, "accepted": len(self.images), "rejected": len(self.rejections),
                "rejection_rate": self.rejection_rate, "exhausted_conditions": len(self.exhausted),
                "rejected_by": {reason: reasons.count(reason)
                                for reason in ("siamese", "near-duplicate", "both")},
                "thresholds": dataclasses.asdict(self.thresholds)}


def privacy_enhancing_sample(model: LatentDiffusion, labels: torch.Tensor, *, privacy_filter: PrivacyFilter,
                             config: SynthesisConfig, seed: int, batch_size: int = 64,
                             device: torch.device | None = None,
                             progress: bool | None = None) -> SamplingResult:
    """Generate one image per label vector (on ``device``); draw again (up to ``config.max_retries``
    times) every image ``privacy_filter`` (calibrated) links to a real training image. Nothing
    rejected is kept as a sample."""
    if privacy_filter.thresholds is None:
        raise ValueError("the privacy filter has no thresholds: calibrate it first (calibrated())")
    device = device or default_device()
    generator = torch.Generator().manual_seed(seed)
    size = model.autoencoder.config.sample_size
    accepted_images = torch.empty(len(labels), 1, size, size)
    scores, correlations = np.zeros(len(labels)), np.zeros(len(labels))
    nearest, closest = np.zeros(len(labels), dtype=np.int64), np.zeros(len(labels), dtype=np.int64)
    accepted = np.zeros(len(labels), dtype=bool)
    rejections: list[Rejection] = []
    rejected_images: list[torch.Tensor] = []
    pending, drawn = np.arange(len(labels)), 0
    with tqdm(total=len(labels), desc="privacy-enhancing sampling", leave=False,
              disable=tqdm_disabled(progress)) as bar:
        for attempt in range(config.max_retries + 1):
            if len(pending) == 0:
                break
            images = generate(model, labels[pending], steps=config.sampling_steps,
                              guidance_scale=config.guidance_scale, generator=generator,
                              batch_size=batch_size, device=device, progress=progress)
            drawn += len(pending)
            checked = privacy_filter.check(images)
            culprits, reasons = checked.culprits, checked.reasons
            for position in np.flatnonzero(checked.rejected):
                rejections.append(Rejection(
                    int(pending[position]), attempt, float(checked.scores[position]),
                    float(checked.correlations[position]), str(reasons[position]),
                    privacy_filter.names[culprits[position]]))
                rejected_images.append(images[position])
            keep = ~checked.rejected
            kept = pending[keep]
            accepted_images[kept] = images[keep]
            scores[kept], correlations[kept] = checked.scores[keep], checked.correlations[keep]
            nearest[kept], closest[kept] = checked.score_matches[keep], checked.correlation_matches[keep]
            accepted[kept] = True
            bar.update(len(kept))
            pending = pending[checked.rejected]
    return SamplingResult(
        images=accepted_images[accepted], labels=labels[accepted].float().cpu(),
        conditions=np.flatnonzero(accepted), scores=scores[accepted],
        nearest_real=[privacy_filter.names[i] for i in nearest[accepted]], correlations=correlations[accepted],
        closest_in_pixels=[privacy_filter.names[i] for i in closest[accepted]],
        rejections=rejections,
        rejected_images=(torch.stack(rejected_images) if rejected_images
                         else torch.empty(0, 1, size, size)),
        exhausted=pending, drawn=drawn, thresholds=privacy_filter.thresholds)

