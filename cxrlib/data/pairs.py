"""Verification pairs: balanced, patient-disjoint per split, seeded; the official pair-file format.

A pair file is what the papers' code reads: one pair per line, ``img1<TAB>img2<TAB>label`` with the
label written as ``1.0`` (same patient) or ``0.0``. Positive pairs come first, as in the official
test files.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.artifacts import partial_path
from cxrlib.data.chestxray14 import DataError, read_text

PAIR_COLUMNS = ("img1", "img2", "label")

#: PriCheXy-Net's published verification pairs on ChestX-ray14 (``image_pairs/`` of its repository),
#: shipped gzipped; each split's file uses images of that split of the official lists only
OFFICIAL_PAIR_FILES = {"train": "image_pairs_training_10000.txt.gz",
                       "val": "image_pairs_validation_2000.txt.gz",
                       "test": "image_pairs_testing_5000.txt.gz"}


def official_pair_file(split: str) -> Path:
    """The shipped PriCheXy-Net pair file of ``split`` ("train", "val" or "test")."""
    if split not in OFFICIAL_PAIR_FILES:
        raise KeyError(f"no official pair file for split {split!r}; choose one of {', '.join(OFFICIAL_PAIR_FILES)}")
    return Path(str(resources.files("cxrlib.data") / "official" / OFFICIAL_PAIR_FILES[split]))


def max_positive_pairs(meta: pd.DataFrame) -> int:
    counts = meta.groupby("patient_id").size().to_numpy()
    return int((counts * (counts - 1) // 2).sum())


def make_pairs(meta: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """``n_pairs // 2`` positive then ``n_pairs - n_pairs // 2`` negative pairs, all distinct.

    Drawn exactly, without rejection, so that asking for every same-patient pair of a split (the
    ``paper`` profile's 792,294 training pairs) takes seconds:

    * positives: the count is spread over the patients with at least two images as evenly as their
      pairs allow (each gets the same share, capped by its own number of pairs; the remainder goes
      to randomly chosen patients), so patients with very many scans do not dominate; each patient's
      pairs are then sampled without replacement among all of its ``k (k - 1) / 2`` pairs;
    * negatives: one image each of two different patients, patients drawn uniformly, duplicates
      removed and redrawn; where the split is so small that the asked pairs are a sizeable share of
      all different-patient pairs, those are enumerated and sampled without replacement instead.

    Only patients of ``meta`` are used, so pairs of patient-disjoint splits are patient-disjoint.
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be at least 2, got {n_pairs}")
    n_pos, n_neg = n_pairs // 2, n_pairs - n_pairs // 2
    groups = [np.asarray(g) for g in meta.groupby("patient_id")["image"].apply(list)]
    available = max_positive_pairs(meta)
    if n_pos > available:
        raise ValueError(f"asked for {n_pos} positive pairs but these {len(groups)} patients allow only "
                         f"{available} distinct ones; ask for at most {2 * available} pairs")
    if len(groups) < 2:
        raise ValueError("negative pairs need at least two patients")
    rng = np.random.default_rng(seed)
    positives = _positive_pairs(groups, n_pos, rng)
    negatives = _negative_pairs(groups, n_neg, rng)
    return pd.DataFrame({"img1": np.concatenate([positives[0], negatives[0]]),
                         "img2": np.concatenate([positives[1], negatives[1]]),
                         "label": np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]})


