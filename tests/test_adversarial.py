"""The adversarial loop: the loss on known inputs, which networks one iteration updates, caching."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset  # TensorDataset: a pool of indices only

from cxrlib.anonymize import FlowFieldAnonymizer, load_anonymizer
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer
from cxrlib.anonymize.adversarial import (
    AdversarialSettings, AdversarialTask, adversarial_losses, batch_loader, frozen_siamese_auc,
    privacy_loss, pretrain_anonymizer, train_adversarial,
)
from cxrlib.artifacts import ArtifactError
from cxrlib.config import AnonymizationConfig
from cxrlib.data.chestxray14 import LABELS, DataError
from cxrlib.data.datasets import TensorItems
from cxrlib.checkpoints import checkpoint_finished, load_training_state
from cxrlib.train import Checkpoint, Runtime, Schedule, train

SIZE = 16


class TinySiamese(nn.Module):
    """Stand-in with the SiameseNetwork interface: forward(x1, x2) -> logit (B,)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16, 1)

    def forward(self, x1, x2):
        return self.head((self.embed(x1) - self.embed(x2)).abs()).squeeze(1)


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, len(LABELS)))

    def forward(self, x):
        return self.net(x)


class ConstantLogit(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x1, x2):
        return torch.full((x1.shape[0],), self.value)


def pair_loader(n: int = 8, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(n, 1, SIZE, SIZE, generator=g), torch.rand(n, 1, SIZE, SIZE, generator=g)
    same = (torch.arange(n) % 2).float()
    labels = (torch.rand(n, len(LABELS), generator=g) < 0.3).float()
    return DataLoader(TensorItems(image1=x1, image2=x2, same=same, labels1=labels), batch_size=batch_size)


def networks():
    torch.manual_seed(0)
    anonymizer = FlowFieldAnonymizer(mu=0.01, image_size=SIZE, features=4, poolings=2, smoothing_kernel=3,
                                     smoothing_sigma=0.5)
    return anonymizer, TinySiamese(), TinyClassifier()


#: the published settings (the anonymization section's defaults)
PUBLISHED = AdversarialSettings.of(AnonymizationConfig())


def run_adversarial(anonymizer, siamese, classifier, train_loader, val_loader, *, path, max_epochs, patience=None,
                    config=None, seed=0, **settings):
    """:func:`train_adversarial` with the schedule, checkpoint and settings spelled as keywords."""
    return train_adversarial(anonymizer, siamese, classifier, train_loader, val_loader,
                             schedule=Schedule(max_epochs, patience),
                             checkpoint=Checkpoint(path, anonymizer.config(), seed, training=config or {}),
                             settings=dataclasses.replace(PUBLISHED, **settings), runtime=Runtime(progress=False))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[k]) for k, p in module.named_parameters())


def test_privacy_loss_on_known_inputs():
    assert privacy_loss(torch.zeros(3)).item() == pytest.approx(math.log(2))
    logits = torch.tensor([-2.0, 0.5, 3.0])
    s = torch.sigmoid(logits.double())
    assert privacy_loss(logits).item() == pytest.approx((-torch.log(1 - s)).mean().item(), rel=1e-12)
    # where 1 - s rounds to zero in float32 the loss stays finite (it equals the logit)
    assert privacy_loss(torch.tensor([200.0])).item() == pytest.approx(200.0)
    assert privacy_loss(torch.zeros(2)).dtype == torch.float64


def test_total_loss_combines_classifier_bce_and_privacy_term():
    anonymizer, _, classifier = networks()
    anonymizer.eval()
    classifier.eval()
    batch = next(iter(pair_loader()))
    x1, labels = batch["image1"], batch["labels1"]
    losses = adversarial_losses(anonymizer, ConstantLogit(1.0), classifier, batch, w_ac=2.0, w_ver=0.5)
    expected_ac = nn.functional.binary_cross_entropy_with_logits(classifier(anonymizer(x1)), labels)
    s = 1 / (1 + math.exp(-1.0))
    assert losses["ac"].item() == pytest.approx(expected_ac.item(), rel=1e-6)
    assert losses["ver"].item() == pytest.approx(s)
    assert losses["log_ver"].item() == pytest.approx(-math.log(1 - s))
    assert losses["total"].item() == pytest.approx(2.0 * expected_ac.item() - 0.5 * math.log(1 - s), rel=1e-6)


