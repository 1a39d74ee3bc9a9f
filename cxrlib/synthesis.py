"""Latent diffusion synthesis with privacy-enhancing sampling ("Generation of Anonymous Chest
Radiographs Using Latent Diffusion Models", Packhäuser et al.).

Training: the autoencoder (L1 reconstruction + KL) and then the latent U-Net (DDPM schedule, epsilon
prediction, condition dropout for classifier-free guidance) both go through the shared loop
:func:`cxrlib.train.fit`, so they checkpoint, resume, stop early and are reused when trained before.
The U-Net trains on latents encoded once (posterior mean and std), since re-encoding every batch
would cost more than the U-Net itself. The latent scaling factor is 1 / std of the training latents,
stored in the autoencoder's config (``scaling_factor``) as diffusers does.

Sampling: DDIM with classifier-free guidance. The privacy-enhancing sampler checks every generated
image against the real training images: the retrieval embedding finds its nearest real images and the
siamese network scores each pair (the paper's rule), and an aligned pixel correlation catches
near-copies, which the siamese network cannot see (:func:`privacy_filter`). A sample that fails either
test is discarded and drawn again, a bounded number of times; every rejection is kept with the real
image it resembled. Both thresholds are calibrated on real images of the validation patients, at a
chosen share of wrongly rejected images (:func:`calibrate_thresholds`).

Evaluation helpers: label vectors for a synthetic training set, the utility gap of a synthetic-only
classifier, Fréchet distance in a classifier's feature space, within-class MS-SSIM diversity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm.auto import tqdm

from cxrlib.config import SynthesisConfig
from cxrlib.data.chestxray14 import LABELS, NO_FINDING
from cxrlib.metrics import bootstrap_ci, multilabel_auc
from cxrlib.models.diffusion import (LatentDiffusion, build_autoencoder, build_noise_scheduler,
                                     build_unet)
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.train import FitResult, fit, seed_everything


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag: None shows bars on a terminal only."""
    return None if progress is None else not progress


# -- training ---------------------------------------------------------------------------------------

class AutoencoderObjective(nn.Module):
    """Wraps the autoencoder so that its training loss is the forward pass (what ``fit`` needs to
    synchronize gradients): L1 reconstruction of a posterior sample plus the KL term, per pixel."""

    def __init__(self, autoencoder: nn.Module, kl_weight: float):
        super().__init__()
        self.autoencoder = autoencoder
        self.kl_weight = kl_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        target = images * 2 - 1
        posterior = self.autoencoder.encode(target).latent_dist
        # validation decodes the posterior mean, so that its loss does not depend on random draws
        latents = posterior.sample() if self.training else posterior.mode()
        reconstruction = self.autoencoder.decode(latents).sample
        # the KL weight is defined, as in latent diffusion, against a reconstruction loss summed over
        # pixels; both are per pixel here, which keeps the same balance
        kl = posterior.kl().mean() / target[0].numel()
        return F.l1_loss(reconstruction.float(), target.float()) + self.kl_weight * kl


#: the synthesis fields each trained part depends on (the U-Net also on the autoencoder's); sampling
#: and sampler settings are not among them, so turning those knobs never retrains anything
AUTOENCODER_FIELDS = ("latent_channels", "autoencoder_channels", "autoencoder_epochs", "autoencoder_lr",
                      "kl_weight", "batch_size", "patience")
UNET_FIELDS = ("unet_channels", "unet_layers_per_block", "unet_epochs", "unet_lr", "train_timesteps",
               "condition_dropout", "min_snr_gamma")


