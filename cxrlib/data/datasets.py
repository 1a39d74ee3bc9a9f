"""Torch datasets over the image cache: single images (with labels or patient ids) and pairs.

Items are float32 tensors (1, S, S) in [0, 1]; models adapt them to their own input (3 channels,
ImageNet normalization), so every anonymizer composes with every model on the same tensors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrlib.data.cache import ImageCache
from cxrlib.data.chestxray14 import DataError, LABELS
from cxrlib.data.images import Images

Transform = Callable[[torch.Tensor], torch.Tensor]


class ImageDataset(Dataset):
    """Images of ``meta`` with their 14-label vector (``target="labels"``) or patient id."""

    def __init__(self, cache: ImageCache, meta: pd.DataFrame, target: str = "labels",
                 transform: Transform | None = None):
        if target not in ("labels", "patient"):
            raise ValueError(f"target must be 'labels' or 'patient', got {target!r}")
        if len(meta) == 0:
            raise DataError(cache.directory, "empty split: no images to build a dataset from")
        self.names = meta["image"].tolist()
        # a split lists each image once, but a hand-made frame may repeat one
        self.images = Images.from_cache(cache, self.names, in_memory=None)
        self.rows = self.images.rows(self.names)
        self.labels = meta[list(LABELS)].to_numpy(dtype=np.float32)
        self.patient_ids = meta["patient_id"].to_numpy(dtype=np.int64)
        self.target = target
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        x = self.images.image(self.rows[i])
        if self.transform is not None:
            x = self.transform(x)
        if self.target == "labels":
            return x, torch.from_numpy(self.labels[i])
        return x, torch.tensor(self.patient_ids[i])


class PairDataset(Dataset):
    """Verification pairs: ``(x1, x2, label)`` with label 1.0 for the same patient, the images read
    from a cache or taken from an :class:`~cxrlib.data.images.Images` (e.g. anonymized ones)."""

    def __init__(self, images: ImageCache | Images, pairs: pd.DataFrame, transform: Transform | None = None):
        if len(pairs) == 0:
            where = images.directory if isinstance(images, ImageCache) else "pairs"
            raise DataError(where, "no pairs to build a dataset from")
        self.pairs = pairs.reset_index(drop=True)
        if isinstance(images, ImageCache):
            images = Images.from_cache(images, pairs["img1"].tolist() + pairs["img2"].tolist(), in_memory=None)
        self.images = images
        self.first = images.rows(pairs["img1"].tolist())
        self.second = images.rows(pairs["img2"].tolist())
        self.labels = pairs["label"].to_numpy(dtype=np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x1, x2 = self.images.image(self.first[i]), self.images.image(self.second[i])
        if self.transform is not None:
            x1, x2 = self.transform(x1), self.transform(x2)
        return x1, x2, torch.tensor(self.labels[i])
