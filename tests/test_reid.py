import dataclasses
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlib.artifacts import ArtifactError
from cxrlib.config import load_profile
from cxrlib.data.cache import prepare_cache
from cxrlib.data.chestxray14 import DataError, make_splits, read_metadata
from cxrlib.data.datasets import ImageDataset, PairDataset
from cxrlib.data.pairs import make_pairs
from cxrlib.metrics import retrieval_metrics, verification_metrics
from cxrlib.reid import (IDENTITY_CUES, TRAINING_FREE_BASELINES, Images, PatientBlockSampler, RetrievalLoss,
                         auc_by_gap, black_out_boxes,
                         build_retrieval_network, evaluate_retrieval, identity_cues, linkage_attack,
                         linkage_hit_rates, linkage_queries, nearest_matches, pair_gaps, pair_scores,
                         retrieval_augmentation, run_checkpoint, text_box_effect, train_retrieval,
                         train_verification, verification_runs)
from tests.conftest import write_tiny_dataset

SIZE = 32


def _patient_images(n_patients: int, per_patient: int, noise: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Each patient a smooth random pattern of its own; each scan shifted and noisy."""
    rng = np.random.default_rng(seed)
    images = {}
    for patient in range(1, n_patients + 1):
        base = np.kron(rng.random((4, 4)), np.ones((SIZE // 4 + 2, SIZE // 4 + 2)))
        for follow_up in range(per_patient):
            dy, dx = rng.integers(0, 4, 2)
            scan = base[dy:dy + SIZE, dx:dx + SIZE] + noise * rng.normal(size=(SIZE, SIZE))
            images[f"{patient:08d}_{follow_up:03d}.png"] = (np.clip(scan, 0, 1) * 255).astype(np.uint8)
    return images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reid") / "cxr14"
    meta = write_tiny_dataset(folder, n_patients=36, per_patient=4, size=SIZE)
    for name, pixels in _patient_images(36, 4, noise=0.15).items():
        Image.fromarray(pixels).save(folder / "images" / name)
    cache = prepare_cache(folder, SIZE, workers=1, progress=False)
    splits = make_splits(read_metadata(folder / "Data_Entry_2017_v2020.csv"), folder, seed=0,
                         val_fraction=0.2, test_fraction=0.3)
    pairs = {name: make_pairs(frame, n, seed=1) for (name, frame), n in
             zip(splits.items(), (160, 30, 60))}
    return {"folder": folder, "meta": meta, "cache": cache, "splits": splits, "pairs": pairs}


@pytest.fixture(scope="module")
def verification_config():
    return load_profile("smoke", **{"verification.max_epochs": 4, "verification.patience": 4,
                                    "verification.features": 16, "verification.lr": 1e-3}).verification


@pytest.fixture(scope="module")
def trained(data, verification_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("snn") / "snn"
    train = PairDataset(data["cache"], data["pairs"]["train"])
    val = PairDataset(data["cache"], data["pairs"]["val"])
    model, result = train_verification(train, val, verification_config, seed=0, checkpoint_path=path,
                                       progress=False)
    test_pairs = data["pairs"]["test"]
    images = Images.from_cache(data["cache"], data["splits"].test["image"])
    return {"model": model, "result": result, "path": path, "images": images, "pairs": test_pairs,
            "train": train, "val": val}


def test_black_out_boxes_numpy_and_torch_scaled_from_source_size():
    images = np.full((2, 8, 8), 200, np.uint8)
    out = black_out_boxes(images, [[[0, 0, 4, 2]], []], source_size=16)
    assert (out[0, :1, :2] == 0).all() and out[0].sum() == 200 * (64 - 2)
    assert (out[1] == 200).all() and (images == 200).all()  # a copy; the input is untouched
    tensors = torch.ones(1, 1, 8, 8)
    assert black_out_boxes(tensors, [[[2, 2, 5, 5]]])[0, 0, 2:5, 2:5].sum() == 0
    with pytest.raises(ValueError, match="boxes for 1 images but 2"):
        black_out_boxes(images, [[]])
    with pytest.raises(ValueError, match=r"\[x0, y0, x1, y1\]"):
        black_out_boxes(images, [[[1, 2]], []])
    per_image = black_out_boxes(images, [[[0, 0, 2, 2]], [[0, 0, 2, 2]]], source_size=[8, 4])
    assert (per_image[0] == 0).sum() == 4 and (per_image[1] == 0).sum() == 16
    with pytest.raises(ValueError, match="1 source sizes for 2 images"):
        black_out_boxes(images, [[], []], source_size=[8])


def test_images_from_cache_and_bad_names(data):
    names = data["splits"].test["image"].tolist()
    images = Images.from_cache(data["cache"], names + names[:2])
    assert images.names == tuple(names) and images.pixels.dtype == np.uint8
    x = images.tensor(images.rows(names[:3]))
    assert x.shape == (3, 1, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    with pytest.raises(KeyError, match="not among"):
        images.rows(["99999999_000.png"])
    with pytest.raises(DataError, match="99999999_000.png"):
        Images.from_cache(data["cache"], ["99999999_000.png"])
    with pytest.raises(ValueError, match="empty"):
        Images.from_cache(data["cache"], [])


def test_patient_block_sampler_groups_patients_and_is_seeded():
    ids = np.r_[np.repeat(np.arange(10), [2, 3, 5, 9, 1, 4, 8, 2, 17, 6]), 99]
    sampler = PatientBlockSampler(ids, batch_size=12, images_per_patient=4, seed=3)
    lengths = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        lengths.add(len(batches))
        flat = [i for b in batches for i in b]
        # every image of a patient with two or more images once; the lone images never
        assert sorted(flat) == sorted(np.flatnonzero(~np.isin(ids, [4, 99])).tolist())
        for batch in batches:
            assert len(batch) <= 12
            per_patient = Counter(ids[batch])
            assert min(per_patient.values()) >= 2  # never a lone image of a patient in a batch
        assert np.mean([len(set(ids[b])) for b in batches]) >= 2  # batches mix patients
    assert lengths == {len(sampler)}
    sampler.set_epoch(1)
    assert list(sampler) == list(sampler)
    other_epoch = PatientBlockSampler(ids, 12, 4, seed=3)
    other_epoch.set_epoch(2)
    assert list(other_epoch) != list(sampler)
    fixed = PatientBlockSampler(ids, 12, 4, seed=3, shuffle=False)
    first = list(fixed)
    fixed.set_epoch(5)
    assert list(fixed) == first
    with pytest.raises(ValueError, match="two or more"):
        PatientBlockSampler([1, 2, 3], 12, 4, seed=0)
    with pytest.raises(ValueError, match="at least images_per_patient"):
        PatientBlockSampler(ids, 3, 4, seed=0)


def test_verification_learns_identity_and_is_cached(trained, data, verification_config):
    result = trained["result"]
    assert result.trained and len(result.history) >= 1
    scores = pair_scores(trained["model"], trained["images"], trained["pairs"])
    labels = trained["pairs"]["label"].to_numpy()
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(labels, scores) > 0.75
    # the embedding shortcut equals scoring pair by pair
    rows1 = trained["images"].rows(trained["pairs"]["img1"].tolist()[:5])
    rows2 = trained["images"].rows(trained["pairs"]["img2"].tolist()[:5])
    with torch.no_grad():
        direct = trained["model"].score(trained["images"].tensor(rows1), trained["images"].tensor(rows2))
    np.testing.assert_allclose(scores[:5], direct.numpy(), rtol=1e-5, atol=1e-6)

    again, cached = train_verification(trained["train"], trained["val"], verification_config, seed=0,
                                       checkpoint_path=trained["path"], progress=False)
    assert not cached.trained
    np.testing.assert_allclose(pair_scores(again, trained["images"], trained["pairs"]), scores, rtol=1e-6)


def test_checkpoint_of_another_architecture_is_refused(trained, verification_config):
    other = dataclasses.replace(verification_config, backbone="resnet18")
    with pytest.raises(ArtifactError, match="backbone"):
        train_verification(trained["train"], trained["val"], other, seed=0,
                           checkpoint_path=trained["path"], progress=False)


def test_verification_runs_report_mean_and_std(trained, verification_config, tmp_path):
    base = tmp_path / "snn"
    one_epoch = dataclasses.replace(verification_config, max_epochs=1)
    summary = verification_runs(trained["train"], trained["val"], trained["images"], trained["pairs"],
                                one_epoch, seed=7, checkpoint_path=base, runs=2, progress=False)
    assert [r["seed"] for r in summary["runs"]] == [7, 8]
    aucs = [r["auc"] for r in summary["runs"]]
    assert summary["mean"]["auc"] == pytest.approx(np.mean(aucs))
    assert summary["std"]["auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert run_checkpoint(base, 0) == base
    assert run_checkpoint(base, 1).with_suffix(".safetensors").is_file()
    # patience 4 against a cap of 1: it could not have stopped early
    assert all(r["best_epoch"] == r["epochs"] == r["max_epochs"] == 1 and r["ended_by"] == "fixed budget"
               for r in summary["runs"])


def test_runs_side_by_side_equal_runs_one_after_another(trained, verification_config, tmp_path):
    # tests run with one thread (conftest), as the workers then do: the same arithmetic, so processes
    # must not change a figure
    one_epoch = dataclasses.replace(verification_config, max_epochs=1)
    args = (trained["train"], trained["val"], trained["images"], trained["pairs"], one_epoch)
    alone = verification_runs(*args, seed=7, checkpoint_path=tmp_path / "alone" / "snn", runs=2, progress=False)
    side_by_side = verification_runs(*args, seed=7, checkpoint_path=tmp_path / "pool" / "snn", runs=2,
                                     processes=2, progress=False)
    assert side_by_side == alone
    assert all(run["trained"] for run in side_by_side["runs"])


def test_verification_runs_record_early_stopping_against_the_cap(trained, verification_config, tmp_path):
    # with a learning rate of 0 the validation loss never falls again: patience 1 stops after epoch 2
    stopped = dataclasses.replace(verification_config, max_epochs=6, patience=1, lr=0.0)
    summary = verification_runs(trained["train"], trained["val"], trained["images"], trained["pairs"],
                                stopped, seed=3, checkpoint_path=tmp_path / "snn", runs=1, progress=False)
    run = summary["runs"][0]
    assert run["max_epochs"] == 6 and run["epochs"] == run["best_epoch"] + 1 < 6
    assert run["ended_by"] == "early stopping" and run["patience"] == 1


def test_identity_cues_find_identical_copies(data):
    images = Images.from_cache(data["cache"], data["splits"].test["image"])
    duplicated = Images(images.names + tuple(n + "_copy" for n in images.names),
                        np.concatenate([images.pixels, images.pixels]))
    ids = np.r_[np.arange(len(images.names)), np.arange(len(images.names))]
    pairs = pd.DataFrame({"img1": list(images.names[:5]) * 2,
                          "img2": [n + "_copy" for n in images.names[:5]] + list(images.names[5:10]),
                          "label": [1] * 5 + [0] * 5})
    results = identity_cues(duplicated, pairs, ids)
    assert list(results) == list(TRAINING_FREE_BASELINES)
    for kind, result in results.items():
        assert result["retrieval"]["precision_at_1"] == 1.0 and result["verification"]["auc"] == 1.0, kind
        assert set(result["retrieval"]) == {"map_at_r", "r_precision", "precision_at_1"}
        assert len(result["verification"]["roc"]["fpr"]) >= 2


def test_identity_cues_put_the_networks_on_the_same_pairs(trained, data):
    torch.manual_seed(0)
    retrieval = build_retrieval_network(load_profile("smoke").retrieval)
    test = data["splits"].test
    ids = test.set_index("image").loc[list(trained["images"].names), "patient_id"].to_numpy()
    cues = identity_cues(trained["images"], trained["pairs"], ids, siamese=trained["model"], retrieval=retrieval,
                         n_bootstrap=10)
    assert list(cues) == list(IDENTITY_CUES)
    assert cues["siamese"]["retrieval"] is None
    assert cues["retrieval"]["retrieval"] == pytest.approx(evaluate_retrieval(retrieval, trained["images"], ids))
    siamese_auc = cues["siamese"]["verification"]["auc"]
    direct = pair_scores(trained["model"], trained["images"], trained["pairs"])
    assert siamese_auc == pytest.approx(verification_metrics(trained["pairs"]["label"], direct, n_bootstrap=0)["auc"])
    assert all(len(c["verification"]["auc_ci"]) == 2 for c in cues.values())


def test_retrieval_trains_both_phases_and_evaluates(data, tmp_path):
    config = load_profile("smoke", **{"retrieval.frozen_epochs": 1, "retrieval.unfrozen_epochs": 1,
                                      "retrieval.memory_size": 32}).retrieval
    train = ImageDataset(data["cache"], data["splits"].train, transform=retrieval_augmentation(config))
    val = ImageDataset(data["cache"], data["splits"].val)
    model, results = train_retrieval(train, val, config, seed=0, checkpoint_path=tmp_path / "ret",
                                     progress=False)
    assert [len(r.history) for r in results] == [1, 1]
    assert (tmp_path / "ret-frozen.safetensors").is_file() and (tmp_path / "ret.safetensors").is_file()
    assert all(p.requires_grad for p in model.parameters())
    test = data["splits"].test
    metrics = evaluate_retrieval(model, Images.from_cache(data["cache"], test["image"]), test["patient_id"])
    assert set(metrics) == {"map_at_r", "r_precision", "precision_at_1"}
    assert all(0 <= v <= 1 for v in metrics.values())


def test_retrieval_loss_leaves_the_memory_alone_on_validation():
    loss = RetrievalLoss(embedding_dim=4, memory_size=8)
    model = torch.nn.Linear(3, 4)
    batch = {"image": torch.randn(4, 3), "patient": torch.tensor([0, 0, 1, 1])}
    model.eval()
    loss(model, batch)
    assert loss.training.queue_idx == 0 and not loss.training.has_been_filled
    model.train()
    loss(model, batch).backward()
    assert loss.training.queue_idx == 4


def _clustered_embeddings(patients: int = 6, per_patient: int = 3, spread: float = 0.05, seed: int = 0):
    """Each patient a random direction; its images small perturbations of it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(patients, 8))
    ids = np.repeat(np.arange(patients), per_patient)
    return centres[ids] + spread * rng.normal(size=(len(ids), 8)), ids


