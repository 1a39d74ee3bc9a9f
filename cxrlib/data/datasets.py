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

#: below this many bytes a dataset copies its rows into memory instead of reading the memmap
IN_MEMORY_BYTES = 512 * 2**20

Transform = Callable[[torch.Tensor], torch.Tensor]


class _CachedImages:
    def __init__(self, cache: ImageCache, names):
        self.rows = cache.rows(names)
        size = len(self.rows) * cache.size * cache.size
        self.source = np.asarray(cache.array[self.rows]) if size <= IN_MEMORY_BYTES else cache.array
        self.in_memory = size <= IN_MEMORY_BYTES

    def tensor(self, i: int) -> torch.Tensor:
        row = i if self.in_memory else self.rows[i]
        return torch.from_numpy(np.array(self.source[row], dtype=np.float32) / 255.0).unsqueeze(0)


class ImageDataset(Dataset):
    """Images of ``meta`` with their 14-label vector (``target="labels"``) or patient id."""

    def __init__(self, cache: ImageCache, meta: pd.DataFrame, target: str = "labels",
                 transform: Transform | None = None):
        if target not in ("labels", "patient"):
            raise ValueError(f"target must be 'labels' or 'patient', got {target!r}")
        if len(meta) == 0:
            raise DataError(cache.directory, "empty split: no images to build a dataset from")
        self.names = meta["image"].tolist()
        self.images = _CachedImages(cache, self.names)
        self.labels = meta[list(LABELS)].to_numpy(dtype=np.float32)
        self.patient_ids = meta["patient_id"].to_numpy(dtype=np.int64)
        self.target = target
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        x = self.images.tensor(i)
        if self.transform is not None:
            x = self.transform(x)
        if self.target == "labels":
            return x, torch.from_numpy(self.labels[i])
        return x, torch.tensor(self.patient_ids[i])


class PairDataset(Dataset):
    """Verification pairs: ``(x1, x2, label)`` with label 1.0 for the same patient."""

    def __init__(self, cache: ImageCache, pairs: pd.DataFrame, transform: Transform | None = None):
        if len(pairs) == 0:
            raise DataError(cache.directory, "no pairs to build a dataset from")
        self.pairs = pairs.reset_index(drop=True)
        names = list(dict.fromkeys(pairs["img1"].tolist() + pairs["img2"].tolist()))
        self.images = _CachedImages(cache, names)
        position = {name: i for i, name in enumerate(names)}
        self.first = pairs["img1"].map(position).to_numpy()
        self.second = pairs["img2"].map(position).to_numpy()
        self.labels = pairs["label"].to_numpy(dtype=np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x1, x2 = self.images.tensor(self.first[i]), self.images.tensor(self.second[i])
        if self.transform is not None:
            x1, x2 = self.transform(x1), self.transform(x2)
        return x1, x2, torch.tensor(self.labels[i])
