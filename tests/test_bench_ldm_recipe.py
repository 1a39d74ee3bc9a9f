"""benchmarks/bench_ldm_recipe.py on the smoke profile: each recipe trains what it changes and shares the
rest, is judged by the gap decomposition, and side-by-side processes merge their recipes into one JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports bench_gap_decomposition beside it
    spec = importlib.util.spec_from_file_location("bench_ldm_recipe", ROOT / "benchmarks" / "bench_ldm_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_gap_decomposition", None)


def test_recipes_train_what_they_change_and_merge_into_one_json(bench, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "synthesis.json").write_text(json.dumps({"unet": {"training": {"epochs": 2}}}))
    output, work = tmp_path / "ldm_recipe.json", tmp_path / "work"
    common = ["--profile", "smoke", "--work", str(work), "--reference-results", str(reference), "--json", str(output)]
    bench.main(["--recipes", "profile", "cosine-balanced", *common])
    bench.main(["--recipes", "edges", *common])  # as a second process would: merged, not overwritten
    figures = json.loads(output.read_text())
    assert figures["budget_epochs"] == 2 and set(figures["recipes"]) == {"profile", "cosine-balanced", "edges"}
    profile, scheduled, edges = (figures["recipes"][name] for name in ("profile", "cosine-balanced", "edges"))
    assert scheduled["settings"]["unet_lr_schedule"] == "cosine" and scheduled["settings"]["unet_class_balance"] == 1.0
    assert scheduled["training"]["unet"]["epochs"] == 2 and scheduled["training"]["unet"]["max_epochs"] == 2
    # the autoencoder is shared by the U-Net recipes, trained once; the edge term trains its own
    assert profile["training"]["autoencoder"]["trained_here"] and not scheduled["training"]["autoencoder"]["trained_here"]
    assert edges["training"]["autoencoder"]["trained_here"] and edges["settings"]["autoencoder_edge_weight"] == 1.0
    assert scheduled["validation_reconstruction"] == profile["validation_reconstruction"]
    assert edges["validation_reconstruction"] != profile["validation_reconstruction"]
    for recipe in figures["recipes"].values():
        assert set(recipe["summary"]["gap_points"]) >= {"synthetic_only", "autoencoder_in_training", "generator"}
        assert recipe["summary"]["seeds"] == [42] and recipe["frechet_distance"] > 0
        assert recipe["machine"]["cpu"]
    # the classifier on reconstructions depends on the autoencoder alone: the U-Net recipes share it
    reconstructed = sorted(path.name for path in work.rglob("classifier-reconstructed-*.safetensors")
                           if ".last." not in path.name)
    assert len(reconstructed) == 2, reconstructed
    # judged again over two classifier seeds: the recipe's entry is replaced, its model not retrained
    bench.main(["--recipes", "profile", "--classifier-seeds", "2", *common])
    again = json.loads(output.read_text())["recipes"]
    assert again["profile"]["summary"]["seeds"] == [42, 43]
    assert again["profile"]["summary"]["auc"]["real"]["seeds"][0] == profile["summary"]["auc"]["real"]["seeds"][0]
    # loaded, not retrained (a new training would have replaced the record): what it cost to train, not to load
    assert again["profile"]["training"] == profile["training"]
    assert set(again) == {"profile", "cosine-balanced", "edges"}


def test_the_cosine_recipes_differ_only_in_how_batches_are_drawn(bench):
    from cxrlib.config import load_profile

    base = load_profile("smoke").synthesis
    configs = {name: bench.recipe_config(name, base, 7, (16, 32), 1.0, 32, (4, 8, 8))[0]
               for name in ("cosine-balanced", "cosine", "cosine-sqrt-balanced")}
    assert {name: config.unet_class_balance for name, config in configs.items()} == {
        "cosine-balanced": 1.0, "cosine": 0.0, "cosine-sqrt-balanced": 0.5}
    for config in configs.values():
        assert (config.unet_lr_schedule, config.unet_epochs, config.unet_warmup_steps) == ("cosine", 7, 200)
        assert config.unet_channels == base.unet_channels and config.autoencoder_edge_weight == 0.0
