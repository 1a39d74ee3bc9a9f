"""Burned-in text: find text-like regions in a radiograph's pixels and black them out.

No OCR engine is needed (and none installs from this project's own files on a fresh machine): text
burned into a radiograph is small, bright, high-contrast strokes on a smooth background. The detector
takes a white top-hat (the image minus its morphological opening, which keeps structures thinner than
the opening), keeps bright stroke pixels, joins them into lines with a closing, and reports the boxes
of components shaped like text. :func:`detection_scores` measures it against ground-truth boxes (the
phantom's ``text_boxes``); the figures are in the project's notes, from a run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def detect_text(image: np.ndarray, *, contrast: float = 0.2, brightness: float = 0.85,
                join: int = 3) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` (pixels, end exclusive) of text-like regions of a [0, 1] (H, W) image."""
    h, w = image.shape
    n = min(h, w)
    stroke = max(3, int(round(n / 128)) | 1)  # wider than a glyph's dot (4 px at 1024 px), odd
    # on bytes, where the separable min/max filters are several times faster than on floats
    image8 = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    opened = ndimage.maximum_filter(ndimage.minimum_filter(image8, size=stroke), size=stroke)
    tophat = image8 - opened  # opened <= image8: no wrap-around
    strokes = (tophat > contrast * 255) & (image8 > brightness * 255)
    if not strokes.any():
        return []
    # glyphs of a line, and lines of a block, lie within a few stroke widths of each other
    # a closing by separable min/max filters on bytes: the same as binary_closing, many times faster
    size = (join * stroke, join * stroke + 1)
    mask = strokes.view(np.uint8)
    joined = ndimage.minimum_filter(ndimage.maximum_filter(mask, size=size, mode="constant"), size=size,
                                    mode="constant").astype(bool)
    joined |= strokes
    labels, count = ndimage.label(joined)
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = found
        height, width = rows.stop - rows.start, cols.stop - cols.start
        hits = int(strokes[found][labels[found] == index].sum())
        # text: a few strokes at least, not a large structure, and not a lone line of edge pixels
        if hits < 3 or height > n // 4 or width > 3 * n // 4 or hits < 0.15 * height * width:
            continue
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    return boxes


def black_out(image: np.ndarray, boxes: Sequence[Sequence[int]], margin: int = 1) -> np.ndarray:
    """A copy of ``image`` with every box (grown by ``margin`` pixels) set to black."""
    out = np.array(image, copy=True)
    h, w = out.shape[-2:]
    for x0, y0, x1, y1 in boxes:
        out[..., max(0, y0 - margin):min(h, y1 + margin), max(0, x0 - margin):min(w, x1 + margin)] = 0
    return out


def _mask(boxes: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def detection_scores(images: Sequence[np.ndarray], truth: Sequence[Sequence[Sequence[int]]], **kwargs) -> dict:
    """Pixel-level recall (share of true text-box pixels inside a detected box) and precision (share of
    detected pixels inside a true box), pooled over images, and the share of true boxes hit at all."""
    true_pixels = hit_pixels = detected_pixels = boxes_hit = boxes = 0
    for image, true_boxes in zip(images, truth):
        found = _mask(detect_text(image, **kwargs), image.shape)
        wanted = _mask(true_boxes, image.shape)
        true_pixels += int(wanted.sum())
        hit_pixels += int((found & wanted).sum())
        detected_pixels += int(found.sum())
        boxes += len(true_boxes)
        boxes_hit += sum(bool(found[y0:y1, x0:x1].any()) for x0, y0, x1, y1 in true_boxes)
    return {"pixel_recall": hit_pixels / true_pixels if true_pixels else float("nan"),
            "pixel_precision": hit_pixels / detected_pixels if detected_pixels else float("nan"),
            "box_recall": boxes_hit / boxes if boxes else float("nan"),
            "true_boxes": boxes, "images": len(images)}
