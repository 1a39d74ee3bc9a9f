"""The label vectors synthetic images are drawn for: a per-finding grid, a synthetic training set
with the real training split's label distribution, and the class of a single-label vector."""

from __future__ import annotations

import numpy as np
import torch

from cxrlib.data.chestxray14 import LABELS, NO_FINDING


def class_conditions(samples_per_class: int) -> tuple[list[str], torch.Tensor]:
    """Single-class conditions for a per-finding grid: "No Finding" (all zeros), then each finding
    alone; returns the class name of every row and the (15 * n, 14) label vectors."""
    names = [NO_FINDING, *LABELS]
    vectors = torch.cat([torch.zeros(1, len(LABELS)), torch.eye(len(LABELS))])
    return ([name for name in names for _ in range(samples_per_class)],
            vectors.repeat_interleave(samples_per_class, dim=0))


def synthetic_label_vectors(real_labels: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """``count`` label vectors drawn from the real training split's, so the synthetic training set
    has the real label distribution (co-occurrences included): every real vector once per full pass,
    in a seeded order."""
    real_labels = np.asarray(real_labels, dtype=np.float32)
    if count < 1 or len(real_labels) == 0:
        raise ValueError(f"need a positive count and real label vectors; got count={count} and "
                         f"{len(real_labels)} real vectors")
    rng = np.random.default_rng(seed)
    passes = -(-count // len(real_labels))
    order = np.concatenate([rng.permutation(len(real_labels)) for _ in range(passes)])[:count]
    return torch.from_numpy(real_labels[order])


def single_class_names(labels: np.ndarray) -> np.ndarray:
    """Class of each label vector when it has at most one finding ("No Finding" or the finding);
    an empty string for multi-label rows."""
    labels = np.asarray(labels)
    names = np.array([NO_FINDING, *LABELS])
    counts = labels.sum(axis=1)
    index = np.where(counts == 0, 0, labels.argmax(axis=1) + 1)
    return np.where(counts <= 1, names[index], "")


def synthetic_set_conditions(train_labels: np.ndarray, val_labels: np.ndarray, count: int,
                             seed: int) -> tuple[torch.Tensor, int]:
    """Label vectors of a synthetic training set of ``count`` images (all of the real training
    split's when 0) drawn from ``train_labels``, followed by those of a synthetic validation set
    sized like the real one relative to it, drawn from ``val_labels`` (seed ``seed + 1``); returns
    them and the number of training rows."""
    n_train = count or len(train_labels)
    n_val = max(2, round(n_train * len(val_labels) / len(train_labels)))
    return torch.cat([synthetic_label_vectors(train_labels, n_train, seed=seed),
                      synthetic_label_vectors(val_labels, n_val, seed=seed + 1)]), n_train
