"""The privacy-utility protocol on tiny synthetic data with patient identity in the pixels."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import cxrlib.evaluate as evaluate
from cxrlib.anonymize.base import Anonymizer, Identity
from cxrlib.anonymize.dp_pix import DPPix
from cxrlib.config import VerificationConfig, load_profile
from cxrlib.data.datasets import TensorItems
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.pairs import make_pairs
from cxrlib.metrics import verification_metrics
from cxrlib.models.classifier import Classifier
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.plots.tradeoff import plot_tradeoff
from cxrlib.reid import Images, pair_scores, verification_runs

SIZE = 16
ATTACK = VerificationConfig(backbone="convnet", pretrained=False, features=16, batch_size=16, lr=3e-3,
                            max_epochs=3, patience=2, runs=1)


def identity_data(n_patients: int = 24, per_patient: int = 4, seed: int = 0) -> tuple[Images, pd.DataFrame]:
    """Each patient a fixed random pattern; each scan that pattern plus noise: identity is learnable."""
    rng = np.random.default_rng(seed)
    names, pixels, rows = [], [], []
    for patient in range(1, n_patients + 1):
        pattern = rng.uniform(0.15, 0.85, (SIZE, SIZE))
        for follow_up in range(per_patient):
            name = f"{patient:08d}_{follow_up:03d}.png"
            scan = np.clip(pattern + rng.normal(0, 0.05, (SIZE, SIZE)), 0, 1)
            names.append(name)
            pixels.append(np.round(scan * 255).astype(np.uint8))
            rows.append({"image": name, "patient_id": patient,
                         **dict(zip(LABELS, (rng.random(len(LABELS)) < 0.3).astype(int)))})
    return Images(tuple(names), np.stack(pixels)), pd.DataFrame(rows)


def make_setup(tmp_path, runs: int = 1) -> evaluate.EvaluationSetup:
    images, meta = identity_data()
    train = meta[meta["patient_id"] <= 16]
    val = meta[(meta["patient_id"] > 16) & (meta["patient_id"] <= 20)]
    test = meta[meta["patient_id"] > 20]
    torch.manual_seed(0)
    return evaluate.EvaluationSetup(
        images=images, train_pairs=make_pairs(train, 160, seed=1), val_pairs=make_pairs(val, 32, seed=2),
        test_pairs=make_pairs(test, 40, seed=3), test_meta=test.reset_index(drop=True),
        siamese=SiameseNetwork("convnet", False, 16).eval(), classifier=Classifier("convnet", False, SIZE).eval(),
        attack=ATTACK, runs=runs, bootstrap_samples=10, directory=tmp_path / "evaluations", seed=7)


class Constant(Anonymizer):
    """Replaces every image by mid-grey: no identity, no findings left."""

    name = "test_constant"

    def params(self):
        return {}

    def anonymize(self, images):
        return torch.full_like(images, 0.5)


class Inverted(Anonymizer):
    name = "test_inverted"

    def params(self):
        return {}

    def anonymize(self, images):
        return 1.0 - images


def pair_tensors(images: Images, pairs: pd.DataFrame) -> TensorItems:
    x1 = images.tensor(images.rows(pairs["img1"].tolist()))
    x2 = images.tensor(images.rows(pairs["img2"].tolist()))
    return TensorItems(image1=x1, image2=x2, same=torch.as_tensor(pairs["label"].to_numpy(dtype=np.float32)))


@pytest.fixture(scope="module")
def identity_evaluation(tmp_path_factory):
    setup = make_setup(tmp_path_factory.mktemp("identity"))
    return setup, evaluate.evaluate_anonymizer(Identity(), setup, progress=False)


def test_identity_anonymizer_gives_plain_verification(identity_evaluation, tmp_path):
    setup, result = identity_evaluation
    plain = verification_runs(pair_tensors(setup.images, setup.train_pairs),
                              pair_tensors(setup.images, setup.val_pairs), setup.images, setup.test_pairs,
                              ATTACK, seed=setup.seed, checkpoint_path=tmp_path / "plain" / "snn", runs=1)
    assert plain["mean"]["auc"] > 0.75, "the tiny data must carry identity for this test to mean anything"
    # same seed, same pixels, same order: the identity's attack is plain verification, to rounding
    assert result["privacy"]["attack_auc_mean"] == pytest.approx(plain["mean"]["auc"], abs=1e-6)
    frozen = verification_metrics(setup.test_pairs["label"], pair_scores(setup.siamese, setup.images,
                                                                         setup.test_pairs), n_bootstrap=0)
    assert result["privacy"]["frozen_auc"] == pytest.approx(frozen["auc"], abs=1e-6)
    assert result["fidelity"]["ssim"] == pytest.approx(1.0) and result["fidelity"]["psnr"] is None
    assert "BOTH images anonymized" in result["protocol"] and "FIRST image anonymized" in result["protocol"]
    assert result["counts"]["test_pairs"] == 40 and len(result["privacy"]["attack_runs"]) == 1


def untrained_attacker(experiment, config):
    """Stands in for the first re-trained attacker where a test replaces the training."""
    return SiameseNetwork(config.backbone, False, config.features).eval()


def test_attack_trains_on_anonymized_pairs_and_tests_anonymized_against_real(tmp_path, monkeypatch):
    setup = make_setup(tmp_path)
    seen = {}

    def spy(experiments, **kwargs):
        (experiment,) = experiments
        seen.update(vars(experiment), kwargs=kwargs)
        return [{"runs": [{"auc": 0.5}], "mean": {"auc": 0.5}, "std": {"auc": 0.0}}]

    monkeypatch.setattr(evaluate, "verification_experiments", spy)
    monkeypatch.setattr(evaluate, "_attacker", untrained_attacker)
    evaluate.evaluate_anonymizer(Inverted(), setup, progress=False)
    original = setup.images
    for name, pairs in (("train", setup.train_pairs), ("val", setup.val_pairs)):
        pair = seen[name][3]
        x1, x2, label = pair["image1"], pair["image2"], pair["same"]
        row = pairs.iloc[3]
        torch.testing.assert_close(x1, 1 - original.tensor(original.rows([row["img1"]]))[0], atol=1 / 255, rtol=0)
        torch.testing.assert_close(x2, 1 - original.tensor(original.rows([row["img2"]]))[0], atol=1 / 255, rtol=0)
        assert label.item() == row["label"]
    test_images, test_pairs = seen["test_images"], seen["test_pairs"]
    assert len(test_pairs) == len(setup.test_pairs)
    for (_, ours), (_, theirs) in zip(test_pairs.iterrows(), setup.test_pairs.iterrows()):
        first = test_images.tensor(test_images.rows([ours["img1"]]))
        second = test_images.tensor(test_images.rows([ours["img2"]]))
        torch.testing.assert_close(first, 1 - original.tensor(original.rows([theirs["img1"]])), atol=1 / 255, rtol=0)
        torch.testing.assert_close(second, original.tensor(original.rows([theirs["img2"]])))
        assert ours["label"] == theirs["label"]
    assert seen["config"] == ATTACK and seen["seed"] == setup.seed and seen["runs"] == 1
    assert seen["kwargs"]["processes"] == setup.processes


def test_constant_images_leave_no_utility_and_no_fidelity(identity_evaluation):
    setup, identity = identity_evaluation
    result = evaluate.evaluate_anonymizer(Constant(), setup, progress=False)
    # a frozen classifier sees the same image everywhere: every finding's AUC is exactly chance
    assert result["utility"]["mean_auc"] == pytest.approx(0.5)
    assert all(math.isnan(v) or v == pytest.approx(0.5) for v in result["utility"]["per_class"].values())
    assert result["fidelity"]["ssim"] < 0.2
    # the attacker sees a grey first image: only the real second image varies, so it links at chance
    assert abs(result["privacy"]["attack_auc_mean"] - 0.5) < 0.2
    assert identity["privacy"]["attack_auc_mean"] > result["privacy"]["attack_auc_mean"] + 0.2


def test_results_are_cached_and_not_recomputed(tmp_path, monkeypatch):
    setup = make_setup(tmp_path)
    calls = {"runs": 0, "anonymize": 0}

    def counting_runs(experiments, *, processes, progress):
        summaries = []
        for experiment in experiments:
            calls["runs"] += 1
            # stands in for training: what verification_experiments leaves behind, a checkpoint per run
            experiment.checkpoint_path.with_suffix(".safetensors").write_bytes(b"weights")
            experiment.checkpoint_path.with_suffix(".json").write_text("{}")
            summaries.append({"runs": [{"auc": 0.6}], "mean": {"auc": 0.6}, "std": {"auc": 0.0}})
        return summaries

    class Counting(DPPix):
        def anonymize(self, images):
            calls["anonymize"] += 1
            return super().anonymize(images)

    monkeypatch.setattr(evaluate, "verification_experiments", counting_runs)
    monkeypatch.setattr(evaluate, "_attacker", untrained_attacker)
    first = evaluate.evaluate_anonymizer(Counting(b=2, eps=1.0, seed=0), setup, progress=False)
    assert calls == {"runs": 1, "anonymize": 1}
    path = evaluate.result_path(Counting(b=2, eps=1.0, seed=0), setup)
    assert json.loads(path.read_text()) == first
    # the attackers' checkpoints are gone once the result is written; the result stays
    assert not list((setup.directory / "attackers").iterdir())

    again = evaluate.evaluate_anonymizer(Counting(b=2, eps=1.0, seed=0), setup, progress=False)
    assert again == first and calls == {"runs": 1, "anonymize": 1}
    other = evaluate.evaluate_anonymizer(Counting(b=4, eps=1.0, seed=0), setup, progress=False)
    assert calls == {"runs": 2, "anonymize": 2} and other["key"] != first["key"]


def test_cache_key_follows_weights_and_data(tmp_path):
    setup = make_setup(tmp_path)
    anonymizer = Inverted()
    key = evaluate.evaluation_key(anonymizer, setup)
    assert evaluate.evaluation_key(Inverted(), setup) == key
    assert evaluate.evaluation_key(Identity(), setup) != key
    fewer = evaluate.EvaluationSetup(**{**setup.__dict__, "test_pairs": setup.test_pairs.iloc[10:30]})
    assert evaluate.evaluation_key(anonymizer, fewer) != key
    retrained = evaluate.EvaluationSetup(**{**setup.__dict__, "siamese": SiameseNetwork("convnet", False, 16)})
    assert evaluate.evaluation_key(anonymizer, retrained) != key


def test_stochastic_anonymizer_is_reset_so_results_repeat(tmp_path):
    setup = make_setup(tmp_path)
    anonymizer = DPPix(b=2, eps=1.0, seed=3)
    images = setup.images
    first = evaluate.anonymize_images(anonymizer.reset(), images)
    anonymizer(torch.rand(2, 1, SIZE, SIZE))  # advances the noise
    again = evaluate.anonymize_images(anonymizer.reset(), images)
    assert np.array_equal(first.pixels, again.pixels)


def test_setup_refuses_bad_pairs_and_missing_images(tmp_path):
    setup = make_setup(tmp_path)
    with pytest.raises(ValueError, match="test_pairs must hold both"):
        evaluate.EvaluationSetup(**{**setup.__dict__, "test_pairs": setup.test_pairs.iloc[:5]})
    unknown = setup.test_pairs.copy()
    unknown.loc[0, "img1"] = "99999999_000.png"
    with pytest.raises(KeyError, match="not among these images"):
        evaluate.EvaluationSetup(**{**setup.__dict__, "test_pairs": unknown})
    with pytest.raises(ValueError, match="runs must be at least 1"):
        evaluate.EvaluationSetup(**{**setup.__dict__, "runs": 0})


def test_attack_config_follows_the_profile():
    profile = load_profile("cpu")
    attack = evaluate.attack_config(profile.verification, profile.evaluation)
    ev = profile.evaluation
    assert (attack.backbone, attack.pretrained, attack.lr, attack.batch_size, attack.max_epochs, attack.patience,
            attack.runs) == (ev.attack_backbone, ev.attack_pretrained, ev.attack_lr, ev.attack_batch_size,
                             ev.attack_max_epochs, ev.attack_patience, ev.attack_runs)
    assert attack.features == profile.verification.features
    # the paper's re-training: a fresh ImageNet ResNet-50 SNN, Adam 1e-4, batch 32, <= 100 epochs, patience 5
    paper = load_profile("paper")
    attack = evaluate.attack_config(paper.verification, paper.evaluation)
    assert (attack.backbone, attack.pretrained, attack.lr, attack.batch_size, attack.max_epochs, attack.patience,
            attack.runs) == ("resnet50", True, 1e-4, 32, 100, 5, 10)
    assert (paper.evaluation.attack_train_pairs, paper.evaluation.attack_val_pairs,
            paper.evaluation.attack_test_pairs) == (10_000, 2_000, 5_000)


def test_tables_and_figure_from_results():
    def fake(method, params, attack, utility):
        return {"method": method, "params": params, "label": method,
                "privacy": {"attack_auc_mean": attack, "attack_auc_std": 0.02, "attack_runs": [{}, {}],
                            "frozen_auc": attack + 0.05},
                "utility": {"mean_auc": utility, "ci": [utility - 0.03, utility + 0.03]},
                "fidelity": {"ssim": 0.9, "psnr": None if method == "identity" else 30.0}}

    results = [fake("identity", {}, 0.9, 0.85),
               fake("flow_field", {"mu": 0.01, "image_size": 64}, 0.7, 0.84),
               fake("flow_field", {"mu": 0.04, "image_size": 64}, 0.88, 0.85),
               fake("dp_pix", {"b": 4, "eps": 0.1, "m": 1.0, "seed": 0}, 0.55, 0.6)]
    table = evaluate.comparison_table(results)
    assert list(table["method"]) == ["no anonymization", "PriCheXy-Net", "PriCheXy-Net", "DP-Pix"]
    assert table.loc[0, "attack AUC % (re-trained)"] == "90.0 ± 2.0" and table.loc[0, "PSNR dB"] == "∞"
    # mu is the paper's at every size (its displacement in pixels); 0.04 has no published number
    assert table.loc[1, "published attack AUC %"] == "57.7 ± 4.0"
    assert table.loc[2, "published attack AUC %"] == ""
    assert "unconfirmed" in table.loc[3, "published values"]
    assert table.loc[1, "setting"] == "mu = 0.01 (at most 1.3 px at 64 px)"
    figure = plot_tradeoff(evaluate.results_table(results))
    assert len(figure.axes) == 1
    with pytest.raises(ValueError, match="lacks column"):
        plot_tradeoff(table)


def test_several_anonymizers_train_their_attackers_in_one_pool(identity_evaluation, tmp_path, monkeypatch):
    setup, identity = identity_evaluation
    fresh = make_setup(tmp_path, runs=2)
    pools = []
    real = evaluate.verification_experiments

    def recording(experiments, **kwargs):
        pools.append([(e.runs, e.seed) for e in experiments])
        return real(experiments, **kwargs)

    monkeypatch.setattr(evaluate, "verification_experiments", recording)
    results = evaluate.evaluate_anonymizers([Identity(), Inverted(), Identity()], fresh, progress=False)
    # one call trains every run of both methods; the repeated identity is computed once
    assert pools == [[(2, fresh.seed), (2, fresh.seed)]]
    assert results[0] == results[2] and [r["method"] for r in results[:2]] == ["identity", "test_inverted"]
    assert [run["seed"] for run in results[1]["privacy"]["attack_runs"]] == [fresh.seed, fresh.seed + 1]
    # the first run of each method is the run a lone evaluation trains
    assert results[0]["privacy"]["attack_runs"][0]["auc"] == pytest.approx(
        identity["privacy"]["attack_runs"][0]["auc"], abs=1e-6)
    alone = evaluate.evaluate_anonymizer(Inverted(), make_setup(tmp_path / "alone", runs=2), progress=False)

    def figures(privacy: dict) -> dict:  # the panel's timings differ from call to call, its figures do not
        panel = {**privacy["panel"], "attacks": {name: {k: v for k, v in f.items() if k != "seconds"}
                                                 for name, f in privacy["panel"]["attacks"].items()}}
        return {**privacy, "panel": panel}

    assert figures(alone["privacy"]) == figures(results[1]["privacy"])
    assert not list((fresh.directory / "attackers").iterdir())


def test_attack_panel_runs_every_attack_and_reads_the_worst_case(identity_evaluation):
    from cxrlib.linkage import LinkagePanel

    setup, result = identity_evaluation
    panel = LinkagePanel.from_json(result["privacy"]["panel"])
    assert panel.scope == "anonymized" and panel.queries == len(setup.test_meta)
    assert {"siamese", "retrained", "raw_pixels", "block_means_8", "histogram", "mean_sd"} <= \
        {a.attack for a in panel.attacks}
    # 4 test patients with 4 scans each, the query's own source left out: 3 of 15
    assert panel.chance_precision_at_1 == pytest.approx(3 / 15)
    # each scan is its patient's pattern plus mild noise: pixel correlation finds the patient every time
    assert panel["raw_pixels"].precision_at_1 == 1.0 and panel["raw_pixels"].auc > 0.95
    worst = panel.worst_case()["auc"]
    assert worst.value == max(a.auc for a in panel.attacks)
    table = evaluate.results_table([result])
    assert table["worst_auc"].iloc[0] == worst.value and table["p1_chance"].iloc[0] == pytest.approx(0.2)
    assert "worst-case AUC % (panel)" in evaluate.comparison_table([result]).columns
