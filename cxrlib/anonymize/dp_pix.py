"""DP-Pix: differentially private pixelization (Fan, 2018), a baseline of PriCheXy-Net's comparison.

The image is cut into a fixed grid of b x b cells anchored at the top-left corner; every cell is
replaced by its mean plus Laplace noise, and the result is clipped to [0, 1]. Two images that differ
in at most ``m`` pixels (by at most 1 each, on [0, 1]) have cell means that differ by at most
``m / b**2``, so noise of scale ``m / (b**2 * eps)`` makes the release eps-differentially private
(the paper writes ``255 * m / (b**2 * eps)`` on 8-bit images). PriCheXy-Net uses m = 1, eps = 0.1 and
b up to 8; b = 8 gives a noise scale of 0.156.

Sizes not divisible by b: the last row and column of cells are partial. A partial cell of n < b**2
real pixels is replaced by the mean of those n pixels, with noise of scale ``m / (n * eps)`` -- the
same rule as a full cell, with n in place of b**2, so that the eps guarantee holds for every cell
(the same scale as a full cell would under-protect the smaller cell, whose mean moves more when a
pixel changes). The output has the input's size. (The official code's ``unfold`` silently drops the
remainder instead; at 256 px and b in {2, 4, 8} nothing is dropped, so both agree there.)

Randomness: a :class:`DPPix` owns a ``torch.Generator`` seeded once at construction. Every call draws
fresh noise from it, as a data publisher would (two releases of the same image must not share their
noise, or averaging them would cancel it); :meth:`DPPix.reset` re-seeds it, so the same sequence of
calls after the same reset gives the same outputs. Noise is drawn on the CPU and moved to the images'
device, so the outputs do not depend on the device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from cxrlib.anonymize.base import Anonymizer, register


def check_settings(b: int, eps: float, m: float) -> None:
    """Raise ``ValueError`` unless b is an integer >= 1 and eps, m are finite and positive."""
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"DP-Pix cell size b must be an integer >= 1, got {b!r}")
    if not (math.isfinite(eps) and eps > 0 and math.isfinite(m) and m > 0):
        raise ValueError(f"DP-Pix needs finite eps > 0 and m > 0, got eps={eps}, m={m}")


def cell_means(images: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each b x b cell over its real pixels, and each cell's pixel count.

    ``images`` (B, C, H, W) -> means (B, C, ceil(H/b), ceil(W/b)) and counts (ceil(H/b), ceil(W/b)).
    """
    height, width = images.shape[-2:]
    pad = (0, -width % b, 0, -height % b)
    sums = F.avg_pool2d(F.pad(images, pad), b, divisor_override=1)
    ones = torch.ones(1, 1, height, width, dtype=images.dtype, device=images.device)
    counts = F.avg_pool2d(F.pad(ones, pad), b, divisor_override=1)[0, 0]
    return sums / counts, counts


def laplace_noise(shape: tuple[int, ...], scale: torch.Tensor | float,
                  generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, scale) samples on the CPU: the difference of two unit exponentials, scaled."""
    first = torch.empty(shape).exponential_(generator=generator)
    second = torch.empty(shape).exponential_(generator=generator)
    return (first - second) * scale


def dp_pixelize(images: torch.Tensor, b: int, eps: float, m: float,
                generator: torch.Generator) -> torch.Tensor:
    """DP-Pix of ``images`` (B, C, H, W) in [0, 1]; see the module text for partial cells."""
    check_settings(b, eps, m)
    height, width = images.shape[-2:]
    means, counts = cell_means(images, b)
    scale = m / (counts.cpu().float() * eps)
    noise = laplace_noise(tuple(means.shape), scale, generator).to(images.device, images.dtype)
    noisy = (means + noise).clamp(0.0, 1.0)
    return noisy.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)[..., :height, :width]


def noise_scale(b: int, eps: float, m: float) -> float:
    """Laplace scale of a full cell on [0, 1] images."""
    return m / (b * b * eps)


@register
class DPPix(Anonymizer):
    """DP-Pix with cell size ``b``, privacy budget ``eps`` and ``m``-neighbourhood; noise seeded by ``seed``."""

    name = "dp_pix"

    def __init__(self, b: int, eps: float = 0.1, m: float = 1.0, seed: int = 0):
        super().__init__()
        check_settings(b, eps, m)
        self.b, self.eps, self.m, self.seed = b, float(eps), float(m), int(seed)
        self.noise_generator = torch.Generator().manual_seed(self.seed)

    def params(self) -> dict[str, Any]:
        return {"b": self.b, "eps": self.eps, "m": self.m, "seed": self.seed}

    @property
    def noise_scale(self) -> float:
        return noise_scale(self.b, self.eps, self.m)

    def reset(self, seed: int | None = None) -> DPPix:
        """Re-seed the noise (with ``seed``, or the constructor's seed): the next calls repeat."""
        self.noise_generator.manual_seed(self.seed if seed is None else int(seed))
        return self

    def anonymize(self, images: torch.Tensor) -> torch.Tensor:
        return dp_pixelize(images, self.b, self.eps, self.m, self.noise_generator)
