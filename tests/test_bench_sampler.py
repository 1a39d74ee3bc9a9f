"""benchmarks/bench_sampler.py's choices: which label vectors it draws for and which setting it calls best."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_sampler", ROOT / "benchmarks" / "bench_sampler.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_label_vectors_reach_the_positives_of_rare_findings_first_and_cover_every_row():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < [0.5, 0.05, 0.02]).astype(np.float32)  # common, rare, rarer (8 or so)
    order = _bench().label_vectors_with_positives(labels, min_positives=6, seed=1)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation: any prefix is a choice
    rarer_total = int(labels[:, 2].sum())
    core = next(n for n in range(1, len(order)) if labels[order[:n]][:, 1:].sum(0).min() >= min(6, rarer_total))
    assert core <= 12  # the rare findings' rows lead, not a random draw's hundreds
    assert labels[order[:core], 2].sum() >= 6 and labels[order[:core], 1].sum() >= 6
    assert np.array_equal(order, _bench().label_vectors_with_positives(labels, min_positives=6, seed=1))
    few = _bench().label_vectors_with_positives(labels, min_positives=len(labels), seed=1)
    assert sorted(few.tolist()) == list(range(len(labels)))  # asking for more than there are takes all


def test_best_setting_balances_both_ranks_and_breaks_ties_by_speed():
    def run(frechet, auc, seconds):
        return {"frechet_distance": frechet, "rendering_auc": auc, "seconds_per_image": seconds}

    realistic, rendering, both, both_slower = run(10, 0.60, 1), run(40, 0.80, 1), run(15, 0.75, 1), run(15, 0.75, 2)
    assert _bench().best_by_ranks([realistic, rendering, both_slower, both]) is both