def test_linkage_attack_ranks_by_the_embedding_without_the_query():
    embeddings, ids = _clustered_embeddings()
    ids = np.r_[ids, 99]  # one patient with a single image stays in the gallery as a distractor
    embeddings = np.vstack([embeddings, np.ones(8)])
    images = Images(tuple(f"img{i}" for i in range(len(ids))), np.zeros((len(ids), 4, 4), np.uint8))
    table = linkage_attack(embeddings, images, ids, ["img0", "img4"], k=5)
    assert len(table) == 10 and list(table.columns) == ["query", "rank", "match", "distance", "same_patient"]
    for query, rows in table.groupby("query"):
        assert query not in rows["match"].tolist()
        assert rows["distance"].is_monotonic_increasing
        assert rows["same_patient"].tolist()[:2] == [True, True]  # its patient's two other images first
        assert not rows["same_patient"].iloc[2:].any()
    rates = linkage_hit_rates(embeddings, ids)
    assert rates == {"queries": len(ids) - 1, "rank_1": 1.0, "rank_5": 1.0}


def test_linkage_hit_rates_rank_as_retrieval_metrics_do():
    embeddings, ids = _clustered_embeddings(patients=10, per_patient=2, spread=1.5, seed=3)
    rates = linkage_hit_rates(embeddings, ids, ranks=(1, 3))
    assert 0 < rates["rank_1"] < 1  # noisy enough to miss some
    assert rates["rank_3"] >= rates["rank_1"]
    assert rates["rank_1"] == pytest.approx(retrieval_metrics(embeddings, ids)["precision_at_1"])
    indices, distances = nearest_matches(embeddings, 3)
    assert indices.shape == (20, 3) and (indices != np.arange(20)[:, None]).all()
    everyone, _ = nearest_matches(embeddings, 50)  # a gallery smaller than k: every other image, ranked
    assert everyone.shape == (20, 19) and (everyone != np.arange(20)[:, None]).all()
    with pytest.raises(ValueError, match="k >= 1"):
        nearest_matches(embeddings, 0)


