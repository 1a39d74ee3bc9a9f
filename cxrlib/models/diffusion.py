"""The latent diffusion model: a 1-channel ``AutoencoderKL`` and a finding-conditioned latent U-Net.

Both are diffusers models, built from :class:`~cxrlib.config.SynthesisConfig`, saved with
``save_pretrained`` into one folder and loaded from that path only (``local_files_only``), so nothing
ever reaches for a hub.

**Conditioning: the 14-label multi-hot vector, not single-label classes.** ChestX-ray14 is
multi-label: many images with findings carry several. Single-label classes (No Finding + 14) would
throw those images out of training, would leave rare findings with a handful of examples, and would
make the synthetic training set's label distribution differ from the real one, so the
synthetic-vs-real classifier comparison would also measure a label shift. With the multi-hot vector
every training image is used, co-occurrences are learned, and a synthetic dataset can be drawn with
exactly the real training split's label vectors. A single finding is still a valid condition (a
one-hot vector; "No Finding" is the all-zero vector), so a grid per finding needs nothing special.

The vector goes through a small MLP to the U-Net's time-embedding width and is added to the time
embedding (``class_embed_type="identity"``). One extra input flag marks the **null condition** of
classifier-free guidance; it cannot be confused with "No Finding" (all zeros, flag off).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from cxrlib.config import SynthesisConfig
from cxrlib.data.chestxray14 import LABELS

AUTOENCODER, UNET, SCHEDULER = "autoencoder", "unet", "scheduler"
#: the samplers :meth:`LatentDiffusion.sampling_scheduler` builds ("ddim" is the profiles' sampler)
SAMPLERS = ("ddim", "dpm")


def _as_float(value: torch.Tensor | None) -> torch.Tensor | None:
    return value.float() if value is not None and value.is_floating_point() else value


class CPUFloat32Attention(AttnProcessor2_0):
    """diffusers' scaled-dot-product attention, computed in fp32 under CPU bf16 autocast (elsewhere
    unchanged). At these models' short sequences (16 to 64 positions) the CPU's bf16 attention
    kernels are slow: in one measurement (Intel Xeon with AMX) the U-Net's train step (batch 16, one
    thread) took 150 ms in bf16 against 118 ms in fp32, and 101-109 ms in bf16 with its attention in fp32."""

    # the arguments by name, since diffusers passes an attention only the keywords its processor names
    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        with torch.autocast("cpu", enabled=False):
            return super().__call__(attn, *map(_as_float, (hidden_states, encoder_hidden_states, attention_mask, temb)))


class CPUFloat32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 under CPU bf16 autocast (CUDA autocast does so already): the
    autoencoder's bf16 group norms, at up to 32 x 32 positions, took three times as long as fp32's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


def keep_fp32_on_cpu(model: nn.Module, *, group_norm: bool) -> nn.Module:
    """``model`` (in place) with its attention, and with ``group_norm`` its group norms, computed in
    fp32 under CPU bf16 autocast, so that bf16 speeds up its convolutions without the layers whose
    CPU bf16 kernels are slower than fp32. Weights and state dict are unchanged."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(CPUFloat32Attention())
        for name, child in module.named_children():
            if group_norm and type(child) is nn.GroupNorm:
                replacement = CPUFloat32GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                replacement.weight, replacement.bias = child.weight, child.bias
                setattr(module, name, replacement)
    return model


def _norm_groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups that divide every width (32 as in diffusers when the widths allow it)."""
    return math.gcd(32, *channels)


def downsampling_factor(config: SynthesisConfig) -> int:
    """Image side over latent side: the patch size, then a halving per width after the first."""
    return config.autoencoder_patch_size * 2 ** (len(config.autoencoder_channels) - 1)


def build_autoencoder(config: SynthesisConfig, image_size: int) -> AutoencoderKL:
    """A KL autoencoder of 1-channel images; each width after the first halves the resolution.

    With ``autoencoder_patch_size`` p > 1 the image enters as p x p patches stacked into p² channels
    (``pixel_unshuffle``, lossless) and leaves through the inverse: the network never runs at full
    resolution, where its narrow first width makes convolutions slow on a CPU. The saved model keeps
    p as its ``in_channels`` (p²), since the images have one channel (:func:`encode_images`).
    """
    factor = downsampling_factor(config)
    if image_size % factor:
        raise ValueError(f"image size {image_size} is not divisible by the autoencoder's downsampling "
                         f"factor {factor} (synthesis.autoencoder_patch_size={config.autoencoder_patch_size}, "
                         f"autoencoder_channels={config.autoencoder_channels})")
    levels = len(config.autoencoder_channels)
    channels = config.autoencoder_patch_size ** 2
    return _autoencoder_in_mixed_precision(AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.autoencoder_channels), layers_per_block=1,
        norm_num_groups=_norm_groups(tuple(config.autoencoder_channels)), sample_size=image_size,
        # replaced by 1 / std of the training latents once the autoencoder is trained
        scaling_factor=1.0,
    ))


def _autoencoder_in_mixed_precision(autoencoder: AutoencoderKL) -> AutoencoderKL:
    # in bf16 training, with attention and group norm in fp32: 100 ms per step against 126 ms in fp32
    # (batch 16, one thread, Intel Xeon with AMX; an AMD EPYC with AVX-512 BF16 gains less: bench_cpu_paths)
    return keep_fp32_on_cpu(autoencoder, group_norm=True)


def _patch_size(autoencoder: AutoencoderKL) -> int:
    return math.isqrt(autoencoder.config.in_channels)


def encode_images(autoencoder: AutoencoderKL, images: torch.Tensor) -> DiagonalGaussianDistribution:
    """The posterior of images in [-1, 1] (B, 1, S, S)."""
    return autoencoder.encode(F.pixel_unshuffle(images, _patch_size(autoencoder))).latent_dist


def decode_latents(autoencoder: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images in about [-1, 1] (B, 1, S, S) from unscaled latents."""
    return F.pixel_shuffle(autoencoder.decode(latents).sample, _patch_size(autoencoder))


