"""Training the latent diffusion model: the autoencoder (L1 reconstruction + KL, optionally an edge term)
and then the latent U-Net (DDPM schedule, epsilon prediction, condition dropout for classifier-free
guidance; optionally a cosine learning-rate schedule over a fixed budget and batches balanced by
finding), both through
the shared loop :func:`cxrlib.train.fit`, so they checkpoint, resume, stop early and are reused when
trained before. The U-Net trains on latents encoded once (posterior mean and std), since re-encoding
every batch would cost more than the U-Net itself. The latent scaling factor is 1 / std of the
training latents, stored in the autoencoder's config (``scaling_factor``) as diffusers does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import image_gradients
from torch import nn
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from cxrlib.config import SynthesisConfig
from cxrlib.data.datasets import TensorItems
from cxrlib.models.diffusion import (LatentDiffusion, build_autoencoder, build_noise_scheduler,
                                     build_unet, decode_latents, encode_images)
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit
from cxrlib.runtime import default_device, seed_everything, tqdm_disabled


class AutoencoderObjective(nn.Module):
    """Wraps the autoencoder so that its training loss is the forward pass (what ``fit`` needs to
    synchronize gradients): L1 reconstruction of a posterior sample plus the KL term, per pixel."""

    def __init__(self, autoencoder: nn.Module, kl_weight: float, edge_weight: float = 0.0):
        super().__init__()
        self.autoencoder = autoencoder
        self.kl_weight = kl_weight
        self.edge_weight = edge_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        target = images * 2 - 1
        posterior = encode_images(self.autoencoder, target)
        # validation decodes the posterior mean, so that its loss does not depend on random draws
        latents = posterior.sample() if self.training else posterior.mode()
        reconstruction = decode_latents(self.autoencoder, latents)
        # the KL weight is defined, as in latent diffusion, against a reconstruction loss summed over
        # pixels; both are per pixel here, which keeps the same balance
        kl = posterior.kl().mean() / target[0].numel()
        loss = F.l1_loss(reconstruction.float(), target.float()) + self.kl_weight * kl
        if self.edge_weight:
            # a 1-2 px band or rib rim costs little L1 when blurred, but its gradients vanish with it
            loss = loss + self.edge_weight * sum(
                F.l1_loss(made, wanted) for made, wanted in
                zip(image_gradients(reconstruction.float()), image_gradients(target.float())))
        return loss


#: the synthesis fields each trained part depends on (the U-Net also on the autoencoder's); sampling
#: and sampler settings are not among them, so turning those knobs never retrains anything
AUTOENCODER_FIELDS = ("latent_channels", "autoencoder_patch_size", "autoencoder_channels",
                      "autoencoder_epochs", "autoencoder_lr", "kl_weight", "batch_size", "patience",
                      "min_improvement", "autoencoder_edge_weight")
UNET_FIELDS = ("unet_channels", "unet_layers_per_block", "unet_epochs", "unet_lr", "unet_ema_decay",
               "train_timesteps", "condition_dropout", "min_snr_gamma", "unet_lr_schedule", "unet_warmup_steps",
               "unet_class_balance")
#: fields added after models were trained: they name a model only when they differ from their default,
#: so that a model trained before they existed (which trained as the default does) keeps its name
_LATER_FIELDS = {"autoencoder_edge_weight", "unet_lr_schedule", "unet_warmup_steps", "unet_class_balance"}


def training_config(config: SynthesisConfig, image_size: int, part: str) -> dict:
    """What identifies a trained ``part`` ("autoencoder" or "unet"): the fields it depends on."""
    fields = AUTOENCODER_FIELDS + (UNET_FIELDS if part == "unet" else ())
    defaults = SynthesisConfig()
    return {"part": part, "image_size": image_size,
            **{name: getattr(config, name) for name in fields
               if name not in _LATER_FIELDS or getattr(config, name) != getattr(defaults, name)}}


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def artifact_names(config: SynthesisConfig, image_size: int) -> dict[str, str]:
    """The names :func:`train_latent_diffusion` gives what it trains: the autoencoder's and the U-Net's fit
    checkpoints and the saved model's folder, each with a key of what that part depends on."""
    unet_key = _key(training_config(config, image_size, "unet"))
    return {"autoencoder": f"ldm-autoencoder-{_key(training_config(config, image_size, 'autoencoder'))}",
            "unet": f"ldm-unet-{unet_key}", "model": f"ldm-{unet_key}"}


