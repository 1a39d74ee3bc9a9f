"""The detector and the vendor's processing: attenuation at the output size -> displayed 8-bit image
(exposure, dose noise, processing, windowing, collimation), and burned-in text and side markers."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrlib.data.phantom.canvas import Textures
from cxrlib.data.phantom.common import FIELD_OF_VIEW_MM

_L = ["1....", "1....", "1....", "1....", "1....", "1....", "11111"]
_R = ["1111.", "1...1", "1...1", "1111.", "1.1..", "1..1.", "1...1"]
_GLYPHS = {"L": np.array([[c == "1" for c in row] for row in _L], np.float32),
           "R": np.array([[c == "1" for c in row] for row in _R], np.float32)}


def _pseudo_text(block: dict) -> np.ndarray:
    """A bitmap of ``lines`` lines of random 5x7 dot glyphs on a 6x9 grid (about 15 % spaces,
    ragged line ends): text-like, unreadable by design."""
    rng = np.random.default_rng(block["seed"])
    lines, chars = block["lines"], block["chars"]
    glyphs = (rng.random((lines, chars, 7, 5)) < 0.45) & (rng.random((lines, chars, 1, 1)) > 0.15)
    line_length = chars - rng.integers(0, 4, size=lines)
    glyphs &= (np.arange(chars)[None, :] < line_length[:, None])[:, :, None, None]
    return _glyph_grid(glyphs.astype(np.float32))


def _glyph_grid(glyphs: np.ndarray) -> np.ndarray:
    """(lines, chars, 7, 5) glyphs -> one bitmap, each glyph in a 9x6 cell."""
    lines, chars = glyphs.shape[:2]
    cells = np.zeros((lines, chars, 9, 6), np.float32)
    cells[:, :, 1:8, :5] = glyphs
    return cells.transpose(0, 2, 1, 3).reshape(lines * 9, chars * 6)


def _side_marker(letter: str) -> np.ndarray:
    """The letter in a frame."""
    cell = _glyph_grid(_GLYPHS[letter][None, None])
    framed = np.ones((cell.shape[0] + 2, cell.shape[1] + 2), np.float32)
    framed[1:-1, 1:-1] = cell
    return framed


def _place(image: np.ndarray, bitmap: np.ndarray, corner: str, level: float) -> list[int]:
    """Burn a bitmap into a corner at the size text has on a 1024 px release image, scaled to this
    image; returns its box [x0, y0, x1, y1] (pixels, exclusive end)."""
    n = image.shape[0]
    scale = 4.0 * n / 1024.0  # glyph dots of 4 px at 1024 px
    h = max(1, int(round(bitmap.shape[0] * scale)))
    w = max(1, int(round(bitmap.shape[1] * scale)))
    h, w = min(h, n // 3), min(w, n // 2)
    small = np.asarray(Image.fromarray(bitmap).resize((w, h), Image.Resampling.BOX), dtype=np.float32)
    margin = max(1, int(round(0.02 * n)))
    y0 = margin if corner.startswith("top") else n - margin - h
    x0 = margin if corner.endswith("left") else n - margin - w
    region = image[y0:y0 + h, x0:x0 + w]
    np.maximum(region, level * small, out=region)
    return [x0, y0, x0 + w, y0 + h]


def _detector(attenuation: np.ndarray, scan: dict, tex: Textures) -> tuple[np.ndarray, list[list[int]]]:
    """Attenuation at the output size -> displayed 8-bit image: exposure, dose noise, the vendor's
    processing, automatic windowing, collimation and burned-in annotation."""
    n = attenuation.shape[0]
    # superimposed soft tissue and bowel gas: low-frequency mottle inside the body, new every scan
    mottle = tex.window(tex.mottle, (n, n), scan["noise_offset"] // 11) * scan["mottle"]
    mottle += 1.0
    transmitted = attenuation * mottle
    transmitted *= -scan["contrast"]
    np.exp(transmitted, out=transmitted)
    image = 1.0 - transmitted
    # quantum noise, larger where fewer photons arrive (behind dense tissue) and at low dose
    sd = scan["noise"] * n / 1024.0 / math.sqrt(scan["dose"])
    noise = tex.window(tex.noise, (n, n), scan["noise_offset"]) * sd  # a new array: the tile stays
    noise *= image + 0.5
    image += noise
    image = _process(image, scan, n)
    for side in ("left", "right", "top", "bottom"):
        width = int(round(scan[f"collimation_{side}"] * n))
        if width:
            edge = {"left": (slice(None), slice(0, width)), "right": (slice(None), slice(n - width, n)),
                    "top": (slice(0, width), slice(None)), "bottom": (slice(n - width, n), slice(None))}[side]
            image[edge] = 0.88 + 0.03 * image[edge]  # unexposed: nearly white
    boxes = [_place(image, _pseudo_text(block), block["corner"], 0.97) for block in scan["text"]]
    if scan["marker"]:
        boxes.append(_place(image, _side_marker(scan["marker"]), scan["marker_corner"], 1.0))
    image *= 255.0
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    return image.astype(np.uint8), boxes


def _process(image: np.ndarray, scan: dict, n: int) -> np.ndarray:
    """A vendor's processing of the detector signal: histogram equalization blended in, unsharp-mask
    edge enhancement, a contrast curve, then windowing on the image's own range, shifted and scaled."""
    low, high = np.percentile(image, (1.0, 99.0))
    image = (image - low) * (1.0 / max(high - low, 1e-6))
    if scan["equalize"] > 0.0:
        ranks = np.empty(image.size, np.float32)
        ranks[np.argsort(image, axis=None, kind="stable")] = np.linspace(0.0, 1.0, image.size, dtype=np.float32)
        image += scan["equalize"] * (ranks.reshape(image.shape) - image)
    sigma_px = scan["unsharp_mm"] * n / FIELD_OF_VIEW_MM
    if scan["unsharp"] > 0.0 and sigma_px > 0.3:
        image += scan["unsharp"] * (image - ndimage.gaussian_filter(image, sigma_px, mode="nearest"))
    np.clip(image, 0.0, 1.0, out=image)
    image **= scan["gamma"]
    low, high = np.percentile(image, (1.0, 99.0))
    width = max(high - low, 1e-6) * scan["window_width"]
    centre = 0.5 * (low + high) + scan["window_centre"] * width
    image -= centre
    image *= 1.0 / width
    image += 0.5
    return np.clip(image, 0.0, 1.0, out=image)
