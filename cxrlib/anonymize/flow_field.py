"""PriCheXy-Net's anonymizer: a U-Net predicts a smooth flow field that slightly deforms the radiograph.

The generator ``G`` (U-Net, 1 channel in, 2 out, tanh) maps an image to a field in [-1, 1]; the
sampling grid is ``identity - mu * smooth(G(x))`` at 256 px (the official code) and the output is
``grid_sample(x, grid)`` with border padding and ``align_corners=True``.

**Geometry: the paper's, in pixels, at every image size.** mu is read as in the paper at 256 px
(normalized coordinates of a 256 px image) and the displacement it allows is kept in *pixels* at the
profile's size: a pixel is sampled from at most ``mu * 255 / 2`` pixels away along each axis
(:func:`displacement_bound_pixels`; 0.13 / 0.64 / 1.28 px for mu 0.001 / 0.005 / 0.01), and the
smoothing is the official Gaussian in pixels (kernel 9, sigma 2) whatever the size. Displacement and
smoothing then keep the paper's ratio (1.28 px = 0.64 sigma at mu 0.01), so the fields do not fold
(:func:`jacobian_determinant` measures it; :func:`jacobian_lower_bound` proves it for every generator;
:func:`worst_case_jacobian` searches for the output that folds most). At 64 px the anatomy is four
times smaller than at 256 px, so the same displacement moves it four times as far in units of the
anatomy: a stronger deformation than the paper's relative to the body, the same one relative to the
pixel grid a re-identification network reads. Why not mu as a share of the image (0.32 px at
64 px), nor a shrunk kernel: docs/decisions.md.

In normalized grid coordinates of an S px image the field is scaled by ``mu * 255 / (S - 1)``
(:func:`grid_amplitude`); at 256 px that is mu itself, as in the official code.

**Smoothing.** The official code smooths the whole grid (identity included) with a zero-padded
Gaussian. Zero padding pulls the identity's border values towards 0, so even ``G = 0`` resamples the
outer ``kernel // 2`` pixels from well inside the image. cxrlib smooths the displacement
``a * G(x)`` instead: identical away from the border (a symmetric, normalized kernel leaves the
linear identity unchanged there), exactly the identity for ``mu = 0`` or ``G = 0``, and the bound above
holds everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from cxrlib.anonymize.adversarial import (AdversarialResult, AdversarialSettings, batch_loader,
                                         pretrain_anonymizer, train_adversarial)
from cxrlib.anonymize.base import Anonymizer, register
from cxrlib.config import AnonymizationConfig
from cxrlib.models.unets import UNet
from cxrlib.parallel import map_in_processes
from cxrlib.checkpoints import checkpoint_finished
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule

REFERENCE_SIZE = 256
REFERENCE_KERNEL, REFERENCE_SIGMA = 9, 2.0


def displacement_bound_pixels(mu: float) -> float:
    """The largest distance, in pixels along each axis, between a pixel and where it is sampled from:
    the paper's at 256 px, at every image size."""
    return mu * (REFERENCE_SIZE - 1) / 2


def grid_amplitude(mu: float, image_size: int) -> float:
    """The factor of ``smooth(G(x))`` in normalized grid coordinates of an ``image_size`` px image that
    gives :func:`displacement_bound_pixels` (one normalized unit is ``(S - 1) / 2`` pixels)."""
    return displacement_bound_pixels(mu) * 2 / (image_size - 1)


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """det of the Jacobian of ``p -> p + displacement(p)`` per pixel, (B, S, S), from (B, 2, S, S)
    displacements (x, y) in pixels (e.g. :meth:`FlowFieldAnonymizer.displacement_pixels`).

    Central differences inside the image, one-sided at its border. Positive everywhere: the sampling
    map keeps the orientation and does not fold; 1 is the identity; at or below 0 the image is folded
    over itself there.
    """
    if displacement.ndim != 4 or displacement.shape[1] != 2:
        raise ValueError(f"displacement must be (B, 2, H, W), got {tuple(displacement.shape)}")
    dux_dy, dux_dx = torch.gradient(displacement[:, 0], dim=(1, 2))
    duy_dy, duy_dx = torch.gradient(displacement[:, 1], dim=(1, 2))
    return (1 + dux_dx) * (1 + duy_dy) - dux_dy * duy_dx