def training_config(config: SynthesisConfig, image_size: int, part: str) -> dict:
    """What identifies a trained ``part`` ("autoencoder" or "unet"): the fields it depends on."""
    fields = AUTOENCODER_FIELDS + (UNET_FIELDS if part == "unet" else ())
    return {"part": part, "image_size": image_size, **{name: getattr(config, name) for name in fields}}


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _images_only(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def train_autoencoder(train_images: Dataset, val_images: Dataset, config: SynthesisConfig,
                      image_size: int, *, checkpoint_path: str | Path, seed: int,
                      progress: bool | None = None):
    """Train the autoencoder on image datasets yielding ``(x, ...)``; returns it (best weights) and
    the :class:`~cxrlib.train.FitResult`."""
    seed_everything(seed)
    autoencoder = build_autoencoder(config, image_size)
    objective = AutoencoderObjective(autoencoder, config.kl_weight)
    generator = torch.Generator().manual_seed(seed)
    result = fit(
        objective, lambda model, batch: model(_images_only(batch)),
        DataLoader(train_images, batch_size=config.batch_size, shuffle=True, generator=generator),
        DataLoader(val_images, batch_size=config.batch_size),
        optimizer=torch.optim.AdamW(objective.parameters(), lr=config.autoencoder_lr),
        max_epochs=config.autoencoder_epochs, patience=config.patience,
        checkpoint_path=checkpoint_path, config=training_config(config, image_size, "autoencoder"),
        seed=seed, progress=progress)
    return autoencoder, result


@torch.no_grad()
def encode_posteriors(autoencoder: nn.Module, images: Dataset, *, batch_size: int = 64,
                      device: torch.device | None = None, progress: bool | None = None):
    """Posterior mean and std (unscaled) of every image, and its label vector: three tensors."""
    device = device or default_device()
    autoencoder.to(device).eval()
    means, stds, labels = [], [], []
    for x, y in tqdm(DataLoader(images, batch_size=batch_size), desc="encode", leave=False,
                     disable=_quiet(progress)):
        posterior = autoencoder.encode(x.to(device) * 2 - 1).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        labels.append(y.float())
    return torch.cat(means), torch.cat(stds), torch.cat(labels)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor) -> float:
    """1 / std of latents drawn from the posteriors: Var z = Var(mean) + E[std^2], exactly."""
    variance = means.var() + stds.pow(2).mean()
    return float(1.0 / variance.sqrt())


