"""How radiographs look, as numbers a phantom can be held against real images with: the pooled
intensity histogram and the radial power spectrum (texture at each spatial frequency).

Both work on (N, S, S) uint8 pixels of one image size, so the phantom and a real set are compared at
the same resolution (the cache of each at the profile's size).
"""

from __future__ import annotations

import numpy as np

#: intensity bins of :func:`intensity_histogram` (8-bit levels, 32 bins)
HISTOGRAM_BINS = np.linspace(0, 256, 33)


def intensity_histogram(pixels: np.ndarray) -> np.ndarray:
    """The share of all pixels of ``pixels`` (N, S, S) in each of :data:`HISTOGRAM_BINS`' 32 bins."""
    counts, _ = np.histogram(np.asarray(pixels), bins=HISTOGRAM_BINS)
    return counts / max(counts.sum(), 1)


def radial_power_spectrum(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(frequency, power)``: the mean power of the images' 2-D spectra in rings of spatial frequency
    (cycles per image width, 1 .. S/2), each image standardized first (zero mean, unit sd) so that the
    spectrum's shape, not the exposure, is compared. Power falls with frequency as 1/f^a; a steeper fall
    is a smoother image."""
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"pixels must be (N, S, S), got {x.shape}")
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x /= np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-8)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0) / x.shape[1] ** 2
    size = x.shape[1]
    fy, fx = np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size, indexing="ij")
    ring = np.rint(np.hypot(fy, fx)).astype(int)
    frequency = np.arange(1, size // 2 + 1)
    total = np.bincount(ring.ravel(), power.ravel(), minlength=size)
    count = np.bincount(ring.ravel(), minlength=size)
    return frequency, total[frequency] / count[frequency]


def spectral_slope(frequency: np.ndarray, power: np.ndarray) -> float:
    """The exponent ``a`` of a 1/f^a fit to a radial power spectrum (least squares in log-log)."""
    slope, _ = np.polyfit(np.log(frequency), np.log(power), 1)
    return float(-slope)
