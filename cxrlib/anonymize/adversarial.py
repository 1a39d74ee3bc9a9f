"""Adversarial training of a learned anonymizer against a siamese network and a classifier.

Shared by PriCheXy-Net (:class:`~cxrlib.anonymize.flow_field.FlowFieldAnonymizer`) and Privacy-Net:
any :class:`~cxrlib.anonymize.base.Anonymizer` with trainable parameters works. Following the
official PriCheXy-Net code (``utils/utils.py``: ``pretrain``, ``train``, ``validate``):

* **Pretraining** (:func:`pretrain_anonymizer`): the anonymizer learns to reproduce its input, MSE
  between ``anonymizer(x)`` and ``x`` through the whole anonymizer (for the flow field: G learns to
  output ~0, so the deformation starts as the identity), Adam, keep the lowest validation MSE.
* **Adversarial training** (:func:`train_adversarial`), per batch of pairs ``x1, x2`` (``image1``,
  ``image2``) with ``same`` and the first image's findings ``labels1``:

  1. generator step (Adam) on ``w_ac * AC + w_ver * (-log(1 - s))`` where AC is the classifier's
     BCE-with-logits on ``anonymizer(x1)`` against ``labels1`` and ``s = sigmoid(SNN(anonymizer(x1),
     x2))`` in float64, both networks in eval mode (:func:`adversarial_losses`);
  2. with ``update_adversaries`` (default): a siamese step (Adam) on the detached anonymized ``x1``
     and the real ``x2`` against same/different, then a classifier step (SGD, momentum 0.9, weight
     decay 1e-4) on the detached anonymized ``x1``, both in train mode.

  The anonymizer with the lowest validation total loss is kept (the official selection). After each
  epoch the siamese network as the caller gave it (frozen) scores the validation pairs with their
  first image anonymized: its AUC is the privacy reached against the network the training started
  from, which the in-loop copy drifts away from. The caller's siamese network and classifier are
  never modified: the loop trains copies of them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cxrlib.anonymize.base import Anonymizer
from cxrlib.runtime import autocast, make_accelerator, use_fast_layout
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, TrainingTask, fit, train

#: the quantities recorded per epoch, for training and validation
LOSS_NAMES = ("ac", "ver", "log_ver", "total")


def batch_loader(dataset: Dataset, batch_size: int, seed: int | None = None,
                 samples_per_epoch: int | None = None) -> DataLoader:
    """Shuffled with a seeded generator when ``seed`` is given (training, where a last incomplete batch is
    dropped: batch norm cannot train on one image), in order otherwise.

    ``samples_per_epoch`` (training only): each epoch draws that many items without replacement from a
    fresh permutation, so successive epochs see different items of a large pool.
    """
    training = seed is not None
    if not training:
        if samples_per_epoch is not None:
            raise ValueError("samples_per_epoch needs a seed: it draws training items")
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(seed)
    if samples_per_epoch is not None and not 0 < samples_per_epoch <= len(dataset):
        raise ValueError(f"samples_per_epoch must be between 1 and the {len(dataset)} items, got {samples_per_epoch}")
    drawn = len(dataset) if samples_per_epoch is None else samples_per_epoch
    sampler = RandomSampler(dataset, num_samples=drawn, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      drop_last=drawn > batch_size)


def privacy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log(1 - s)``, ``s = sigmoid(logit)``, in float64.

    ``-log(1 - sigmoid(z))`` equals ``softplus(z)``, which stays finite where ``1 - s`` rounds to zero.
    """
    return F.softplus(logits.reshape(-1).double()).mean()


