"""The transfer test (cxrlib.transfer): folds by patient, starting from pretrained weights, chance levels,
the patient bootstraps it pools with, and one tiny end-to-end run with its JSON round trip."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxrlib import classify, reid
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import find_metadata_file, read_metadata, real_sample_dir
from cxrlib.metrics import (multilabel_auc, patient_bootstrap_mean, patient_bootstrap_mean_auc, percentile_ci,
                            retrieval_metrics)
from cxrlib.transfer import (NETWORKS, STARTS, PretrainedModels, TransferResult, fold_splits, network_configs,
                             patient_folds, random_ranking_retrieval, retrieval_by_patient,
                             transfer_test, weights_digest)
from tests.conftest import write_tiny_dataset


def _brackets(estimate) -> bool:
    """The CI holds its estimate (up to rounding: a constant figure resamples to itself)."""
    return estimate.low - 1e-12 <= estimate.value <= estimate.high + 1e-12


def _assert_partition(folds, patients):
    members = np.concatenate(folds)
    assert len(members) == len(set(members.tolist())), "a patient is in two folds"
    assert set(members.tolist()) == set(patients), "a patient is in no fold"


def test_folds_of_the_real_sample_are_patient_disjoint_balanced_and_seeded():
    meta = read_metadata(find_metadata_file(real_sample_dir()))
    folds = patient_folds(meta, 5, seed=42)
    _assert_partition(folds, meta["patient_id"].unique())
    images = [int(meta["patient_id"].isin(f).sum()) for f in folds]
    largest = int(meta.groupby("patient_id").size().max())
    assert sum(images) == len(meta) and max(images) - min(images) <= largest
    assert all(np.array_equal(a, b) for a, b in zip(folds, patient_folds(meta, 5, seed=42)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, patient_folds(meta, 5, seed=7)))


def test_fold_splits_validate_on_training_patients_with_pairs(tmp_path):
    meta = write_tiny_dataset(tmp_path / "cxr14", n_patients=30, per_patient=2, size=16)
    meta = meta[~((meta["patient_id"] % 3 == 0) & (meta["follow_up"] == 1))]  # some patients with one image
    splits = fold_splits(meta, 3, seed=0, val_fraction=0.2)
    _assert_partition([s.test["patient_id"].unique() for s in splits], meta["patient_id"].unique())
    for split in splits:
        train, val, test = (set(part["patient_id"]) for part in (split.train, split.val, split.test))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(meta["patient_id"])
        assert (split.val.groupby("patient_id").size() >= 2).any(), "validation needs same-patient pairs"
    with pytest.raises(ValueError, match="k >= 2"):
        patient_folds(meta, 1, seed=0)
    # a dry run's cap: whole patients with two images first, about max_images per part
    for split in fold_splits(meta, 3, seed=0, val_fraction=0.2, max_images=4):
        for part in (split.train, split.val, split.test):
            assert len(part) == 4 and (part.groupby("patient_id").size() == 2).all()


def test_random_ranking_retrieval_is_what_random_embeddings_score():
    ids = np.repeat(np.arange(8), [2, 2, 3, 3, 4, 1, 1, 5])
    expected = np.array([random_ranking_retrieval(int((ids == p).sum()) - 1, len(ids) - 1) for p in ids
                         if (ids == p).sum() > 1])
    rng = np.random.default_rng(0)
    drawn = [retrieval_metrics(rng.normal(size=(len(ids), 8)), ids) for _ in range(150)]
    assert np.mean([d["precision_at_1"] for d in drawn]) == pytest.approx(expected[:, 0].mean(), abs=0.02)
    assert np.mean([d["map_at_r"] for d in drawn]) == pytest.approx(expected[:, 1].mean(), abs=0.02)
    assert random_ranking_retrieval(1, 1) == (1.0, 1.0)


def test_retrieval_by_patient_pools_to_retrieval_metrics():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(10), [3, 1, 4, 2, 2, 5, 1, 2, 3, 2])
    embeddings = rng.normal(size=(len(ids), 6)) + 1.5 * rng.normal(size=(10, 6))[ids]
    rows = retrieval_by_patient(embeddings, ids)
    assert sorted(rows["patient_id"]) == [0, 2, 3, 4, 5, 7, 8, 9]  # patients with a second image
    whole = retrieval_metrics(embeddings, ids)
    for name in ("precision_at_1", "map_at_r"):
        assert np.average(rows[name], weights=rows["queries"]) == pytest.approx(whole[name])


def test_patient_bootstraps_bracket_their_estimates_and_count_patients_not_images():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(40), 3)
    labels = (rng.random((120, 4)) < 0.3).astype(int)
    scores = labels * 0.5 + rng.random((120, 4))
    value, resampled = patient_bootstrap_mean_auc(labels, scores, patients, n_samples=300, seed=0)
    assert value == pytest.approx(multilabel_auc(labels, scores, labels=list("abcd"), n_bootstrap=0)["mean_auc"])
    low, high = percentile_ci(resampled)
    assert len(resampled) == 300 and low < value < high
    # a patient's rows are one unit: identical rows per patient give the spread of 40 values, not 120
    per_patient = rng.random(40)
    mean, spread = patient_bootstrap_mean(np.repeat(per_patient, 3), patients, n_samples=2000, seed=0)
    assert mean == pytest.approx(per_patient.mean())
    assert np.std(spread) == pytest.approx(per_patient.std() / math.sqrt(40), rel=0.15)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Both starts of the three networks on a tiny folder, two folds, learning rates 0: a fine-tuned
    model ends where it started, so its checkpoint shows what it started from."""
    root = tmp_path_factory.mktemp("transfer")
    write_tiny_dataset(root / "cxr14", n_patients=24, per_patient=3, size=32)
    profile = load_profile("smoke", **{"transfer.folds": 2, "verification.lr": 0.0, "classifier.lr": 0.0,
                                       "retrieval.max_lr": 0.0})
    configs = network_configs(profile)
    torch.manual_seed(123)
    pretrained = PretrainedModels(
        reid.SiameseNetwork(configs["verification"].backbone, False, configs["verification"].features),
        reid.build_retrieval_network(configs["retrieval"]), classify.build_classifier(configs["classifier"]),
        source="test models")
    result = transfer_test(root / "cxr14", profile, seed=3, artifacts_dir=root / "artifacts", pretrained=pretrained,
                           bootstrap_samples=200, progress=False)
    return result, pretrained, root, profile