@pytest.mark.parametrize("update_adversaries", [True, False])
def test_one_iteration_updates_the_networks_it_should(tmp_path, update_adversaries):
    anonymizer, siamese, classifier = networks()
    before = [snapshot(m) for m in (anonymizer, siamese, classifier)]
    result = run_adversarial(anonymizer, siamese, classifier, pair_loader(n=4), pair_loader(n=4),
                               max_epochs=1, lr=1e-2, siamese_lr=1e-2, classifier_lr=1e-2,
                               update_adversaries=update_adversaries, path=tmp_path / "gen",
                               config={"case": update_adversaries}, seed=1)
    assert changed(anonymizer, before[0])
    # the caller's networks stay as they were; the loop trains copies
    assert not changed(siamese, before[1]) and not changed(classifier, before[2])
    record = result.history[0]
    assert math.isnan(record["train_snn"]) != update_adversaries
    assert math.isnan(record["train_classifier"]) != update_adversaries
    assert set(record) >= {"train_total", "val_total", "val_ac", "val_ver", "val_log_ver", "val_frozen_auc", "seconds"}


def test_the_frozen_siamese_networks_auc_is_recorded_every_epoch(tmp_path):
    anonymizer, siamese, classifier = networks()
    val = pair_loader(n=8)
    result = run_adversarial(anonymizer, siamese, classifier, pair_loader(n=8), val, max_epochs=3, lr=1e-2,
                               siamese_lr=1e-2, path=tmp_path / "gen", config={}, seed=0)
    curve = [row["val_frozen_auc"] for row in result.history]
    assert len(curve) == 3 and all(0 <= auc <= 1 for auc in curve)
    assert result.epoch_of_lowest_frozen_auc() == min(result.history, key=lambda r: r["val_frozen_auc"])["epoch"]
    # the kept generator, scored by the caller's (never updated) siamese network, gives its epoch's figure
    assert frozen_siamese_auc(anonymizer, siamese, val) == pytest.approx(curve[result.best_epoch - 1], abs=1e-6)
    assert math.isnan(frozen_siamese_auc(anonymizer, siamese, DataLoader(
        torch.utils.data.Subset(val.dataset, [1, 3, 5]), batch_size=4)))  # one class only


def test_epochs_draw_new_pairs_from_a_larger_pool():
    pool = TensorDataset(torch.arange(40))
    loader = batch_loader(pool, batch_size=5, seed=0, samples_per_epoch=10)
    epochs = [torch.cat([b[0] for b in loader]).tolist() for _ in range(4)]
    assert all(len(e) == len(set(e)) == 10 for e in epochs)  # distinct within an epoch
    assert len(set().union(*epochs)) > 20  # and mostly new from one epoch to the next
    # without samples_per_epoch every item, once, each epoch (what the published schedule does)
    assert sorted(torch.cat([b[0] for b in batch_loader(pool, 5, seed=0)]).tolist()) == list(range(40))
    with pytest.raises(ValueError, match="between 1 and the 40"):
        batch_loader(pool, 5, seed=0, samples_per_epoch=41)
    with pytest.raises(ValueError, match="needs a seed"):
        batch_loader(pool, 5, samples_per_epoch=10)


def test_adversaries_are_updated_inside_the_loop(monkeypatch, tmp_path):
    """With update_adversaries the copies change; without, they stay fixed."""
    import cxrlib.anonymize.adversarial as adversarial

    seen = {}
    original = adversarial.AdversarialTask.step

    def spy(task, batch):
        before = snapshot(task.siamese), snapshot(task.classifier)
        record = original(task, batch)
        seen.setdefault(task.settings.update_adversaries, []).append(
            (changed(task.siamese, before[0]), changed(task.classifier, before[1])))
        return record

    monkeypatch.setattr(adversarial.AdversarialTask, "step", spy)
    for flag in (True, False):
        anonymizer, siamese, classifier = networks()
        run_adversarial(anonymizer, siamese, classifier, pair_loader(n=4), pair_loader(n=4), max_epochs=1,
                          update_adversaries=flag, path=tmp_path / f"g{flag}", config={}, seed=0)
    assert seen[True] == [(True, True)]
    assert seen[False] == [(False, False)]