def jacobian_lower_bound(mu: float, image_size: int, smoothing_kernel: int, smoothing_sigma: float) -> float:
    """A guaranteed lower bound of :func:`jacobian_determinant` over every generator output (``|G| <= 1``).

    Each partial derivative of the displacement is :func:`displacement_bound_pixels` times a fixed
    linear map of ``G``: the finite difference of :func:`jacobian_determinant` (central, one-sided at the border)
    after the separable, zero-padded Gaussian. Over ``|G| <= 1`` such a map is at most the L1 norm of
    its row; for the separable filter that is the 1-D difference-of-Gaussian row's norm times the 1-D
    Gaussian row's (at most 1). With every partial at most ``b`` in size, the determinant
    ``(1 + a)(1 + d) - bc`` is at least ``(1 - b)^2 - b^2 = 1 - 2 b`` (for ``b <= 1``; beyond,
    ``(1 - b)(1 + b) - b^2 = 1 - 2 b^2``). Above 0: no generator, trained or
    adversarial, can fold the image at this mu, size and smoothing.
    """
    offsets = torch.arange(smoothing_kernel, dtype=torch.float64) - (smoothing_kernel - 1) / 2
    profile = torch.exp(-0.5 * (offsets / smoothing_sigma) ** 2)
    profile = profile / profile.sum()
    radius = smoothing_kernel // 2
    rows = torch.arange(image_size)
    # the 1-D zero-padded filter as a matrix: blur[i, j] = profile[j - i + radius]
    shift = rows[None, :] - rows[:, None] + radius
    blur = torch.where((shift >= 0) & (shift < smoothing_kernel),
                       profile[shift.clamp(0, smoothing_kernel - 1)], torch.zeros((), dtype=torch.float64))
    difference = torch.gradient(blur, dim=0)[0]  # torch.gradient's own differences, applied to each column
    derivative = difference.abs().sum(dim=1).max() * blur.abs().sum(dim=1).max()
    bound = displacement_bound_pixels(mu) * float(derivative)
    return 1 - 2 * bound if bound <= 1 else 1 - 2 * bound ** 2


def worst_case_jacobian(mu: float, image_size: int, smoothing_kernel: int, smoothing_sigma: float, *,
                        steps: int = 300, seed: int = 0) -> float:
    """The smallest Jacobian determinant a generator output (``|G| <= 1``) reaches when it is chosen to
    fold the field: ``G = tanh(3 theta)`` with ``theta`` optimized (Adam, ``steps``) to lower a soft
    minimum of the determinant over one image. A search, so an estimate from above of the true worst
    case (which lies between :func:`jacobian_lower_bound` and this): below 0, a folding field exists.
    """
    generator = torch.Generator().manual_seed(seed)
    smoothing = GaussianSmoothing(2, smoothing_kernel, smoothing_sigma)
    theta = torch.randn(1, 2, image_size, image_size, generator=generator).requires_grad_()
    optimizer = torch.optim.Adam([theta], lr=0.1)
    pixels = displacement_bound_pixels(mu)

    def smallest(field: torch.Tensor) -> torch.Tensor:
        return jacobian_determinant(-pixels * smoothing(field))

    for _ in range(steps):
        det = smallest(torch.tanh(3 * theta)).flatten()
        loss = torch.logsumexp(-20 * det, 0) / 20  # a soft minimum, so that every low pixel pulls
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(min(smallest(torch.tanh(3 * theta)).min(), smallest(torch.sign(theta)).min()))