def test_transfer_runs_both_starts_on_patient_disjoint_folds(tiny_run):
    result, _, root, _ = tiny_run
    assert [(r.network, r.start) for r in result.networks] == [(n, s) for n in NETWORKS for s in STARTS]
    _assert_partition(result.fold_patients, range(1, 25))
    for outcome in result.networks:
        assert [f.fold for f in outcome.folds] == [0, 1]
        for estimate in outcome.pooled.values():
            assert _brackets(estimate)
        if outcome.start == "phantom":
            assert outcome.initial_weights.startswith("test models (weights ")
            assert set(outcome.gain) == {m for m in outcome.pooled if not m.startswith("chance")}
            assert all(_brackets(gain) for gain in outcome.gain.values())
        else:
            assert outcome.initial_weights == "random" and outcome.gain is None
    retrieval = result.get("retrieval", "scratch").pooled
    assert 0 < retrieval["chance_precision_at_1"].value < 1
    assert len(result.table()) == 2 * (1 + 2 + 1) + 2 and len(result.fold_table()) == 12
    assert len(result.verdicts()) == 4


def test_transfer_fine_tunes_the_pretrained_weights(tiny_run):
    result, pretrained, root, profile = tiny_run
    for network in NETWORKS:
        weights = pretrained.weights(network)
        digest = weights_digest(weights)
        for start in STARTS:
            [checkpoint] = list((root / "artifacts" / "smoke" / "transfer").glob(
                f"*/{network}-*-{start}{'-' + digest if start == 'phantom' else ''}-fold1of2-seed3.safetensors"))
            trained = load_file(str(checkpoint))
            convolutions = [k for k, v in weights.items() if v.ndim == 4]
            same = [torch.equal(trained[k].contiguous(), weights[k].contiguous()) for k in convolutions]
            # learning rate 0: the phantom start still holds the pretrained weights, the scratch start never did
            assert all(same) if start == "phantom" else not any(same), (network, start)


def test_transfer_result_round_trips_through_json(tiny_run, tmp_path):
    result = tiny_run[0]
    assert TransferResult.from_json(result.to_json()) == result
    path = result.save(tmp_path / "transfer.json", context={"profile": "smoke"})
    assert TransferResult.load(path) == result
    assert TransferResult.load(path).to_dict() == result.to_dict()


def test_a_rerun_loads_the_checkpoints(tiny_run):
    result, pretrained, root, profile = tiny_run
    again = transfer_test(root / "cxr14", profile, seed=3, artifacts_dir=root / "artifacts", pretrained=pretrained,
                          bootstrap_samples=200, progress=False)
    assert not any(f.trained for r in again.networks for f in r.folds)
    assert [r.pooled for r in again.networks] == [r.pooled for r in result.networks]


def test_scratch_only_without_pretrained_models_and_dry_run_budgets(tmp_path):
    with pytest.warns(UserWarning, match="batch sizes capped"):
        dry = load_profile("paper", max_steps=1)
    assert dry.transfer.folds == 2
    assert {name: getattr(dry.transfer, f"{name}_epochs") for name in NETWORKS} == dict.fromkeys(NETWORKS, 1)
    smoke = load_profile("smoke")
    assert smoke.transfer.folds >= 2 and load_profile("cpu").transfer.folds >= 3
    write_tiny_dataset(tmp_path / "cxr14", n_patients=12, per_patient=3, size=32)
    result = transfer_test(tmp_path / "cxr14", load_profile("smoke", **{"transfer.folds": 2}), seed=0,
                           artifacts_dir=tmp_path / "artifacts", networks=("classifier",), bootstrap_samples=0,
                           progress=False)
    assert [(r.network, r.start) for r in result.networks] == [("classifier", "scratch")]
    assert result.pretrained_from is None and result.networks[0].pooled["mean_auc"].low is None
    assert isinstance(result.table(), pd.DataFrame)
    assert result.verdicts() == ["classifier: no phantom model, so from scratch only."]
    assert dataclasses.asdict(result)["budgets"] == {"classifier": {"max_epochs": 1, "patience": 1}}


def test_the_figure_draws_a_ci_that_misses_its_value():
    """A dry run's few resamples can give a percentile CI beside the pooled value (the paper dry run did)."""
    import matplotlib
    matplotlib.use("Agg")
    from cxrlib.plots.transfer import plot_transfer

    result = TransferResult.load(pathlib.Path(__file__).resolve().parents[1] / "results" / "cpu" / "transfer.json")
    first = result.networks[0]
    metric, estimate = next(iter(first.pooled.items()))
    shifted = dataclasses.replace(estimate, low=estimate.value + 0.01, high=estimate.value + 0.05)
    moved = dataclasses.replace(first, pooled={**first.pooled, metric: shifted})
    assert plot_transfer(dataclasses.replace(result, networks=[moved, *result.networks[1:]])).axes