def diffusion_loss(unet: nn.Module, batch, *, scheduler, scaling_factor: float, condition_dropout: float,
                   min_snr_gamma: float) -> torch.Tensor:
    """Epsilon-prediction MSE at random timesteps; conditions dropped with ``condition_dropout``.

    Each timestep's error is weighted by ``min(SNR, gamma) / SNR`` (min-SNR weighting, Hang et al.
    2023; ``gamma`` 0 turns it off): the nearly noise-free steps, which dominate the plain loss but
    matter little for the samples, stop crowding out the others, and training converges in fewer
    steps, which is what a CPU budget needs.

    In eval mode (validation) timesteps are evenly spread and the noise comes from a fixed generator,
    so validation losses of different epochs are comparable and early stopping is not chasing noise.
    """
    mean, std, labels = batch
    size, device = len(mean), mean.device
    if unet.training:
        generator = None
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), device=device)
        unconditional = torch.rand(size, device=device) < condition_dropout
    else:
        generator = torch.Generator(device=device).manual_seed(0)
        steps = scheduler.config.num_train_timesteps
        timesteps = ((torch.arange(size, device=device) + 0.5) * steps / size).long()
        unconditional = torch.zeros(size, dtype=torch.bool, device=device)
    latent_noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
    latents = (mean + std * latent_noise) * scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, labels, unconditional)
    error = (prediction.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
    if min_snr_gamma:
        alphas = scheduler.alphas_cumprod.to(device)[timesteps]
        snr = alphas / (1 - alphas)
        error = error * snr.clamp(max=min_snr_gamma) / snr
    return error.mean()


def train_latent_unet(posteriors: tuple[torch.Tensor, ...], val_posteriors: tuple[torch.Tensor, ...],
                      config: SynthesisConfig, image_size: int, scaling_factor: float, *,
                      checkpoint_path: str | Path, seed: int, progress: bool | None = None):
    """Train the conditional U-Net on encoded ``(mean, std, labels)``; returns it, its noise
    scheduler and the FitResult."""
    seed_everything(seed)
    unet = build_unet(config, image_size)
    scheduler = build_noise_scheduler(config)
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(model, batch):
        return diffusion_loss(model, batch, scheduler=scheduler, scaling_factor=scaling_factor,
                              condition_dropout=config.condition_dropout, min_snr_gamma=config.min_snr_gamma)

    result = fit(
        unet, loss_fn,
        DataLoader(TensorDataset(*posteriors), batch_size=config.batch_size, shuffle=True,
                   generator=generator),
        DataLoader(TensorDataset(*val_posteriors), batch_size=config.batch_size),
        optimizer=torch.optim.AdamW(unet.parameters(), lr=config.unet_lr),
        max_epochs=config.unet_epochs, patience=config.patience, checkpoint_path=checkpoint_path,
        # not the scaling factor: it follows from the autoencoder, and its last digits from the device
        config=training_config(config, image_size, "unet"),
        seed=seed, progress=progress)
    return unet, scheduler, result


@dataclass
class TrainedLatentDiffusion:
    model: LatentDiffusion
    folder: Path
    autoencoder_fit: FitResult
    unet_fit: FitResult


def train_latent_diffusion(train_images: Dataset, val_images: Dataset, config: SynthesisConfig,
                           image_size: int, *, artifact_path: Callable[[str], Path], seed: int,
                           progress: bool | None = None) -> TrainedLatentDiffusion:
    """Train (or reuse) autoencoder and U-Net, then save the model with ``save_pretrained``.

    ``artifact_path(name)`` says where an artifact called ``name`` lives; the names carry a key of
    what each part depends on (:func:`training_config`): ``ldm-autoencoder-KEY`` and
    ``ldm-unet-KEY`` (fit checkpoints) and the folder ``ldm-KEY`` of the saved model.
    """
    autoencoder_key = _key(training_config(config, image_size, "autoencoder"))
    unet_key = _key(training_config(config, image_size, "unet"))
    folder = Path(artifact_path(f"ldm-{unet_key}"))
    autoencoder, ae_fit = train_autoencoder(
        train_images, val_images, config, image_size, seed=seed, progress=progress,
        checkpoint_path=artifact_path(f"ldm-autoencoder-{autoencoder_key}"))
    train_post = encode_posteriors(autoencoder, train_images, progress=progress)
    val_post = encode_posteriors(autoencoder, val_images, progress=progress)
    scaling = latent_scaling_factor(*train_post[:2])
    autoencoder.register_to_config(scaling_factor=scaling)
    unet, scheduler, unet_fit = train_latent_unet(
        train_post, val_post, config, image_size, scaling, seed=seed, progress=progress,
        checkpoint_path=artifact_path(f"ldm-unet-{unet_key}"))
    model = LatentDiffusion(autoencoder.cpu(), unet.cpu(), scheduler)
    model.save(folder)
    return TrainedLatentDiffusion(LatentDiffusion.load(folder), folder, ae_fit, unet_fit)


# -- sampling ---------------------------------------------------------------------------------------

@torch.no_grad()
def reconstruct(model: LatentDiffusion, images: torch.Tensor, *, batch_size: int = 64,
                device: torch.device | None = None) -> torch.Tensor:
    """Images (N, 1, S, S) in [0, 1] through the autoencoder and back (posterior means)."""
    device = device or default_device()
    model.to(device)
    model.autoencoder.eval()
    return torch.cat([model.decode(model.encode(images[i:i + batch_size].to(device))).float().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def generate(model: LatentDiffusion, labels: torch.Tensor, *, steps: int, guidance_scale: float,
             generator: torch.Generator, batch_size: int = 64, device: torch.device | None = None,
             progress: bool | None = None) -> torch.Tensor:
    """Images in [0, 1] (N, 1, S, S) for label vectors (N, 14): DDIM with classifier-free guidance,
    ``eps = eps_null + guidance_scale * (eps_cond - eps_null)``. The initial noise is drawn on the CPU
    from ``generator``, so a seed gives the same images on any device."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, 14) label vectors, got shape {tuple(labels.shape)}")
    device = device or default_device()
    model.to(device)
    model.autoencoder.eval()
    model.unet.eval()
    unet_config = model.unet.config
    shape = (unet_config.latent_channels, unet_config.sample_size, unet_config.sample_size)
    images = []
    for start in tqdm(range(0, len(labels), batch_size), desc="sample", leave=False,
                      disable=_quiet(progress)):
        batch = labels[start:start + batch_size].to(device)
        count = len(batch)
        latents = torch.randn((count, *shape), generator=generator).to(device)
        scheduler = model.ddim_scheduler(steps)
        both = torch.cat([batch, batch])
        unconditional = torch.cat([torch.zeros(count, dtype=torch.bool),
                                   torch.ones(count, dtype=torch.bool)]).to(device)
        for t in scheduler.timesteps:
            timestep = torch.full((2 * count,), int(t), device=device)
            eps_cond, eps_null = model.unet(torch.cat([latents, latents]), timestep, both,
                                            unconditional).chunk(2)
            eps = eps_null + guidance_scale * (eps_cond - eps_null)
            latents = scheduler.step(eps, t, latents).prev_sample
        images.append(model.decode(latents).float().cpu())
    return torch.cat(images)


# -- privacy-enhancing sampling ---------------------------------------------------------------------

Embedder = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _batched(fn: Embedder, images: torch.Tensor, *, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


@dataclass
class Identity:
    """What the re-identification models see in images: the retrieval embedding (L2-normalized, so
    nearest means highest cosine similarity) and the siamese network's features."""

    retrieval: torch.Tensor
    siamese: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor, retrieval: Embedder, siamese: SiameseNetwork, *,
           batch_size: int = 128, device: torch.device | None = None) -> "Identity":
        device = device or default_device()
        for model in (retrieval, siamese):
            if isinstance(model, nn.Module):
                model.eval().to(device)
        return cls(F.normalize(_batched(retrieval, images, batch_size=batch_size, device=device), dim=1),
                   _batched(siamese.embed, images, batch_size=batch_size, device=device))


@dataclass
class RealGallery:
    """The real training images a generated image must not resemble, embedded once."""

    images: torch.Tensor
    names: list[str]
    identity: Identity

    @classmethod
    def build(cls, images: torch.Tensor, names: list[str], retrieval: Embedder,
              siamese: SiameseNetwork, *, device: torch.device | None = None) -> "RealGallery":
        if len(images) != len(names) or len(images) == 0:
            raise ValueError(f"gallery needs one name per image and at least one image; got "
                             f"{len(images)} images and {len(names)} names")
        return cls(images, list(names), Identity.of(images, retrieval, siamese, device=device))


def _standardized(images: torch.Tensor) -> torch.Tensor:
    """Each image a zero-mean, unit-norm vector: dot products are pixel correlations, blind to
    brightness and contrast."""
    flat = images.flatten(1).float()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


#: the near-duplicate test compares images at most this large (area-downsampled), aligning them over
#: shifts of up to ``MAX_SHIFT`` pixels at that size, each axis
PIXEL_SIZE, MAX_SHIFT = 64, 2


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    return images if images.shape[-1] <= size else F.interpolate(images, size=size, mode="area")


@torch.no_grad()
def aligned_correlation(images: torch.Tensor, gallery_images: torch.Tensor, *, batch_size: int = 256,
                        device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the highest pixel correlation with any gallery image over shifts of up to
    ``MAX_SHIFT`` pixels (overlapping windows only), and which gallery image gives it: a
    near-duplicate detector that needs no model. Exhaustive over the gallery, since every chest
    radiograph looks alike at the coarse sizes a shortlist would use."""
    device = device or default_device()
    gallery = _resized(gallery_images, PIXEL_SIZE).to(device)
    size = gallery.shape[-1]
    best, best_index = [], []
    for start in range(0, len(images), batch_size):
        batch = _resized(images[start:start + batch_size], PIXEL_SIZE).to(device)
        correlation = torch.full((len(batch), len(gallery)), -1.0, device=device)
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                mine = batch[..., max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)]
                theirs = gallery[..., max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)]
                correlation = torch.maximum(correlation, _standardized(mine) @ _standardized(theirs).T)
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


@torch.no_grad()
def nearest_real(images: torch.Tensor, gallery: RealGallery, retrieval: Embedder, siamese: SiameseNetwork,
                 *, neighbours: int, device: torch.device | None = None) -> NearestReal:
    """How close ``images`` (N, 1, S, S) in [0, 1] come to the real gallery.

    The retrieval embedding shortlists each image's ``neighbours`` nearest real images; the siamese
    network scores each of those pairs (both networks embed every image once; pairs only meet in the
    siamese network's last layer). Independently, :func:`aligned_correlation` finds its closest
    real image in pixels.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    device = device or default_device()
    k = min(neighbours, len(gallery.images))
    found = Identity.of(images, retrieval, siamese, device=device)
    nearest = (found.retrieval @ gallery.identity.retrieval.T).topk(k, dim=1).indices  # (N, k)
    first = found.siamese.repeat_interleave(k, dim=0).to(device)
    second = gallery.identity.siamese[nearest.reshape(-1)].to(device)
    scores = torch.sigmoid(siamese.compare(first, second).float()).cpu().reshape(-1, k)
    best = scores.argmax(dim=1, keepdim=True)
    correlations, correlation_matches = aligned_correlation(images, gallery.images, device=device)
    return NearestReal(scores=scores.gather(1, best).squeeze(1).numpy(),
                       score_matches=nearest.gather(1, best).squeeze(1).numpy(),
                       correlations=correlations, correlation_matches=correlation_matches)


@dataclass(frozen=True)
class Thresholds:
    """The sampler's rejection thresholds: ``siamese`` on the highest same-patient probability
    against the nearest real images, ``pixels`` on the highest aligned pixel correlation. Together
    they wrongly reject at most a share ``fpr`` of real images of unseen patients."""

    siamese: float
    pixels: float
    fpr: float


def calibrate_thresholds(real_images: torch.Tensor, gallery: RealGallery, retrieval: Embedder,
                         siamese: SiameseNetwork, *, fpr: float, neighbours: int,
                         device: torch.device | None = None) -> Thresholds:
    """Thresholds from real images of patients *not* in the gallery (the validation split).

    Each such image paired with its nearest gallery images is a real different-patient pair, and
    exactly the kind the sampler tests: calibrating on random pairs instead would put the threshold
    below what the nearest of hundreds of strangers reaches, and the sampler would reject nearly
    everything. Each test takes ``fpr / 2``, so that together they reject at most ``fpr`` of these
    images.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"sampler false-positive rate must lie in (0, 1), got {fpr}")
    near = nearest_real(real_images, gallery, retrieval, siamese, neighbours=neighbours, device=device)
    return Thresholds(siamese=_exceeded_by(near.scores, fpr / 2),
                      pixels=_exceeded_by(near.correlations, fpr / 2), fpr=fpr)


def _exceeded_by(values: np.ndarray, rate: float) -> float:
    """The value that a share ``rate`` of ``values`` exceeds."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), 1 - rate, method="higher"))


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


def privacy_filter(candidates: torch.Tensor, gallery: RealGallery, retrieval: Embedder,
                   siamese: SiameseNetwork, thresholds: Thresholds, *, neighbours: int,
                   device: torch.device | None = None) -> FilterResult:
    """Check ``candidates`` (N, 1, S, S) in [0, 1] against the real gallery (:func:`nearest_real`).

    A candidate is rejected when the siamese network links it to a real training image (the paper's
    rule), or when it is a near-duplicate of one in pixels. The second test is there because the
    first cannot see copies: the siamese network scores ``|f1 - f2|``, so an exact copy always gets
    one and the same score, ``sigmoid(bias)``, which a trained network need not put above its
    threshold, and a lightly shifted copy gets about that (the tests plant copies to check this).
    """
    near = nearest_real(candidates, gallery, retrieval, siamese, neighbours=neighbours, device=device)
    return FilterResult(**vars(near), by_siamese=near.scores > thresholds.siamese,
                        by_pixels=near.correlations > thresholds.pixels)


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


def planted_copy_rates(sources: np.ndarray, gallery: RealGallery, retrieval: Embedder,
                       siamese: SiameseNetwork, thresholds: Thresholds, *, neighbours: int, seed: int,
                       device: torch.device | None = None) -> dict[str, dict[str, float]]:
    """Plant :func:`near_copies` of the gallery images at rows ``sources`` and filter them: per kind
    of copy, the share rejected by each test, by the filter, and linked back to its source."""
    rates = {}
    for kind, copies in near_copies(gallery.images[torch.as_tensor(sources)], seed).items():
        checked = privacy_filter(copies, gallery, retrieval, siamese, thresholds, neighbours=neighbours,
                                 device=device)
        rates[kind] = {"siamese test": float(checked.by_siamese.mean()),
                       "near-duplicate test": float(checked.by_pixels.mean()),
                       "rejected": float(checked.rejected.mean()),
                       "linked to its source": float((checked.culprits == np.asarray(sources)).mean())}
    return rates


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


def privacy_enhancing_sample(model: LatentDiffusion, labels: torch.Tensor, *, gallery: RealGallery,
                             retrieval: Embedder, siamese: SiameseNetwork, thresholds: Thresholds,
                             config: SynthesisConfig, seed: int, batch_size: int = 64,
                             device: torch.device | None = None,
                             progress: bool | None = None) -> SamplingResult:
    """Generate one image per label vector; draw again (up to ``config.max_retries`` times) every
    image the privacy filter links to a real training image. Nothing rejected is kept as a sample."""
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
              disable=_quiet(progress)) as bar:
        for attempt in range(config.max_retries + 1):
            if len(pending) == 0:
                break
            images = generate(model, labels[pending], steps=config.sampling_steps,
                              guidance_scale=config.guidance_scale, generator=generator,
                              batch_size=batch_size, device=device, progress=progress)
            drawn += len(pending)
            checked = privacy_filter(images, gallery, retrieval, siamese, thresholds,
                                     neighbours=config.sampler_neighbours, device=device)
            culprits, reasons = checked.culprits, checked.reasons
            for position in np.flatnonzero(checked.rejected):
                rejections.append(Rejection(
                    int(pending[position]), attempt, float(checked.scores[position]),
                    float(checked.correlations[position]), str(reasons[position]),
                    gallery.names[culprits[position]]))
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
        nearest_real=[gallery.names[i] for i in nearest[accepted]], correlations=correlations[accepted],
        closest_in_pixels=[gallery.names[i] for i in closest[accepted]],
        rejections=rejections,
        rejected_images=(torch.stack(rejected_images) if rejected_images
                         else torch.empty(0, 1, size, size)),
        exhausted=pending, drawn=drawn, thresholds=thresholds)


# -- conditions -------------------------------------------------------------------------------------

def class_conditions(samples_per_class: int) -> tuple[list[str], torch.Tensor]:
    """Single-class conditions for a per-finding grid: "No Finding" (all zeros), then each finding
    alone; returns the class name of every row and the (15 * n, 14) label vectors."""
    names = [NO_FINDING, *LABELS]
    vectors = torch.cat([torch.zeros(1, len(LABELS)), torch.eye(len(LABELS))])
    return ([name for name in names for _ in range(samples_per_class)],
            vectors.repeat_interleave(samples_per_class, dim=0))


def synthetic_label_vectors(real_labels: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """``count`` label vectors drawn from the real training split's, so the synthetic training set
    has the real label distribution (co-occurrences included): every real vector once per full pass,
    in a seeded order."""
    real_labels = np.asarray(real_labels, dtype=np.float32)
    if count < 1 or len(real_labels) == 0:
        raise ValueError(f"need a positive count and real label vectors; got count={count} and "
                         f"{len(real_labels)} real vectors")
    rng = np.random.default_rng(seed)
    passes = -(-count // len(real_labels))
    order = np.concatenate([rng.permutation(len(real_labels)) for _ in range(passes)])[:count]
    return torch.from_numpy(real_labels[order])


def single_class_names(labels: np.ndarray) -> np.ndarray:
    """Class of each label vector when it has at most one finding ("No Finding" or the finding);
    an empty string for multi-label rows."""
    labels = np.asarray(labels)
    names = np.array([NO_FINDING, *LABELS])
    counts = labels.sum(axis=1)
    index = np.where(counts == 0, 0, labels.argmax(axis=1) + 1)
    return np.where(counts <= 1, names[index], "")


# -- quality, diversity -----------------------------------------------------------------------------

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


# -- utility ----------------------------------------------------------------------------------------

#: "a classifier trained on synthetic images only is within 3.5 % AUC of one trained on real images"
PUBLISHED_AUC_GAP_PERCENT = 3.5


def utility_gap(labels: np.ndarray, real_probabilities: np.ndarray, synthetic_probabilities: np.ndarray,
                *, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Test AUCs of the real-data and the synthetic-only classifier on the same real test images,
    and the gap in mean AUC (real minus synthetic) in points and relative to the real one, with a
    paired bootstrap 95 % CI (both classifiers scored on the same resampled images)."""
    real = multilabel_auc(labels, real_probabilities, n_bootstrap=n_bootstrap, seed=seed)
    synthetic = multilabel_auc(labels, synthetic_probabilities, n_bootstrap=n_bootstrap, seed=seed)
    columns = len(LABELS)

    def gap(y_true, both):
        return _mean_auc(y_true, both[:, :columns]) - _mean_auc(y_true, both[:, columns:])

    both = np.hstack([real_probabilities, synthetic_probabilities])
    result = {"real": real, "synthetic": synthetic,
              "gap_points": 100 * (real["mean_auc"] - synthetic["mean_auc"]),
              "gap_percent_of_real": 100 * (real["mean_auc"] - synthetic["mean_auc"]) / real["mean_auc"],
              "published_gap_percent": PUBLISHED_AUC_GAP_PERCENT}
    if n_bootstrap:
        low, high = bootstrap_ci(gap, np.asarray(labels), both, n_bootstrap, seed)
        result["gap_points_ci"] = [100 * low, 100 * high]
    return result


def _mean_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return multilabel_auc(y_true, y_score, n_bootstrap=0)["mean_auc"]