def adversarial_losses(anonymizer: nn.Module, siamese: nn.Module, classifier: nn.Module,
                       batch: Mapping[str, torch.Tensor], *, w_ac: float, w_ver: float) -> dict[str, torch.Tensor]:
    """The generator's losses on one batch of pairs with the first image's findings (``image1``, ``image2``,
    ``labels1``: :class:`~cxrlib.data.datasets.PairDataset` with ``meta``).

    Returns ``ac`` (classifier BCE on the anonymized x1), ``ver`` (mean score s), ``log_ver`` (mean
    ``-log(1 - s)``), ``total`` (``w_ac * ac + w_ver * log_ver``, float64) and ``anonymized`` (x1 after
    the anonymizer, still attached to the graph).
    """
    anonymized = anonymizer(batch["image1"])
    ac = F.binary_cross_entropy_with_logits(classifier(anonymized).float(), batch["labels1"].float())
    logits = siamese(anonymized, batch["image2"]).reshape(-1)
    ver = torch.sigmoid(logits.double()).mean()
    log_ver = privacy_loss(logits)
    total = w_ac * ac.double() + w_ver * log_ver
    return {"ac": ac, "ver": ver, "log_ver": log_ver, "total": total, "anonymized": anonymized}


@dataclass(frozen=True)
class AdversarialSettings:
    """The adversarial objective and the three optimizers' learning rates: the fields of a profile's
    anonymization section (:class:`~cxrlib.config.AnonymizationConfig`, whose defaults are the published
    values) that the loop reads; ``update_adversaries`` False is notebook 02's diagnostic."""

    lr: float
    siamese_lr: float
    classifier_lr: float
    w_ac: float
    w_ver: float
    update_adversaries: bool

    @classmethod
    def of(cls, config: Any) -> AdversarialSettings:
        """The settings held by a profile's anonymization section (:class:`~cxrlib.config.AnonymizationConfig`)."""
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


@dataclass
class AdversarialResult(FitResult):
    """A :class:`~cxrlib.train.FitResult` whose history holds, per epoch, ``train_<name>`` and
    ``val_<name>`` for ``ac, ver, log_ver, total``; ``train_snn`` and ``train_classifier`` (the
    adversaries' own losses; NaN when they are not updated); ``val_frozen_auc`` (the siamese network
    the training started from, never updated, on the validation pairs with their first image
    anonymized)."""

    @property
    def best_val_total(self) -> float:
        """The kept generator's validation total loss (the official selection)."""
        return self.best_val_loss

    def epoch_of_lowest_frozen_auc(self) -> int:
        """The epoch whose generator the frozen siamese network separated worst (on validation pairs)."""
        curve = [(row["val_frozen_auc"], row["epoch"]) for row in self.history
                 if not math.isnan(row.get("val_frozen_auc", math.nan))]
        if not curve:
            raise ValueError("this training recorded no frozen-network AUC")
        return min(curve)[1]


def pretrain_anonymizer(anonymizer: Anonymizer, train_loader: DataLoader, val_loader: DataLoader, *,
                        lr: float, max_epochs: int, checkpoint: Checkpoint, runtime: Runtime = Runtime()) -> FitResult:
    """Train ``anonymizer`` to reproduce its input (MSE, Adam) on batches of images (``image``).

    As in the official code there is no early stopping: all ``max_epochs`` run and the weights with
    the lowest validation MSE are kept (in ``anonymizer`` and at the checkpoint).
    """
    def reconstruction(model: nn.Module, batch) -> torch.Tensor:
        images = batch["image"]
        return F.mse_loss(model(images).float(), images.float())

    optimizer = torch.optim.Adam(anonymizer.parameters(), lr=lr)
    return fit(anonymizer, reconstruction, train_loader, val_loader, optimizer=optimizer,
               schedule=Schedule(max_epochs), checkpoint=checkpoint, runtime=runtime)


