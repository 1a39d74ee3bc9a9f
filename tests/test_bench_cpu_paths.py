"""benchmarks/bench_cpu_paths.py on the smoke profile: every network, every variant, the loop overhead."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fast_path_benchmark_measures_every_network_and_variant(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_cpu_paths", ROOT / "benchmarks" / "bench_cpu_paths.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(sys.modules, "bench_cpu_paths", bench)  # as when run as a script: workers import it
    bench.main(["--profile", "smoke", "--threads", "1", "--steps", "1", "--pairs", "64", "--epochs", "1",
                "--repeats", "3", "--processes", "2", "--networks", "siamese", "--json", str(tmp_path / "paths.json")])
    figures = json.loads((tmp_path / "paths.json").read_text())
    assert set(figures["networks"]) == {"siamese"}
    assert figures["batches"] == {"siamese": {"train": 16, "inference": 128}}  # smoke batches; pair_scores
    assert set(bench.networks(bench.load_profile("smoke"))) == {
        "siamese", "classifier", "retrieval", "prichexy generator", "privacy-net", "autoencoder", "latent unet"}
    scaling = figures["processes"]["siamese"]
    assert scaling["processes"] == 2 and scaling["together"] > 0 and scaling["ratio"] == pytest.approx(
        scaling["together"] / scaling["one_process"])
    for variants in figures["networks"].values():
        assert [name for name, _, _ in bench.VARIANTS] == list(variants)
        assert variants["fp32"]["train_ratio"] == 1.0
        assert all(v["train"] > 0 and v["inference"] > 0 for v in variants.values())
    loop = figures["loop"]
    assert loop["fit_train_seconds"] > 0 and loop["bare_loop_seconds"] > 0 and len(loop["rounds"]) == 3
    assert loop["overhead"] == sorted(r["overhead"] for r in loop["rounds"])[1]  # the median round
    assert figures["machine"]["cores"] >= 1
    assert "overhead" in capsys.readouterr().out