def test_linkage_queries_are_drawn_with_the_seed_among_repeat_patients():
    ids = np.array([0, 0, 1, 2, 2, 2, 3])
    first = linkage_queries(ids, 3, np.random.default_rng(5))
    assert np.array_equal(first, linkage_queries(ids, 3, np.random.default_rng(5)))
    assert set(first) <= {0, 1, 3, 4, 5} and len(set(first)) == 3
    assert len(linkage_queries(ids, 50, np.random.default_rng(0))) == 5
    with pytest.raises(ValueError, match="no image has another image"):
        linkage_queries(np.arange(4), 2, np.random.default_rng(0))


def test_auc_by_gap_bins_positive_pairs_by_years(data):
    meta = data["meta"]  # follow-up k at age 40 + k
    pairs = make_pairs(meta, 60, seed=0)
    gaps = pair_gaps(pairs, meta)
    assert (gaps["age_gap"] == gaps["followup_gap"]).all()
    # scores fall with the gap: close scans look alike, far ones less so
    scores = np.where(gaps["label"] == 1, 1.0 - 0.2 * gaps["age_gap"], 0.5)
    table = auc_by_gap(pairs, scores, meta, bins=(0, 2, 3, 10, math.inf), n_bootstrap=0)
    assert table["bin"].tolist() == ["0-2", "2-3", "3-10", "≥10"]
    assert table.loc[0, "auc"] == 1.0 and table.loc[2, "auc"] == 0.0
    assert table.loc[3, "positives"] == 0 and math.isnan(table.loc[3, "auc"])
    with pytest.raises(ValueError, match="by must be"):
        auc_by_gap(pairs, scores, meta, by="days")


def test_text_box_effect_reports_both_aucs(trained):
    images = trained["images"]
    boxes = [[[0, 0, 8, 4]] if i % 2 else [] for i in range(len(images.names))]
    effect = text_box_effect(trained["model"], images, trained["pairs"], boxes, n_bootstrap=20)
    assert effect["images_with_text"] == len(images.names) // 2
    assert set(effect) >= {"original", "text_blacked_out", "auc_change"}
    assert effect["original"]["auc_ci"][0] <= effect["original"]["auc"] <= effect["original"]["auc_ci"][1]