class AdversarialTask(TrainingTask):
    """The adversarial loop's step (see the module docstring) for :func:`~cxrlib.train.train`: three
    networks and three optimizers, by name; the generator kept by its validation total loss.

    The siamese network and the classifier are copied: the caller's are never modified. A third copy
    of the siamese network, never updated, scores the validation pairs every epoch (``frozen_auc``).
    The adversaries are kept in ``channels_last`` (faster, benchmarks/bench_cpu_paths.py); the
    anonymizer in the default layout, where the gain is smaller, so that a saved one loaded elsewhere
    computes the same bits.
    """

    selection = "total"
    loss_names = (*LOSS_NAMES, "snn", "classifier")
    #: one process: the loaders as given
    shards_data = False

    def __init__(self, anonymizer: Anonymizer, siamese: nn.Module, classifier: nn.Module,
                 settings: AdversarialSettings):
        self.settings = settings
        self.anonymizer = anonymizer
        self.frozen = use_fast_layout(copy.deepcopy(siamese)).eval()
        self.siamese = use_fast_layout(copy.deepcopy(siamese))
        self.classifier = use_fast_layout(copy.deepcopy(classifier))
        self.networks = {"anonymizer": anonymizer, "siamese": self.siamese, "classifier": self.classifier}
        self.optimizers = {
            "optimizer": torch.optim.Adam(anonymizer.parameters(), lr=settings.lr),
            "siamese_optimizer": torch.optim.Adam(self.siamese.parameters(), lr=settings.siamese_lr),
            "classifier_optimizer": torch.optim.SGD(self.classifier.parameters(), lr=settings.classifier_lr,
                                                    momentum=0.9, weight_decay=1e-4)}
        self.kept = self.target = anonymizer

    def prepare(self, accelerator: Accelerator, cpu_bf16: bool) -> None:
        self.accelerator, self.cpu_bf16 = accelerator, cpu_bf16
        for network in (self.anonymizer, self.frozen, *self.networks.values()):
            network.to(accelerator.device)

    def step(self, batch) -> dict[str, torch.Tensor]:
        """One generator step, then (``update_adversaries``) one step of each adversary."""
        batch = _to_device(batch, self.accelerator.device)
        settings, optimizers = self.settings, self.optimizers
        self.anonymizer.train()
        self.siamese.eval()
        self.classifier.eval()
        # the adversaries only pass gradients through to the anonymizer in this step
        _requires_grad(self.siamese, False)
        _requires_grad(self.classifier, False)
        with autocast(self.accelerator, self.cpu_bf16):
            losses = adversarial_losses(self.anonymizer, self.siamese, self.classifier, batch, w_ac=settings.w_ac,
                                        w_ver=settings.w_ver)
        optimizers["optimizer"].zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizers["optimizer"].step()
        _requires_grad(self.siamese, True)
        _requires_grad(self.classifier, True)
        record = {name: losses[name].detach() for name in LOSS_NAMES}
        if not settings.update_adversaries:
            return record
        anonymized = losses["anonymized"].detach()
        self.siamese.train()
        optimizers["siamese_optimizer"].zero_grad(set_to_none=True)
        with autocast(self.accelerator, self.cpu_bf16):
            snn_loss = F.binary_cross_entropy_with_logits(
                self.siamese(anonymized, batch["image2"]).reshape(-1).float(), batch["same"].float())
        snn_loss.backward()
        optimizers["siamese_optimizer"].step()
        self.classifier.train()
        optimizers["classifier_optimizer"].zero_grad(set_to_none=True)
        with autocast(self.accelerator, self.cpu_bf16):
            classifier_loss = F.binary_cross_entropy_with_logits(self.classifier(anonymized).float(),
                                                                 batch["labels1"].float())
        classifier_loss.backward()
        optimizers["classifier_optimizer"].step()
        return {**record, "snn": snn_loss.detach(), "classifier": classifier_loss.detach()}

    def validate(self, loader) -> dict[str, float]:
        return validation_losses(self.anonymizer, self.siamese, self.classifier, loader, w_ac=self.settings.w_ac,
                                 w_ver=self.settings.w_ver, frozen=self.frozen, accelerator=self.accelerator)