def flow_field() -> FlowFieldAnonymizer:
    return FlowFieldAnonymizer(mu=0.02, image_size=SIZE, features=4, poolings=2, smoothing_kernel=3,
                               smoothing_sigma=0.5)


def privacy_net() -> PrivacyNetAnonymizer:
    return PrivacyNetAnonymizer(features=8, poolings=3)


#: both learned anonymizers go through the same loops
METHODS = pytest.mark.parametrize("make_anonymizer", [flow_field, privacy_net], ids=["prichexy_net", "privacy_net"])


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Smooth images in [0, 1], so that a deformation or a rewrite shows in the MSE."""
    g = torch.Generator().manual_seed(seed)
    images = nn.functional.avg_pool2d(torch.rand(n, 1, SIZE + 4, SIZE + 4, generator=g), 5, 1)
    low, high = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low)


@METHODS
def test_best_generator_is_kept_saved_and_reused(tmp_path, make_anonymizer):
    _, siamese, classifier = networks()
    torch.manual_seed(0)
    anonymizer = make_anonymizer()
    before = snapshot(anonymizer)
    result = run_adversarial(anonymizer, siamese, classifier, pair_loader(), pair_loader(seed=1),
                               max_epochs=3, lr=1e-2, path=tmp_path / "gen", config={"a": 1}, seed=0)
    assert result.trained and len(result.history) == 3 and changed(anonymizer, before)
    totals = [r["val_total"] for r in result.history]
    assert result.best_epoch == 1 + totals.index(min(totals)) and result.best_val_total == min(totals)
    images = torch.rand(2, 1, SIZE, SIZE)
    expected = anonymizer.eval()(images)
    loaded = load_anonymizer(result.checkpoint_path)
    assert type(loaded) is type(anonymizer) and loaded.params() == anonymizer.params()
    assert torch.equal(loaded(images), expected)

    torch.manual_seed(1)
    fresh = make_anonymizer()
    again = run_adversarial(fresh, siamese, classifier, pair_loader(), pair_loader(seed=1), max_epochs=3,
                              lr=1e-2, path=tmp_path / "gen", config={"a": 1}, seed=0)
    assert not again.trained and again.history == result.history
    assert torch.equal(fresh(images), expected)
    with pytest.raises(ArtifactError, match="another configuration"):
        run_adversarial(fresh, siamese, classifier, pair_loader(), pair_loader(seed=1), max_epochs=3,
                          lr=1e-2, path=tmp_path / "gen", config={"a": 2}, seed=0)


def _shuffled_pairs(n: int = 12) -> DataLoader:
    return batch_loader(pair_loader(n=n).dataset, batch_size=4, seed=3)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import cxrlib.anonymize.adversarial as adversarial

    def run(path, **kwargs):
        anonymizer, siamese, classifier = networks()
        result = run_adversarial(anonymizer, siamese, classifier, _shuffled_pairs(), pair_loader(seed=1),
                                   max_epochs=3, lr=1e-2, path=path, config={"a": 1}, seed=0)
        return anonymizer, result

    reference, reference_result = run(tmp_path / "ref")
    original, calls = adversarial.AdversarialTask.step, {"n": 0}

    def interrupted(task, batch):
        calls["n"] += 1
        if calls["n"] > 2 * 3:  # two epochs of three batches
            raise KeyboardInterrupt
        return original(task, batch)

    monkeypatch.setattr(adversarial.AdversarialTask, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "gen")
    last = tmp_path / "gen.last.safetensors"
    assert last.is_file() and not checkpoint_finished(tmp_path / "gen")
    monkeypatch.setattr(adversarial.AdversarialTask, "step", original)
    resumed, result = run(tmp_path / "gen")
    assert result.trained and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [r["val_total"] for r in result.history] == pytest.approx(
        [r["val_total"] for r in reference_result.history])
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not last.exists()


def test_nan_loss_stops_the_adversarial_loop_naming_the_epoch(tmp_path):
    anonymizer, siamese, classifier = networks()
    broken = pair_loader()
    broken.dataset.tensors["labels1"][0, 0] = float("nan")  # a NaN label makes the classifier loss NaN
    with pytest.raises(FloatingPointError, match="epoch 1; training stopped and no checkpoint was written"):
        run_adversarial(anonymizer, siamese, classifier, broken, pair_loader(), max_epochs=2,
                          path=tmp_path / "gen", config={}, seed=0)
    assert not any(tmp_path.iterdir())


def test_patience_stops_the_generator_once_the_validation_total_stops_falling(tmp_path):
    anonymizer, siamese, classifier = networks()
    result = run_adversarial(anonymizer, siamese, classifier, pair_loader(), pair_loader(seed=1),
                               max_epochs=30, lr=1e-2, patience=1, path=tmp_path / "gen",
                               config={"a": 1}, seed=0)
    totals = [r["val_total"] for r in result.history]
    assert len(totals) == result.best_epoch + 1 < 30  # one epoch without improvement, then stop
    assert min(totals[:-1]) <= totals[-1]


@METHODS
def test_pretraining_reduces_the_reconstruction_error(tmp_path, make_anonymizer):
    torch.manual_seed(0)
    anonymizer = make_anonymizer()
    images = smooth_images(16, seed=0)
    loader = DataLoader(TensorItems(image=images, labels=torch.zeros(16, len(LABELS))), batch_size=8)
    anonymizer.eval()
    with torch.no_grad():
        start = nn.functional.mse_loss(anonymizer(images), images).item()
    result = pretrain_anonymizer(anonymizer, loader, loader, lr=1e-2, max_epochs=6,
                                 checkpoint=Checkpoint(tmp_path / "pre", {"x": 1}, 0), runtime=Runtime(progress=False))
    with torch.no_grad():
        end = nn.functional.mse_loss(anonymizer(images), images).item()
    assert end == pytest.approx(result.best_val_loss, rel=1e-4)  # the best weights are kept
    assert end < 0.5 * start


def test_labeled_pairs_carry_the_first_images_findings(tiny_dataset):
    from cxrlib.data.cache import prepare_cache
    from cxrlib.data.chestxray14 import read_metadata
    from cxrlib.data.datasets import PairDataset

    meta = read_metadata(tiny_dataset / "Data_Entry_2017_v2020.csv")
    cache = prepare_cache(tiny_dataset, 16, workers=1, progress=False)
    pairs = pd.DataFrame({"img1": meta["image"][:3].tolist(), "img2": meta["image"][3:6].tolist(),
                          "label": [1, 0, 0]})
    dataset = PairDataset(cache, pairs, meta=meta)
    item = dataset[1]
    assert set(item) == set(dataset.keys) == {"image1", "image2", "same", "labels1"}
    assert item["image1"].shape == (1, 16, 16) and item["same"].item() == 0
    assert item["labels1"].tolist() == meta.loc[1, list(LABELS)].astype(float).tolist()
    assert "labels1" not in PairDataset(cache, pairs)[1]  # without metadata: the pair alone
    with pytest.raises(DataError, match="no labels"):
        PairDataset(cache, pairs, meta=meta.iloc[3:])


def test_prichexy_pipeline_pretrains_once_trains_every_mu_and_reuses_checkpoints(tmp_path):
    from cxrlib.anonymize.flow_field import train_prichexy_net
    from cxrlib.config import load_profile

    config = load_profile("smoke", **{"anonymization.mu_values": (0.05, 0.2), "anonymization.generator_features": 4,
                                      "anonymization.batch_size": 4, "anonymization.pairs_per_epoch": 4}).anonymization
    loader = pair_loader(n=8)
    pairs = loader.dataset
    images = TensorItems(image=pairs.tensors["image1"], labels=pairs.tensors["labels1"])
    _, siamese, classifier = networks()
    kwargs = dict(siamese=siamese, classifier=classifier, images=(images, images), pairs=(pairs, pairs),
                  artifact_path=lambda name: tmp_path / name, identity={"siamese": "tiny"}, seed=0)
    trained = train_prichexy_net(config, SIZE, **kwargs)
    assert sorted(trained.anonymizers) == [0.05, 0.2]
    assert {a.mu for a in trained.anonymizers.values()} == {0.05, 0.2}
    assert trained.pretraining.trained and all(r.trained for r in trained.results.values())
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "prichexy_mu0p05.safetensors", "prichexy_mu0p2.safetensors", "prichexy_pretrain.safetensors"]
    again = train_prichexy_net(config, SIZE, **kwargs)
    assert not again.pretraining.trained and not any(r.trained for r in again.results.values())
    x = torch.rand(2, 1, SIZE, SIZE)
    for mu in (0.05, 0.2):
        assert torch.equal(again.anonymizers[mu](x), trained.anonymizers[mu](x))
    # both mu side by side in two processes (one thread each, as the tests run): the same generators
    (tmp_path / "pool").mkdir()
    side_by_side = train_prichexy_net(config, SIZE, processes=2,
                                      **{**kwargs, "artifact_path": lambda name: tmp_path / "pool" / name})
    assert all(r.trained for r in side_by_side.results.values())
    for mu in (0.05, 0.2):
        assert torch.equal(side_by_side.anonymizers[mu](x), trained.anonymizers[mu](x))
    assert trained.frozen_adversaries is None
    # the diagnostic: the largest mu against adversaries never updated, beside the others
    diagnosed = train_prichexy_net(config, SIZE, frozen_adversaries_diagnostic=True, **kwargs)
    assert not any(r.trained for r in diagnosed.results.values())  # the others are loaded
    anonymizer, result = diagnosed.frozen_adversaries
    assert anonymizer.mu == 0.2 and result.trained
    assert result.checkpoint_path.name == "prichexy_mu0p2_frozen_adversaries.safetensors"
    assert all(math.isnan(row["train_snn"]) and not math.isnan(row["val_frozen_auc"]) for row in result.history)


def test_loss_and_score_figures_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cxrlib.plots.anonymize import plot_adversarial_history, plot_score_histograms

    anonymizer, siamese, classifier = networks()
    result = run_adversarial(anonymizer, siamese, classifier, pair_loader(n=4), pair_loader(n=4), max_epochs=2,
                               path=tmp_path / "g", config={}, seed=0)
    fig = plot_adversarial_history({"mu = 0.1": result.history}, kept={"mu = 0.1": result.best_epoch})
    assert len(fig.axes[0].lines) == 3  # training, validation, the kept epoch
    assert len(fig.axes) == 5 and len(fig.axes[-1].lines) == 3  # the frozen AUC, its lowest, the kept epoch
    history = [{k: v for k, v in row.items() if k != "val_frozen_auc"} for row in result.history]
    assert len(plot_adversarial_history({"older run": history}).axes) == 4
    fig = plot_score_histograms({"original": (np.array([0.9, 0.1]), np.array([1, 0]))})
    assert len(fig.axes) == 1
    plt.close("all")


def test_the_shared_engine_drives_the_adversarial_step_by_named_networks_and_optimizers(tmp_path, monkeypatch):
    """The adversarial task runs through cxrlib.train.train like any other: its three networks and three
    optimizers are saved and restored by name, and each optimizer steps its own network."""
    anonymizer, siamese, classifier = networks()
    task = AdversarialTask(anonymizer, siamese, classifier,
                           dataclasses.replace(PUBLISHED, lr=1e-2, siamese_lr=1e-2, classifier_lr=1e-2))
    assert set(task.optimizers) == {"optimizer", "siamese_optimizer", "classifier_optimizer"}
    owners = {"optimizer": anonymizer, "siamese_optimizer": task.siamese, "classifier_optimizer": task.classifier}
    for name, optimizer in task.optimizers.items():
        assert {id(p) for group in optimizer.param_groups for p in group["params"]} == \
            {id(p) for p in owners[name].parameters()}
    checkpoint = Checkpoint(tmp_path / "gen", anonymizer.config(), 0, training={"engine": 1})
    # stop after the first epoch's state is written, to read it
    import cxrlib.train as engine

    saved = {}
    original = engine.save_training_state

    def keep_and_stop(path, **kwargs):
        original(path, **kwargs)
        saved["state"] = load_training_state(path, checkpoint.identity())
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_training_state", keep_and_stop)
    with pytest.raises(KeyboardInterrupt):
        train(task, pair_loader(n=8), pair_loader(n=4, seed=1), schedule=Schedule(2), checkpoint=checkpoint,
              runtime=Runtime(progress=False))
    state = saved["state"]
    for name, network in task.networks.items():
        assert set(state.tensors(name)) == set(network.state_dict())
    for name, optimizer in task.optimizers.items():
        assert state.sidecar["optimizers"][name]["param_groups"][0]["lr"] == 1e-2
        assert state.tensors(name), f"{name} holds no state: it never stepped"
    assert state.sidecar["state"]["history"][0]["train_snn"] > 0