def identity_grid(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The (1, 2, S, S) grid that ``grid_sample(..., align_corners=True)`` maps to the input itself.

    Channel 0 is x (column), channel 1 is y (row), both in [-1, 1].
    """
    coords = torch.linspace(-1.0, 1.0, size, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack((cols, rows)).unsqueeze(0)


class GaussianSmoothing(nn.Module):
    """Depth-wise 2-D Gaussian filter, zero padding, output the same size as the input."""

    def __init__(self, channels: int, kernel_size: int, sigma: float):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"smoothing kernel_size must be a positive odd number, got {kernel_size}")
        if sigma <= 0:
            raise ValueError(f"smoothing sigma must be positive, got {sigma}")
        offsets = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = torch.outer(profile, profile)
        kernel = (kernel / kernel.sum()).expand(channels, 1, kernel_size, kernel_size).contiguous()
        # derived from the constructor arguments, so not part of the saved weights
        self.register_buffer("weight", kernel, persistent=False)
        self.channels, self.padding = channels, kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.padding, groups=self.channels)


@register
class FlowFieldAnonymizer(Anonymizer):
    """PriCheXy-Net's deformation: ``grid = identity - a * smooth(G(x))``, then ``grid_sample``, with
    ``a = grid_amplitude(mu, image_size)`` (mu itself at the paper's 256 px)."""

    name = "flow_field"

    def __init__(self, mu: float, image_size: int, features: int = 32, poolings: int = 4,
                 smoothing_kernel: int = REFERENCE_KERNEL, smoothing_sigma: float = REFERENCE_SIGMA):
        super().__init__()
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be a finite number >= 0, got {mu}")
        if image_size % 2 ** poolings:
            raise ValueError(f"image_size {image_size} must be divisible by 2 ** poolings = {2 ** poolings}")
        self.mu, self.image_size = float(mu), int(image_size)
        self.features, self.poolings = int(features), int(poolings)
        self.smoothing_kernel, self.smoothing_sigma = int(smoothing_kernel), float(smoothing_sigma)
        self.generator = UNet(1, 2, features=features, poolings=poolings, activation="relu", output="tanh")
        self.smoothing = GaussianSmoothing(2, smoothing_kernel, smoothing_sigma)
        self.register_buffer("identity", identity_grid(image_size), persistent=False)

    def params(self) -> dict[str, Any]:
        return {"mu": self.mu, "image_size": self.image_size, "features": self.features,
                "poolings": self.poolings, "smoothing_kernel": self.smoothing_kernel,
                "smoothing_sigma": self.smoothing_sigma}

    def with_mu(self, mu: float) -> FlowFieldAnonymizer:
        """A copy with another deformation strength and the same generator weights."""
        other = FlowFieldAnonymizer(**{**self.params(), "mu": mu})
        other.load_state_dict(self.state_dict())
        return other.to(self.identity.device).train(self.training)

    @property
    def displacement_bound(self) -> float:
        """At most this many pixels along each axis between a pixel and its source."""
        return displacement_bound_pixels(self.mu)

    def flow(self, images: torch.Tensor) -> torch.Tensor:
        """Offsets (B, 2, S, S) in normalized coordinates (x, y) added to the identity grid."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this flow field was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(images.shape[-2:])}")
        return -grid_amplitude(self.mu, self.image_size) * self.smoothing(self.generator(images))

    def displacement_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Where each output pixel is sampled from, relative to itself, in pixels (B, 2, S, S), (x, y)."""
        return self.flow(images) * (self.image_size - 1) / 2

    @torch.no_grad()
    def smallest_jacobian(self, images: torch.Tensor, batch_size: int = 256) -> float:
        """The smallest Jacobian determinant of the fields over ``images`` (> 0: nothing folds)."""
        return min(float(jacobian_determinant(self.displacement_pixels(images[i:i + batch_size])).min())
                   for i in range(0, len(images), batch_size))

    def anonymize(self, images: torch.Tensor) -> torch.Tensor:
        grid = (self.identity.to(images.dtype) + self.flow(images)).permute(0, 2, 3, 1)
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                             align_corners=True)


@dataclass
class PriCheXyNet:
    """The outcome of :func:`train_prichexy_net`: the pretraining and one trained anonymizer per mu."""

    pretraining: FitResult
    anonymizers: dict[float, FlowFieldAnonymizer]
    results: dict[float, AdversarialResult]
    #: the diagnostic, when asked for: the largest mu trained against adversaries that are never
    #: updated (can the generator fool the frozen siamese network at all at this geometry?)
    frozen_adversaries: tuple[FlowFieldAnonymizer, AdversarialResult] | None = None


def train_prichexy_net(config: AnonymizationConfig, image_size: int, *, siamese: nn.Module,
                       classifier: nn.Module, images: tuple[Dataset, Dataset], pairs: tuple[Dataset, Dataset],
                       artifact_path: Callable[[str], Path], identity: Mapping[str, Any], seed: int,
                       processes: int = 1, frozen_adversaries_diagnostic: bool = False,
                       progress: bool | None = None, accelerator: Accelerator | None = None) -> PriCheXyNet:
    """Pretrain the generator once, then train it adversarially for every mu of ``config.mu_values``
    (``processes`` of them side by side on a CPU: :func:`cxrlib.parallel.map_in_processes`).

    As in the official code the generator is pretrained once, with the largest mu, to reproduce its
    input, and every mu starts from that generator. ``images`` are (train, val) datasets whose items
    start with an image; ``pairs`` are (train, val) :class:`~cxrlib.data.datasets.PairDataset` with the first images' findings (``meta``).
    ``artifact_path(name)`` says where a trained model lives (``prichexy_pretrain`` and
    :func:`checkpoint_name` of each mu); ``identity`` names the siamese network and classifier the training starts
    from, so that a change of either retrains. Finished checkpoints are loaded, not retrained.
    ``frozen_adversaries_diagnostic``: also train the largest mu with ``update_adversaries=False``
    (:attr:`PriCheXyNet.frozen_adversaries`), side by side with the others.
    """
    if not config.mu_values:
        raise ValueError("config.mu_values is empty: nothing to train")
    torch.manual_seed(seed)  # the generator's initial weights
    pretrained = FlowFieldAnonymizer(mu=max(config.mu_values), image_size=image_size,
                                     features=config.generator_features, poolings=config.generator_poolings,
                                     smoothing_kernel=config.smoothing_kernel,
                                     smoothing_sigma=config.smoothing_sigma)
    pretraining = pretrain_anonymizer(
        pretrained, batch_loader(images[0], config.batch_size, seed), batch_loader(images[1], config.batch_size),
        lr=config.pretrain_lr, max_epochs=config.pretrain_epochs,
        checkpoint=Checkpoint(artifact_path("prichexy_pretrain"),
                              {"anonymizer": pretrained.config(), "batch_size": config.batch_size}, seed),
        runtime=Runtime(accelerator, progress))
    settings = {"anonymization": dataclasses.asdict(config), "pretrained": pretraining.checkpoint_path.name,
                **identity}
    settings_of = {mu: (config, artifact_path(checkpoint_name(mu))) for mu in config.mu_values}
    if frozen_adversaries_diagnostic:
        settings_of["diagnostic"] = (dataclasses.replace(config, update_adversaries=False),
                                     artifact_path(checkpoint_name(max(config.mu_values)) + "_frozen_adversaries"))
    jobs = [(pretrained.with_mu(max(config.mu_values) if key == "diagnostic" else key), siamese, classifier, pairs,
             job_config, path, settings, seed, progress if processes <= 1 else False, accelerator)
            for key, (job_config, path) in settings_of.items()]
    trained = dict(zip(settings_of, map_in_processes(
        _train_adversarially, jobs, processes=1 if accelerator else processes, desc="PriCheXy-Net settings",
        progress=progress, inline=[checkpoint_finished(path) for _, path in settings_of.values()])))
    diagnostic = trained.pop("diagnostic", None)
    return PriCheXyNet(pretraining=pretraining, anonymizers={mu: a for mu, (a, _) in trained.items()},
                       results={mu: r for mu, (_, r) in trained.items()}, frozen_adversaries=diagnostic)


def _train_adversarially(anonymizer: FlowFieldAnonymizer, siamese: nn.Module, classifier: nn.Module,
                         pairs: tuple[Dataset, Dataset], config: AnonymizationConfig, checkpoint_path: Path,
                         settings: dict[str, Any], seed: int, progress: bool | None,
                         accelerator: Accelerator | None) -> tuple[FlowFieldAnonymizer, AdversarialResult]:
    """One mu of :func:`train_prichexy_net`: the pretrained generator trained against the judges."""
    result = train_adversarial(
        anonymizer, siamese, classifier, batch_loader(pairs[0], config.batch_size, seed, config.pairs_per_epoch),
        batch_loader(pairs[1], config.batch_size),
        schedule=Schedule(config.adversarial_epochs, config.adversarial_patience),
        checkpoint=Checkpoint(checkpoint_path, anonymizer.config(), seed, training=settings),
        settings=AdversarialSettings.of(config), runtime=Runtime(accelerator, progress))
    return anonymizer.eval(), result


def checkpoint_name(mu: float) -> str:
    """``prichexy_mu0p04`` for mu 0.04: no dot, which a file suffix would swallow."""
    return f"prichexy_mu{mu:g}".replace(".", "p")