def train_adversarial(anonymizer: Anonymizer, siamese: nn.Module, classifier: nn.Module,
                      train_loader: DataLoader, val_loader: DataLoader, *, schedule: Schedule,
                      checkpoint: Checkpoint, settings: AdversarialSettings, runtime: Runtime = Runtime()) -> AdversarialResult:
    """Train ``anonymizer`` adversarially (an :class:`AdversarialTask` through the shared engine,
    :func:`~cxrlib.train.train`); afterwards it holds the kept weights.

    Loaders yield pairs with the first image's findings (:class:`~cxrlib.data.datasets.PairDataset` with
    ``meta``). ``checkpoint.training``
    names what the training starts from (profile sections, the networks); with the schedule and
    ``settings`` it identifies the run: a finished checkpoint of the same run is loaded instead of
    training, one of another raises :class:`~cxrlib.artifacts.ArtifactError`. The checkpoint is an
    ordinary saved anonymizer (:func:`~cxrlib.anonymize.base.load_anonymizer` reads it); an
    interrupted run resumes from the state kept beside it. ``schedule.patience``: stop after that many
    epochs without a lower validation total loss (None: all ``max_epochs``, as published). Runs on
    ``runtime.accelerator``'s device with its mixed precision, in one process.
    """
    training = {"config": dict(checkpoint.training or {}), "max_epochs": schedule.max_epochs,
                **dataclasses.asdict(settings), "patience": schedule.patience}
    checkpoint = dataclasses.replace(checkpoint, config=anonymizer.config(), training=training)
    task = AdversarialTask(anonymizer, siamese, classifier, settings)
    result = train(task, train_loader, val_loader, schedule=schedule, checkpoint=checkpoint, runtime=runtime)
    return AdversarialResult(**vars(result))


@torch.no_grad()
def frozen_siamese_auc(anonymizer: nn.Module, siamese: nn.Module, loader: DataLoader, *,
                       accelerator: Accelerator | None = None) -> float:
    """ROC AUC of ``siamese`` on the pairs of ``loader`` with their first image anonymized (NaN when the
    pairs hold one class only)."""
    accelerator = accelerator or make_accelerator()
    anonymizer.eval()
    siamese.eval()
    scores, same = [], []
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        with autocast(accelerator):
            scores.append(siamese(anonymizer(batch["image1"]), batch["image2"]).reshape(-1).float().cpu())
        same.append(batch["same"].reshape(-1).cpu())
    return _auc(same, scores)


def _auc(labels: list[torch.Tensor], scores: list[torch.Tensor]) -> float:
    """ROC AUC of batches of scores against their same/different labels; NaN for one class only."""
    labels = torch.cat(labels).numpy()
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, torch.cat(scores).numpy()))


@torch.no_grad()
def validation_losses(anonymizer: nn.Module, siamese: nn.Module, classifier: nn.Module, loader: DataLoader, *,
                      w_ac: float, w_ver: float, frozen: nn.Module | None = None,
                      accelerator: Accelerator | None = None) -> dict[str, float]:
    """Mean ``ac, ver, log_ver, total`` over ``loader`` with every network in eval mode; with ``frozen``
    (a siamese network), also ``frozen_auc``: its :func:`frozen_siamese_auc` on the same anonymized
    images, which are computed once."""
    accelerator = accelerator or make_accelerator()
    for module in (anonymizer, siamese, classifier, *([frozen] if frozen is not None else [])):
        module.eval()
    sums, count = dict.fromkeys(LOSS_NAMES, 0.0), 0
    scores, same = [], []
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        with autocast(accelerator):
            losses = adversarial_losses(anonymizer, siamese, classifier, batch, w_ac=w_ac, w_ver=w_ver)
            if frozen is not None:
                scores.append(frozen(losses["anonymized"], batch["image2"]).reshape(-1).float().cpu())
                same.append(batch["same"].reshape(-1).cpu())
        size = batch["image1"].shape[0]
        for key in LOSS_NAMES:
            sums[key] += losses[key].item() * size
        count += size
    means = {k: v / count for k, v in sums.items()}
    return means if frozen is None else {**means, "frozen_auc": _auc(same, scores)}


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


def _to_device(batch: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: t.to(device, non_blocking=True) for key, t in batch.items()}
