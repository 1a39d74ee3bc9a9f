"""The one dataset contract of cxrlib: every dataset a loop trains or evaluates on yields **a dict of
tensors per item**, and a batch is the same dict, stacked (PyTorch's default collation).

Keys, by what an item is:

* an image (:class:`ImageDataset`, or :class:`TensorItems` over images in memory): ``image`` float32
  (1, S, S) in [0, 1], ``labels`` float32 (14,) (the findings, in :data:`~cxrlib.data.chestxray14.LABELS`
  order), ``patient`` int64 ();
* a pair of images (:class:`PairDataset`, a view of the images it reads): ``image1``, ``image2``, ``same``
  float32 () (1.0 for the same patient) and, where the findings of the first image are known, ``labels1``;
* anything else held in memory (:class:`TensorItems`: e.g. a latent diffusion model's posteriors
  ``mean``, ``std``, ``labels``).

Models adapt the images to their own input (3 channels, ImageNet normalization), so every anonymizer
composes with every model on the same tensors; a loss or an evaluation reads the keys it needs, whatever
else the item holds.
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
Item = dict[str, torch.Tensor]


class ItemDataset(Dataset):
    """The base of every cxrlib dataset: ``__getitem__`` returns an :data:`Item`, whose keys are :attr:`keys`."""

    #: the keys of every item, in order
    keys: tuple[str, ...] = ()

    def __getitem__(self, i: int) -> Item:
        raise NotImplementedError


class TensorItems(ItemDataset):
    """Named tensors of one length, item ``i`` the ``i``-th row of each: ``TensorItems(image=x, labels=y)``."""

    def __init__(self, **tensors: torch.Tensor):
        if not tensors:
            raise ValueError("TensorItems needs at least one named tensor")
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the tensors of one dataset must have one length, got {lengths}")
        self.tensors = tensors
        self.keys = tuple(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> Item:
        return {name: t[i] for name, t in self.tensors.items()}


class ImageDataset(ItemDataset):
    """The images of ``meta`` (read from ``cache``) with their findings and patient id."""

    keys = ("image", "labels", "patient")

    def __init__(self, cache: ImageCache, meta: pd.DataFrame, transform: Transform | None = None):
        if len(meta) == 0:
            raise DataError(cache.directory, "empty split: no images to build a dataset from")
        self.names = meta["image"].tolist()
        # a split lists each image once, but a hand-made frame may repeat one
        self.images = Images.from_cache(cache, self.names, in_memory=None)
        self.rows = self.images.rows(self.names)
        self.labels = meta[list(LABELS)].to_numpy(dtype=np.float32)
        self.patient_ids = meta["patient_id"].to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Item:
        x = self.images.image(self.rows[i])
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x, "labels": torch.from_numpy(self.labels[i]), "patient": torch.tensor(self.patient_ids[i])}


class PairDataset(ItemDataset):
    """Verification pairs (``pairs``: columns img1, img2, label): the two images, read from a cache or taken
    from an :class:`~cxrlib.data.images.Images` (e.g. anonymized ones), and whether they show one patient;
    with ``meta`` (the metadata of the first images) also the first image's findings, ``labels1``."""

    def __init__(self, images: ImageCache | Images, pairs: pd.DataFrame, transform: Transform | None = None,
                 meta: pd.DataFrame | None = None):
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
        self.first_labels = None if meta is None else _labels_of(self.pairs["img1"], meta)
        self.keys = ("image1", "image2", "same") + (() if meta is None else ("labels1",))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Item:
        x1, x2 = self.images.image(self.first[i]), self.images.image(self.second[i])
        if self.transform is not None:
            x1, x2 = self.transform(x1), self.transform(x2)
        item = {"image1": x1, "image2": x2, "same": torch.tensor(self.labels[i])}
        if self.first_labels is not None:
            item["labels1"] = torch.from_numpy(self.first_labels[i])
        return item


def _labels_of(images: pd.Series, meta: pd.DataFrame) -> np.ndarray:
    """The findings (N, 14) of ``images`` by name, from ``meta``; every image must be there."""
    labels = meta.set_index("image")[list(LABELS)]
    missing = images[~images.isin(labels.index)]
    if len(missing):
        raise DataError("metadata", f"{len(missing)} first image(s) of the pairs have no labels in the "
                                    f"metadata given, e.g. {missing.iloc[0]}")
    return labels.loc[images].to_numpy(dtype=np.float32)