def train_autoencoder(train_images: Dataset, val_images: Dataset, config: SynthesisConfig,
                      image_size: int, *, checkpoint_path: str | Path, seed: int,
                      progress: bool | None = None):
    """Train the autoencoder on image datasets yielding ``(x, ...)``; returns it (best weights) and
    the :class:`~cxrlib.train.FitResult`."""
    seed_everything(seed)
    autoencoder = build_autoencoder(config, image_size)
    objective = AutoencoderObjective(autoencoder, config.kl_weight, config.autoencoder_edge_weight)
    generator = torch.Generator().manual_seed(seed)
    result = fit(
        objective, lambda model, batch: model(batch["image"]),
        DataLoader(train_images, batch_size=config.batch_size, shuffle=True, generator=generator),
        DataLoader(val_images, batch_size=config.batch_size),
        optimizer=torch.optim.AdamW(objective.parameters(), lr=config.autoencoder_lr),
        schedule=Schedule(config.autoencoder_epochs, config.patience, min_improvement=config.min_improvement),
        checkpoint=Checkpoint(checkpoint_path, training_config(config, image_size, "autoencoder"), seed),
        # bf16 (on CPUs that compute it) with its attention and group norms in fp32 (build_autoencoder)
        runtime=Runtime(progress=progress))
    return autoencoder, result


@torch.no_grad()
def encode_posteriors(autoencoder: nn.Module, images: Dataset, *, batch_size: int = 64,
                      device: torch.device | None = None, progress: bool | None = None):
    """Posterior mean and std (unscaled) of every image, and its label vector: three tensors."""
    device = device or default_device()
    autoencoder.to(device).eval()
    means, stds, labels = [], [], []
    for batch in tqdm(DataLoader(images, batch_size=batch_size), desc="encode", leave=False,
                      disable=tqdm_disabled(progress)):
        posterior = encode_images(autoencoder, batch["image"].to(device) * 2 - 1)
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        labels.append(batch["labels"].float())
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
    mean, std, labels = batch["mean"], batch["std"], batch["labels"]
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


def _posterior_items(posteriors: tuple[torch.Tensor, ...]) -> TensorItems:
    mean, std, labels = posteriors
    return TensorItems(mean=mean, std=std, labels=labels)


def class_balance_weights(labels: torch.Tensor, power: float) -> torch.Tensor:
    """Draw weights of images with multi-hot ``labels`` (N, findings): the inverse prevalence of each
    image's rarest label (an image without findings has the label No Finding), raised to ``power``
    (0: all alike). With power 1 every label is drawn about as often as the others, as far as the
    multi-label images allow."""
    labels = torch.cat([labels > 0, (labels > 0).sum(1, keepdim=True) == 0], dim=1)
    prevalence = labels.float().mean(0)
    inverse = torch.where(labels, 1 / prevalence.clamp(min=1 / len(labels)), torch.zeros(()))
    return inverse.max(1).values.pow(power).double()


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

    items = _posterior_items(posteriors)
    if config.unet_class_balance:
        # no generator of its own: it draws from the global one, which the loop seeds per epoch
        sampler = WeightedRandomSampler(class_balance_weights(posteriors[2], config.unet_class_balance),
                                        len(items), replacement=True)
        train_loader = DataLoader(items, batch_size=config.batch_size, sampler=sampler)
    else:
        train_loader = DataLoader(items, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr)
    if config.unet_lr_schedule == "cosine":
        scheduler_of_lr = get_cosine_schedule_with_warmup(optimizer, config.unet_warmup_steps,
                                                          config.unet_epochs * len(train_loader))
        schedule = Schedule(config.unet_epochs)
    else:
        scheduler_of_lr = None
        schedule = Schedule(config.unet_epochs, config.patience, min_improvement=config.min_improvement)
    result = fit(
        unet, loss_fn, train_loader, DataLoader(_posterior_items(val_posteriors), batch_size=config.batch_size),
        optimizer=optimizer, schedule=schedule, scheduler=scheduler_of_lr,
        # not the scaling factor: it follows from the autoencoder, and its last digits from the device
        checkpoint=Checkpoint(checkpoint_path, training_config(config, image_size, "unet"), seed),
        # bf16 (on CPUs that compute it) with its attention in fp32 (ConditionalLatentUNet); channels_last
        # slows it down (benchmarks/bench_cpu_paths.py)
        runtime=Runtime(progress=progress), channels_last=False, ema_decay=config.unet_ema_decay or None)
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
    names = artifact_names(config, image_size)
    folder = Path(artifact_path(names["model"]))
    autoencoder, ae_fit = train_autoencoder(
        train_images, val_images, config, image_size, seed=seed, progress=progress,
        checkpoint_path=artifact_path(names["autoencoder"]))
    train_post = encode_posteriors(autoencoder, train_images, progress=progress)
    val_post = encode_posteriors(autoencoder, val_images, progress=progress)
    scaling = latent_scaling_factor(*train_post[:2])
    autoencoder.register_to_config(scaling_factor=scaling)
    unet, scheduler, unet_fit = train_latent_unet(
        train_post, val_post, config, image_size, scaling, seed=seed, progress=progress,
        checkpoint_path=artifact_path(names["unet"]))
    if ae_fit.trained or unet_fit.trained or not folder.is_dir():
        # saved only when new: processes that load a trained model side by side must not rewrite its folder
        LatentDiffusion(autoencoder.cpu(), unet.cpu(), scheduler).save(folder)
    return TrainedLatentDiffusion(LatentDiffusion.load(folder), folder, ae_fit, unet_fit)