class ConditionalLatentUNet(ModelMixin, ConfigMixin):
    """``UNet2DModel`` on latents, conditioned on a multi-hot finding vector or the null condition."""

    @register_to_config
    def __init__(self, sample_size: int, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, num_labels: int = len(LABELS)):
        super().__init__()
        embed_dim = block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.label_embedding = nn.Sequential(
            nn.Linear(num_labels + 1, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1),
            up_block_types=("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            norm_num_groups=_norm_groups(tuple(block_out_channels)),
            # the label embedding arrives already at the embedding width and is added to the time embedding
            class_embed_type="identity",
        )
        # its group norms stay bf16: in fp32 they made sampling (batch 128) slower and training no faster
        keep_fp32_on_cpu(self.unet, group_norm=False)

    def condition(self, labels: torch.Tensor, unconditional: torch.Tensor | None = None) -> torch.Tensor:
        """The network input for ``labels`` (B, 14); rows where ``unconditional`` is true become the
        null condition (labels zeroed, flag set)."""
        num_labels = self.config.num_labels
        if labels.ndim != 2 or labels.shape[1] != num_labels:
            raise ValueError(f"labels must have shape (batch, {num_labels}), got {tuple(labels.shape)}")
        labels = labels.to(self.dtype)
        if unconditional is None:
            unconditional = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        flag = unconditional.to(labels.dtype).unsqueeze(1)
        return torch.cat([labels * (1 - flag), flag], dim=1)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
                unconditional: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise for noisy ``latents`` at ``timesteps`` under the given condition."""
        embedding = self.label_embedding(self.condition(labels, unconditional))
        return self.unet(latents, timesteps, class_labels=embedding).sample


def build_unet(config: SynthesisConfig, image_size: int) -> ConditionalLatentUNet:
    return ConditionalLatentUNet(
        sample_size=image_size // downsampling_factor(config), latent_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels), layers_per_block=config.unet_layers_per_block)


def build_noise_scheduler(config: SynthesisConfig) -> DDPMScheduler:
    """The DDPM training schedule of latent diffusion (Rombach et al.): scaled-linear betas
    0.00085..0.012, epsilon prediction; no clipping, since latents are not confined to [-1, 1]."""
    return DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                         clip_sample=False)


@dataclass
class LatentDiffusion:
    """The trained parts that sampling needs, saved and loaded as one folder."""

    autoencoder: AutoencoderKL
    unet: ConditionalLatentUNet
    scheduler: DDPMScheduler

    @property
    def scaling_factor(self) -> float:
        return float(self.autoencoder.config.scaling_factor)

    def to(self, device: torch.device | str) -> "LatentDiffusion":
        self.autoencoder.to(device)
        self.unet.to(device)
        return self

    def ddim_scheduler(self, steps: int) -> DDIMScheduler:
        """DDIM over ``steps`` steps that starts at the last training step (pure noise, as sampling
        begins): ``trailing`` spacing, not diffusers' default ``leading``, whose first step at
        t = 1000 - 1000 / steps hands pure noise to a model that expects some signal there (Lin et
        al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2024)."""
        scheduler = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        return scheduler

    def dpm_scheduler(self, steps: int) -> DPMSolverMultistepScheduler:
        """DPM-Solver++ multistep (Lu et al., 2022; diffusers' defaults: second order, first order in
        the last steps below 15) over ``steps`` steps of the same training schedule, with the same
        ``trailing`` spacing as :meth:`ddim_scheduler`, so the two visit the same timesteps."""
        scheduler = DPMSolverMultistepScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        return scheduler

    def sampling_scheduler(self, sampler: str, steps: int) -> DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh scheduler of ``sampler`` (one of :data:`SAMPLERS`) over ``steps`` steps: fresh, since
        the multistep solver keeps the model outputs of its last steps."""
        if sampler == "ddim":
            return self.ddim_scheduler(steps)
        if sampler == "dpm":
            return self.dpm_scheduler(steps)
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latent means of images in [0, 1] (B, 1, S, S)."""
        return encode_images(self.autoencoder, images * 2 - 1).mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from scaled latents."""
        decoded = decode_latents(self.autoencoder, latents / self.scaling_factor)
        return ((decoded + 1) / 2).clamp(0, 1)

    def save(self, folder: str | Path) -> Path:
        """``save_pretrained`` of each part into ``folder``; written beside it and renamed, so an
        interrupted save never leaves a folder that loads."""
        folder = Path(folder)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.autoencoder.save_pretrained(partial / AUTOENCODER)
        self.unet.save_pretrained(partial / UNET)
        self.scheduler.save_pretrained(partial / SCHEDULER)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LatentDiffusion":
        folder = Path(folder)
        missing = [part for part in (AUTOENCODER, UNET, SCHEDULER) if not (folder / part).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder}: not a saved latent diffusion model (missing {missing})")
        return cls(
            autoencoder=_autoencoder_in_mixed_precision(
                AutoencoderKL.from_pretrained(folder / AUTOENCODER, local_files_only=True)),
            unet=ConditionalLatentUNet.from_pretrained(folder / UNET, local_files_only=True),
            scheduler=DDPMScheduler.from_pretrained(folder / SCHEDULER, local_files_only=True),
        )