def patient_uniform_pairs(meta: pd.DataFrame, n_per_class: int, seed: int) -> pd.DataFrame:
    """``n_per_class`` same-patient then as many different-patient pairs, each drawing its patients
    uniformly (with replacement, so a pair may repeat): every patient weighs the same, however many
    images it has. Same-patient pairs come from the patients with two or more images of ``meta``.

    :func:`make_pairs` draws distinct pairs and so leans on patients with long series once the short
    ones are used up; this draw measures how identifiable the average patient is.
    """
    groups = [np.asarray(g) for g in meta.groupby("patient_id")["image"].apply(list)]
    multi = [g for g in groups if len(g) >= 2]
    if not multi or len(groups) < 2:
        raise ValueError("patient-uniform pairs need a patient with two or more images and two patients")
    rng = np.random.default_rng(seed)
    rows = []
    for patient in rng.integers(0, len(multi), n_per_class):
        a, b = rng.choice(len(multi[patient]), 2, replace=False)
        rows.append((multi[patient][a], multi[patient][b], 1))
    for _ in range(n_per_class):
        i, j = rng.choice(len(groups), 2, replace=False)
        rows.append((groups[i][rng.integers(len(groups[i]))], groups[j][rng.integers(len(groups[j]))], 0))
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def _even_shares(capacity: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integers ``share <= capacity`` summing to ``total``, as equal as the capacities allow."""
    low, high = 0, int(capacity.max())
    while low < high:  # the largest level whose capped sum does not exceed total
        level = (low + high + 1) // 2
        if np.minimum(capacity, level).sum() <= total:
            low = level
        else:
            high = level - 1
    share = np.minimum(capacity, low)
    remainder = total - int(share.sum())
    if remainder:
        room = np.flatnonzero(capacity > low)
        share[rng.choice(room, size=remainder, replace=False)] += 1
    return share


def _positive_pairs(groups: list[np.ndarray], n: int, rng: np.random.Generator):
    multi = [g for g in groups if len(g) >= 2]
    sizes = np.array([len(g) for g in multi], dtype=np.int64)
    shares = _even_shares(sizes * (sizes - 1) // 2, n, rng) if n else np.zeros(len(multi), np.int64)
    first, second = [], []
    for images, share in zip(multi, shares):
        if share == 0:
            continue
        a, b = np.triu_indices(len(images), k=1)
        chosen = rng.choice(len(a), size=share, replace=False)
        first.append(images[a[chosen]])
        second.append(images[b[chosen]])
    if not first:
        return np.array([], dtype=object), np.array([], dtype=object)
    first, second = np.concatenate(first), np.concatenate(second)
    order = rng.permutation(n)
    return first[order], second[order]


def _negative_pairs(groups: list[np.ndarray], n: int, rng: np.random.Generator):
    names = np.concatenate(groups)
    patient = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    start = np.r_[0, np.cumsum([len(g) for g in groups])[:-1]]
    size = np.array([len(g) for g in groups])
    total = (len(names) * (len(names) - 1) - int((size * (size - 1)).sum())) // 2
    if n > total:
        raise ValueError(f"asked for {n} different-patient pairs but these images allow only {total}")
    if 4 * n > total:
        # a small split: draws would mostly repeat, so enumerate every different-patient pair
        a, b = np.triu_indices(len(names), k=1)
        different = patient[a] != patient[b]
        a, b = a[different], b[different]
        chosen = rng.choice(len(a), size=n, replace=False)
        return names[a[chosen]], names[b[chosen]]
    # at most a quarter of all pairs is asked for, so each round keeps most of its draws
    first = np.empty(0, dtype=np.int64)
    second = np.empty(0, dtype=np.int64)
    while len(first) < n:
        missing = n - len(first)
        p = rng.integers(len(groups), size=missing)
        q = (p + 1 + rng.integers(len(groups) - 1, size=missing)) % len(groups)  # q != p, uniform
        a = start[p] + (rng.random(missing) * size[p]).astype(np.int64)
        b = start[q] + (rng.random(missing) * size[q]).astype(np.int64)
        first, second = np.r_[first, a], np.r_[second, b]
        key = np.minimum(first, second) * len(names) + np.maximum(first, second)
        _, keep = np.unique(key, return_index=True)
        keep.sort()
        first, second = first[keep], second[keep]
    return names[first], names[second]


def write_pair_file(pairs: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    with open(tmp, "w") as f:
        for a, b, label in pairs[list(PAIR_COLUMNS)].itertuples(index=False):
            f.write(f"{a}\t{b}\t{float(label):.1f}\n")
    os.replace(tmp, path)
    return path


def read_pair_file(path: str | Path, known_images=None) -> pd.DataFrame:
    """Read a pair file (plain or gzipped); with ``known_images``, every named image must be among them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pair file not found")
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(path, f"line {number}: expected 3 tab-separated columns (img1 img2 label), "
                                  f"found {len(fields)}")
        try:
            label = float(fields[2])
        except ValueError:
            raise DataError(path, f"line {number}: label {fields[2]!r} is not a number") from None
        if label not in (0.0, 1.0):
            raise DataError(path, f"line {number}: label must be 0 or 1, got {fields[2]!r}")
        rows.append((fields[0].strip(), fields[1].strip(), int(label)))
    if not rows:
        raise DataError(path, "pair file has no pairs")
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    if known_images is not None:
        known = set(known_images)
        missing = sorted((set(pairs["img1"]) | set(pairs["img2"])) - known)
        if missing:
            raise DataError(path, f"{len(missing)} image(s) named in the pair file are not in the data, "
                                  f"e.g. {missing[:3]}")
    return pairs
