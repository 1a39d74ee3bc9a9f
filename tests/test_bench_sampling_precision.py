"""benchmarks/bench_sampling_precision.py on the smoke profile: both precisions sampled (or trained),
compared, judged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cxrlib.runtime import cpu_computes_bf16

ROOT = Path(__file__).resolve().parents[1]


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_sampling_precision",
                                                  ROOT / "benchmarks" / "bench_sampling_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(sys.modules, "bench_sampling_precision", bench)  # as when run as a script
    monkeypatch.delenv("CXRLIB_CPU_BF16")  # the workers must see this machine's bf16
    return bench


@pytest.mark.skipif(not cpu_computes_bf16(), reason="cxrlib samples in fp32 on this CPU: nothing to compare")
def test_sampling_precision_benchmark_compares_both_precisions_seed_by_seed(tmp_path, capsys, monkeypatch):
    bench = _load(monkeypatch)
    bench.main(["--profile", "smoke", "--artifacts", str(tmp_path / "artifacts"), "--classifier-seeds", "2",
                "--json", str(tmp_path / "precision.json")])
    figures = json.loads((tmp_path / "precision.json").read_text())
    fp32, bf16 = figures["precisions"]["fp32"], figures["precisions"]["bf16"]
    assert [run["seed"] for run in fp32["classifiers"]] == [run["seed"] for run in bf16["classifiers"]] == [42, 43]
    assert 0 < figures["pixels"]["mean_abs_difference"] < 0.05  # another precision, nearly the same images
    assert figures["speedup"] == pytest.approx(fp32["sampling_seconds"] / bf16["sampling_seconds"])
    assert figures["auc_difference"] == pytest.approx(bf16["mean_auc"] - fp32["mean_auc"])
    assert "as fast" in capsys.readouterr().out


@pytest.mark.skipif(not cpu_computes_bf16(), reason="cxrlib trains in fp32 on this CPU: nothing to compare")
def test_training_precision_benchmark_trains_one_model_per_precision(tmp_path, capsys, monkeypatch):
    bench = _load(monkeypatch)
    artifacts = tmp_path / "artifacts"
    bench.main(["--profile", "smoke", "--artifacts", str(artifacts), "--classifier-seeds", "1", "--training",
                "--json", str(tmp_path / "precision.json")])
    figures = json.loads((tmp_path / "precision.json").read_text())
    assert figures["compared"] == "training" and "pixels" not in figures
    for precision in ("fp32", "bf16"):
        measured = figures["precisions"][precision]
        history = json.loads(next((artifacts / "training-precision" / precision).rglob("ldm-unet-*.json")).read_text())
        assert {epoch["bf16"] for epoch in history["history"]} == {precision == "bf16"}
        assert measured["unet"]["seconds"] > 0 and measured["autoencoder"]["best_epoch"] >= 1
    assert "bf16 trains" in capsys.readouterr().out
