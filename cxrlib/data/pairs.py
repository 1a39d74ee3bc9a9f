"""Verification pairs: balanced, patient-disjoint per split, seeded; the official pair-file format.

A pair file is what the papers' code reads: one pair per line, ``img1<TAB>img2<TAB>label`` with the
label written as ``1.0`` (same patient) or ``0.0``. Positive pairs come first, as in the official
test files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.data.chestxray14 import DataError

PAIR_COLUMNS = ("img1", "img2", "label")


def max_positive_pairs(meta: pd.DataFrame) -> int:
    counts = meta.groupby("patient_id").size().to_numpy()
    return int((counts * (counts - 1) // 2).sum())


def make_pairs(meta: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """``n_pairs // 2`` positive then ``n_pairs - n_pairs // 2`` negative pairs, all distinct.

    A positive pair is two different images of one patient (the patient drawn uniformly among those
    with at least two images, so that patients with very many scans do not dominate); a negative
    pair is one image each of two different patients (patients drawn uniformly). Only patients of
    ``meta`` are used, so pairs of patient-disjoint splits are patient-disjoint.
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be at least 2, got {n_pairs}")
    n_pos, n_neg = n_pairs // 2, n_pairs - n_pairs // 2
    groups = [np.asarray(g) for g in meta.groupby("patient_id")["image"].apply(list)]
    multi = [g for g in groups if len(g) >= 2]
    available = max_positive_pairs(meta)
    if n_pos > available:
        raise ValueError(f"asked for {n_pos} positive pairs but these {len(groups)} patients allow only "
                         f"{available} distinct ones; ask for at most {2 * available} pairs")
    if len(groups) < 2:
        raise ValueError("negative pairs need at least two patients")
    rng = np.random.default_rng(seed)
    positives = _draw(n_pos, rng, lambda: _positive(multi, rng))
    negatives = _draw(n_neg, rng, lambda: _negative(groups, rng))
    rows = [(a, b, 1) for a, b in positives] + [(a, b, 0) for a, b in negatives]
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def _positive(multi: list[np.ndarray], rng: np.random.Generator) -> tuple[str, str]:
    images = multi[rng.integers(len(multi))]
    a, b = rng.choice(len(images), size=2, replace=False)
    return images[a], images[b]


def _negative(groups: list[np.ndarray], rng: np.random.Generator) -> tuple[str, str]:
    p, q = rng.choice(len(groups), size=2, replace=False)
    return groups[p][rng.integers(len(groups[p]))], groups[q][rng.integers(len(groups[q]))]


def _draw(n: int, rng: np.random.Generator, draw_one) -> list[tuple[str, str]]:
    seen: set[frozenset] = set()
    pairs: list[tuple[str, str]] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct pairs; the split is too small for that many")
        a, b = draw_one()
        key = frozenset((a, b))
        if key not in seen:
            seen.add(key)
            pairs.append((str(a), str(b)))
    return pairs


def write_pair_file(pairs: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        for a, b, label in pairs[list(PAIR_COLUMNS)].itertuples(index=False):
            f.write(f"{a}\t{b}\t{float(label):.1f}\n")
    os.replace(tmp, path)
    return path


def read_pair_file(path: str | Path, known_images=None) -> pd.DataFrame:
    """Read a pair file; with ``known_images``, every named image must be among them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pair file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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
