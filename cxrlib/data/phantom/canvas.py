"""The rendering surface: resolution (supersampling), seeded noise tiles, and the canvas that maps
patient coordinates onto the image through a scan's pose."""

from __future__ import annotations

import math

import numpy as np

from cxrlib.data.phantom.common import _TEXTURE, MM, _rng


def supersampling(size: int) -> int:
    """How many rendered pixels per output pixel and axis: at least 256 rendered pixels across, at most 4x."""
    return min(max(256 // size, 1), 4)


class Textures:
    """Seeded noise tiles twice the image size; each scan reads windows at its own offsets. ``coarse``
    and ``fine`` (anatomy, findings) are at the rendering resolution, ``noise`` and ``mottle`` (detector)
    at the output size."""

    def __init__(self, size: int, seed: int):
        rng = _rng(seed, _TEXTURE, size)
        canvas = size * supersampling(size)
        self.size = size
        self.noise = self._filtered(rng, 2 * size, 0.5)
        self.coarse = self._filtered(rng, 2 * canvas, 0.035 * canvas)
        self.fine = self._filtered(rng, 2 * canvas, 0.009 * canvas)
        self.mottle = self._filtered(rng, 2 * size, 0.035 * size)

    @staticmethod
    def _filtered(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
        white = rng.standard_normal((n, n)).astype(np.float32)
        fy = np.fft.fftfreq(n)[:, None]
        fx = np.fft.rfftfreq(n)[None, :]
        spectrum = np.fft.rfft2(white) * np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
        tile = np.fft.irfft2(spectrum, s=(n, n)).astype(np.float32)
        return tile / tile.std()

    def window(self, tile: np.ndarray, shape: tuple[int, int], key: int) -> np.ndarray:
        h, w = shape
        oy = key % (tile.shape[0] - h + 1)
        ox = (key // 65_537) % (tile.shape[1] - w + 1)
        return tile[oy:oy + h, ox:ox + w]


def _step(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft 0/1 step of a signed distance, one ``eps`` wide."""
    out = d * (1.0 / eps)
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


class _Canvas:
    """An attenuation image and the pose that maps patient coordinates onto it."""

    def __init__(self, size: int, scan: dict):
        self.n = size
        angle = np.deg2rad(scan["rotation_deg"])
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))
        self.m = scan["magnification"]
        self.tx, self.ty = scan["shift_x"], scan["shift_y"]
        self.coord = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0)
        self.pixel = 2.0 / size / self.m  # one pixel in patient units
        self.eps = max(scan["blur_mm"] * MM, self.pixel)
        self.attenuation = np.zeros((size, size), np.float32)
        self.air = np.zeros((size, size), np.float32)
        #: mediastinum and heart: they hide the lung behind them
        self.solid = np.zeros((size, size), np.float32)
        #: the lung fields as a segmentation would outline them (the visible lung, not behind the heart)
        self.lung = np.zeros((size, size), np.float32)

    def window(self, u0: float, u1: float, v0: float, v1: float):
        """Pixel slices covering a patient-coordinate box, and the patient coordinates there."""
        m, cos, sin, n = self.m, self.cos, self.sin, self.n
        xs = [m * (cos * u - sin * v) + self.tx for u in (u0, u1) for v in (v0, v1)]
        ys = [m * (sin * u + cos * v) + self.ty for u in (u0, u1) for v in (v0, v1)]
        half = n / 2.0
        c0 = min(max(math.floor((min(xs) + 1.0) * half), 0), n)
        c1 = min(max(math.ceil((max(xs) + 1.0) * half), 0), n)
        r0 = min(max(math.floor((min(ys) + 1.0) * half), 0), n)
        r1 = min(max(math.ceil((max(ys) + 1.0) * half), 0), n)
        if c1 <= c0 or r1 <= r0:
            return None
        xs = self.coord[c0:c1] - self.tx
        ys = self.coord[r0:r1] - self.ty
        k = 1.0 / self.m
        u = (xs * (self.cos * k))[None, :] + (ys * (self.sin * k))[:, None]
        v = (xs * (-self.sin * k))[None, :] + (ys * (self.cos * k))[:, None]
        return (slice(r0, r1), slice(c0, c1)), u, v

    def subwindow(self, outer: tuple[slice, slice], u0: float, u1: float, v0: float, v1: float):
        """Slices, relative to an ``outer`` window, of the part of a patient box inside it."""
        found = self.window(u0, u1, v0, v1)
        if found is None:
            return None
        (r, c), (ro, co) = found[0], outer
        rows = slice(max(r.start, ro.start) - ro.start, min(r.stop, ro.stop) - ro.start)
        cols = slice(max(c.start, co.start) - co.start, min(c.stop, co.stop) - co.start)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return None
        return rows, cols

    @staticmethod
    def shift(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> tuple[slice, slice]:
        """Image slices of an ``inner`` window given relative to ``outer``."""
        return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))

    def blob(self, cu: float, cv: float, ru: float, rv: float, density: float, *, profile: str = "dome",
             edge: float | None = None) -> None:
        """Add an ellipse: a "dome" (thickness of a sphere) or a "flat" disc."""
        found = self.window(cu - ru, cu + ru, cv - rv, cv + rv)
        if found is None:
            return
        sl, u, v = found
        du = (u - cu) * (1.0 / ru)
        dv = (v - cv) * (1.0 / rv)
        r2 = du * du + dv * dv
        if profile == "dome":
            shape = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        else:
            shape = _step(1.0 - np.sqrt(r2), (edge or self.eps) / min(ru, rv))
        self.attenuation[sl] += density * shape

    def curve(self, points: np.ndarray, width: float, density: float) -> None:
        """Add a smooth tube along a polyline (devices, leads, catheters)."""
        for (u0, v0), (u1, v1) in zip(points[:-1], points[1:]):
            pad = width + self.eps
            found = self.window(min(u0, u1) - pad, max(u0, u1) + pad, min(v0, v1) - pad, max(v0, v1) + pad)
            if found is None:
                continue
            sl, u, v = found
            du, dv = u1 - u0, v1 - v0
            length2 = du * du + dv * dv + 1e-12
            t = np.clip(((u - u0) * du + (v - v0) * dv) * (1.0 / length2), 0.0, 1.0)
            eu = u - u0 - t * du
            ev = v - v0 - t * dv
            dist = np.sqrt(eu * eu + ev * ev)
            # t > 0 leaves each joint to one segment, so the tube is not doubled there
            self.attenuation[sl] += density * _step(width - dist, self.eps) * (t > 0.0)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box average over ``factor`` x ``factor`` blocks: each output pixel integrates its area."""
    if factor == 1:
        return image
    n = image.shape[0] // factor
    return image.reshape(n, factor, n, factor).mean(axis=(1, 3), dtype=np.float32)
