"""Named radiographs of a split as uint8 pixels: the one image container the datasets, evaluations
and notebooks share.

:class:`Images` holds the (N, S, S) uint8 pixels of a set of named images, read once from the cache
(or, for a set too large for memory, a view that reads rows from the memory-mapped cache on demand).
Everything that needs float tensors takes them from here, (k, 1, S, S) in [0, 1], so no caller
divides by 255 itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from cxrlib.data.cache import ImageCache

#: below this many bytes :meth:`Images.from_cache` copies the rows into memory instead of reading the
#: memory-mapped cache row by row
IN_MEMORY_BYTES = 512 * 2**20


class Images:
    """Named radiographs as uint8: image ``names[i]`` is ``pixels[i]`` (S, S).

    Built with ``source_rows``, ``source`` is a larger array (the memory-mapped cache) and image
    ``i`` its row ``source_rows[i]``, read when asked for; ``pixels`` then reads them all.
    """

    def __init__(self, names: Sequence[str], source: np.ndarray, source_rows: np.ndarray | None = None):
        self.names = tuple(names)
        self._source, self._source_rows = source, source_rows
        if len(self.names) == 0:
            raise ValueError("no images: the split or pair list is empty")
        count = len(source) if source_rows is None else len(source_rows)
        if source.ndim != 3 or count != len(self.names):
            raise ValueError(f"pixels must be (N, S, S) for {len(self.names)} names, got {source.shape}")

    @classmethod
    def from_cache(cls, cache: ImageCache, names: Sequence[str], *, in_memory: bool | None = True) -> "Images":
        """The images ``names`` (duplicates dropped, order kept) of ``cache``, copied into memory;
        ``in_memory=False`` reads rows from the memory-mapped cache on demand instead, None decides
        by size (in memory up to :data:`IN_MEMORY_BYTES`: what datasets read item by item use)."""
        names = tuple(dict.fromkeys(names))
        if not names:
            raise ValueError("no images: the split or pair list is empty")
        rows = cache.rows(names)
        if in_memory is None:
            in_memory = len(rows) * cache.size * cache.size <= IN_MEMORY_BYTES
        if in_memory:
            return cls(names, np.asarray(cache.array[rows]))
        return cls(names, cache.array, rows)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return self._source.shape[-1]

    @property
    def pixels(self) -> np.ndarray:
        """All images, uint8 (N, S, S) in memory."""
        return self.uint8()

    def uint8(self, rows: np.ndarray | slice | int = slice(None)) -> np.ndarray:
        """The uint8 pixels of ``rows`` (positions in ``names``)."""
        if self._source_rows is None:
            return self._source[rows]
        return np.asarray(self._source[self._source_rows[rows]])

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Positions of ``names`` in this set; KeyError naming what is missing."""
        position = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise KeyError(f"{len(missing)} image(s) are not among these images, e.g. {missing[:3]}")
        return np.fromiter((position[n] for n in names), dtype=np.int64, count=len(names))

    def tensor(self, rows: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """Float (k, 1, S, S) in [0, 1]."""
        return torch.from_numpy(self.uint8(rows).astype(np.float32) / 255.0).unsqueeze(1)

    def image(self, row: int) -> torch.Tensor:
        """One image as float (1, S, S) in [0, 1] (a dataset item)."""
        return torch.from_numpy(np.array(self.uint8(int(row)), dtype=np.float32) / 255.0).unsqueeze(0)

    def named(self, names: Sequence[str]) -> torch.Tensor:
        """The images ``names`` (from this set) as float (k, 1, S, S) in [0, 1]."""
        return self.tensor(self.rows(names))

    def with_boxes_blacked_out(self, boxes: Sequence[Sequence[Sequence[int]]],
                               source_size: int | Sequence[int] | None = None) -> "Images":
        """A copy with ``boxes[i]`` (pixel boxes of image ``names[i]``) set to black."""
        return Images(self.names, black_out_boxes(self.uint8(), boxes, source_size))


def black_out_boxes(images, boxes: Sequence[Sequence[Sequence[int]]],
                    source_size: int | Sequence[int] | None = None):
    """Conventional anonymization: a copy of ``images`` (N, ..., H, W; NumPy or torch) with black boxes.

    ``boxes[i]`` lists ``[x0, y0, x1, y1]`` boxes (pixels, end exclusive) of image ``i`` as drawn on an
    image of ``source_size`` pixels (one for all or one per image, e.g. the metadata's width; default:
    these images' size); they are scaled outward to cover the same region at this size.
    """
    if len(boxes) != len(images):
        raise ValueError(f"got boxes for {len(boxes)} images but {len(images)} images")
    size = images.shape[-1]
    sources = [source_size or size] * len(images) if np.ndim(source_size) == 0 else list(source_size)
    if len(sources) != len(images):
        raise ValueError(f"got {len(sources)} source sizes for {len(images)} images")
    out = images.clone() if isinstance(images, torch.Tensor) else np.array(images, copy=True)
    for i, (image_boxes, source) in enumerate(zip(boxes, sources)):
        scale = size / source
        for box in image_boxes:
            if len(box) != 4:
                raise ValueError(f"image {i}: a box must be [x0, y0, x1, y1], got {box}")
            x0, y0 = (max(0, math.floor(v * scale)) for v in box[:2])
            x1, y1 = (min(size, math.ceil(v * scale)) for v in box[2:])
            out[i, ..., y0:y1, x0:x1] = 0
    return out
