"""Adversarial training of a learned anonymizer against a siamese network and a classifier.

Shared by PriCheXy-Net (:class:`~cxrlib.anonymize.flow_field.FlowFieldAnonymizer`) and Privacy-Net:
any :class:`~cxrlib.anonymize.base.Anonymizer` with trainable parameters works. Following the
official PriCheXy-Net code (``utils/utils.py``: ``pretrain``, ``train``, ``validate``):

* **Pretraining** (:func:`pretrain_anonymizer`): the anonymizer learns to reproduce its input, MSE
  between ``anonymizer(x)`` and ``x`` through the whole anonymizer (for the flow field: G learns to
  output ~0, so the deformation starts as the identity), Adam, keep the lowest validation MSE.
* **Adversarial training** (:func:`train_adversarial`), per batch of pairs ``(x1, x2, same, labels1)``:

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
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from cxrlib.anonymize.base import Anonymizer
from cxrlib.artifacts import load_weights, save_weights
from cxrlib.data.chestxray14 import LABELS, DataError
from cxrlib.data.datasets import PairDataset
from cxrlib.train import (FitResult, autocast, check_finite, finished_sidecar, fit, last_checkpoint_path,
                          load_training_state, make_accelerator, process_seed, remove_training_state,
                          save_training_state, seed_everything, training_record, use_fast_layout, uses_bf16)

#: the quantities recorded per epoch, for training and validation
LOSS_NAMES = ("ac", "ver", "log_ver", "total")


class LabeledPairDataset(Dataset):
    """Pairs with the findings of the first image: items ``(x1, x2, same, labels1)``."""

    def __init__(self, pairs: PairDataset, meta: pd.DataFrame):
        labels = meta.set_index("image")[list(LABELS)]
        first = pairs.pairs["img1"]
        missing = first[~first.isin(labels.index)]
        if len(missing):
            raise DataError("metadata", f"{len(missing)} first image(s) of the pairs have no labels in the "
                                        f"metadata given, e.g. {missing.iloc[0]}")
        self.pairs = pairs
        self.labels = labels.loc[first].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        x1, x2, same = self.pairs[i]
        return x1, x2, same, torch.from_numpy(self.labels[i])


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
                       batch: tuple[torch.Tensor, ...], *, w_ac: float, w_ver: float) -> dict[str, torch.Tensor]:
    """The generator's losses on one batch ``(x1, x2, same, labels1)``.

    Returns ``ac`` (classifier BCE on the anonymized x1), ``ver`` (mean score s), ``log_ver`` (mean
    ``-log(1 - s)``), ``total`` (``w_ac * ac + w_ver * log_ver``, float64) and ``anonymized`` (x1 after
    the anonymizer, still attached to the graph).
    """
    x1, x2, _, labels1 = batch
    anonymized = anonymizer(x1)
    ac = F.binary_cross_entropy_with_logits(classifier(anonymized).float(), labels1.float())
    logits = siamese(anonymized, x2).reshape(-1)
    ver = torch.sigmoid(logits.double()).mean()
    log_ver = privacy_loss(logits)
    total = w_ac * ac.double() + w_ver * log_ver
    return {"ac": ac, "ver": ver, "log_ver": log_ver, "total": total, "anonymized": anonymized}


@dataclass
class AdversarialResult:
    #: one dict per epoch: ``epoch``; ``train_<name>`` and ``val_<name>`` for ``ac, ver, log_ver,
    #: total``; ``train_snn`` and ``train_classifier`` (the adversaries' own losses; NaN when they are
    #: not updated); ``val_frozen_auc`` (the siamese network the training started from, never updated,
    #: on the validation pairs with their first image anonymized); ``seconds``
    history: list[dict[str, float]]
    best_epoch: int
    best_val_total: float
    checkpoint_path: Path
    #: False when a finished checkpoint was loaded instead of training
    trained: bool
    max_epochs: int
    patience: int | None

    def epoch_of_lowest_frozen_auc(self) -> int:
        """The epoch whose generator the frozen siamese network separated worst (on validation pairs)."""
        curve = [(row["val_frozen_auc"], row["epoch"]) for row in self.history
                 if not math.isnan(row.get("val_frozen_auc", math.nan))]
        if not curve:
            raise ValueError("this training recorded no frozen-network AUC")
        return min(curve)[1]

    def record(self) -> dict[str, Any]:
        """:func:`~cxrlib.train.training_record` of this training."""
        # train_adversarial stops exactly when the patience runs out
        stopped = self.patience is not None and len(self.history) - self.best_epoch >= self.patience
        return training_record(len(self.history), self.best_epoch, self.max_epochs, self.patience, stopped)


def pretrain_anonymizer(anonymizer: Anonymizer, train_loader: DataLoader, val_loader: DataLoader, *,
                        lr: float, max_epochs: int, checkpoint_path: str | Path, config: Mapping[str, Any],
                        seed: int, progress: bool | None = None,
                        accelerator: Accelerator | None = None) -> FitResult:
    """Train ``anonymizer`` to reproduce its input (MSE, Adam); loaders yield images first in each batch.

    As in the official code there is no early stopping: all ``max_epochs`` run and the weights with
    the lowest validation MSE are kept (in ``anonymizer`` and at ``checkpoint_path``).
    """
    def reconstruction(model: nn.Module, batch) -> torch.Tensor:
        images = batch[0]
        return F.mse_loss(model(images).float(), images.float())

    optimizer = torch.optim.Adam(anonymizer.parameters(), lr=lr)
    return fit(anonymizer, reconstruction, train_loader, val_loader, optimizer=optimizer,
               max_epochs=max_epochs, patience=max_epochs, checkpoint_path=checkpoint_path,
               config=dict(config), seed=seed, progress=progress, accelerator=accelerator)


def train_adversarial(anonymizer: Anonymizer, siamese: nn.Module, classifier: nn.Module,
                      train_loader: DataLoader, val_loader: DataLoader, *, max_epochs: int, lr: float = 1e-4,
                      siamese_lr: float = 1e-4, classifier_lr: float = 1e-4, w_ac: float = 1.0,
                      w_ver: float = 1.0, update_adversaries: bool = True, patience: int | None = None,
                      checkpoint_path: str | Path, config: Mapping[str, Any], seed: int, progress: bool | None = None,
                      accelerator: Accelerator | None = None) -> AdversarialResult:
    """Train ``anonymizer`` adversarially (see the module docstring); afterwards it holds the best weights.

    Loaders yield ``(x1, x2, same, labels1)`` (:class:`LabeledPairDataset`). ``config`` identifies the
    run (profile sections, the networks it started from): a finished checkpoint at ``checkpoint_path``
    saved with the same config and seed is loaded instead of training; one saved with another config
    raises :class:`~cxrlib.artifacts.ArtifactError`. The checkpoint is an ordinary saved anonymizer
    (:func:`~cxrlib.anonymize.base.load_anonymizer` reads it), written once, at the end; while
    training, the state after every epoch (all three networks, their optimizers, the best
    anonymizer so far and the shuffling generator of ``train_loader``) is kept beside it, as
    :func:`~cxrlib.train.fit` keeps its own, and an interrupted run resumes from it.
    Runs on ``accelerator.device`` with its mixed precision, in one process. ``patience``: stop after
    that many epochs without a lower validation total loss (None: all ``max_epochs``, as published).
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if len(loader) == 0:
            raise ValueError(f"{name} yields no batches: its dataset is empty")
    path = Path(checkpoint_path).with_suffix(".safetensors")
    last_path = last_checkpoint_path(path)
    training = {"config": dict(config), "seed": seed, "max_epochs": max_epochs, "lr": lr,
                "siamese_lr": siamese_lr, "classifier_lr": classifier_lr, "w_ac": w_ac, "w_ver": w_ver,
                "update_adversaries": update_adversaries, "patience": patience}
    identity = {"training": training}
    finished = finished_sidecar(path, identity)
    if finished is not None:
        load_weights(anonymizer, path, config=anonymizer.config())
        anonymizer.eval()
        return AdversarialResult(history=finished["history"], best_epoch=finished["best_epoch"],
                                 best_val_total=finished["metrics"]["val_total"], checkpoint_path=path,
                                 trained=False, max_epochs=max_epochs, patience=patience)

    accelerator = accelerator or make_accelerator()
    device = accelerator.device
    seed_everything(seed)
    # the siamese network as the caller gave it, never updated: its AUC per epoch is the privacy the
    # generator has reached against the network it started from
    frozen = use_fast_layout(copy.deepcopy(siamese).to(device)).eval()
    # the adversaries in channels_last (faster, benchmarks/bench_cpu_paths.py); the anonymizer keeps the
    # default layout, where the gain is smaller, so that a saved one loaded elsewhere computes the same bits
    siamese = use_fast_layout(copy.deepcopy(siamese).to(device))
    classifier = use_fast_layout(copy.deepcopy(classifier).to(device))
    anonymizer.to(device)
    optimizers = {
        "optimizer": torch.optim.Adam(anonymizer.parameters(), lr=lr),
        "siamese_optimizer": torch.optim.Adam(siamese.parameters(), lr=siamese_lr),
        "classifier_optimizer": torch.optim.SGD(classifier.parameters(), lr=classifier_lr, momentum=0.9,
                                                weight_decay=1e-4)}
    networks = {"anonymizer": anonymizer, "siamese": siamese, "classifier": classifier}
    shuffler = getattr(train_loader, "generator", None)

    state = {"epoch": 0, "best_epoch": 0, "best_val_total": math.inf, "history": []}
    best_state = None
    resume = load_training_state(last_path, identity)
    if resume is not None:
        state = resume.sidecar["state"]
        for name, module in networks.items():
            module.load_state_dict(resume.tensors(name))
        for name, optimizer in optimizers.items():
            resume.load_optimizer(name, optimizer)
        best_state = resume.tensors("best")
        if shuffler is not None:
            shuffler.set_state(resume.tensors("shuffler")["state"])

    bar = tqdm(range(state["epoch"] + 1, max_epochs + 1), unit="epoch", leave=False, desc=path.stem,
               disable=None if progress is None else not progress)
    for epoch in bar:
        seed_everything(process_seed(seed, epoch, accelerator.process_index))
        started = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        for batch in train_loader:
            batch = _to_device(batch, device)
            losses = _training_step(anonymizer, siamese, classifier, batch, optimizers, w_ac=w_ac, w_ver=w_ver,
                                    update_adversaries=update_adversaries, accelerator=accelerator)
            check_finite(losses["total"], "adversarial training loss", epoch, _kept(path, state))
            size = batch[0].shape[0]
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value * size
            count += size
        record = {"epoch": epoch, **{f"train_{k}": v / count for k, v in sums.items()}}
        record.update({f"val_{k}": v for k, v in validation_losses(anonymizer, siamese, classifier,
                                                                   val_loader, w_ac=w_ac, w_ver=w_ver, frozen=frozen,
                                                                   accelerator=accelerator).items()})
        check_finite(record["val_total"], "adversarial validation loss", epoch, _kept(path, state))
        record["seconds"] = time.perf_counter() - started
        record["bf16"] = uses_bf16(accelerator)
        state["history"].append(record)
        state["epoch"] = epoch
        if record["val_total"] < state["best_val_total"]:
            state.update(best_val_total=record["val_total"], best_epoch=epoch)
            best_state = {k: v.detach().clone() for k, v in anonymizer.state_dict().items()}
        tensors = {**{name: module.state_dict() for name, module in networks.items()}, "best": best_state}
        if shuffler is not None:
            tensors["shuffler"] = {"state": shuffler.get_state()}
        save_training_state(last_path, tensors=tensors, optimizers=optimizers,
                            sidecar={**identity, "state": state})
        bar.set_postfix(total=f"{record['train_total']:.4f}", val=f"{record['val_total']:.4f}")
        if patience is not None and epoch - state["best_epoch"] >= patience:
            break

    anonymizer.load_state_dict(best_state)
    anonymizer.eval()
    save_weights(anonymizer, path, config=anonymizer.config(), metrics={"val_total": state["best_val_total"]},
                 extra={**identity, "history": state["history"], "best_epoch": state["best_epoch"],
                        "finished": True})
    remove_training_state(last_path)
    return AdversarialResult(history=state["history"], best_epoch=state["best_epoch"],
                             best_val_total=state["best_val_total"], checkpoint_path=path, trained=True,
                             max_epochs=max_epochs, patience=patience)


def _kept(path: Path, state: dict[str, Any]) -> str:
    where = last_checkpoint_path(path)
    return (f"the state of epoch {state['epoch']} is kept in {where}" if state["epoch"]
            else f"nothing was written to {path}")


def _training_step(anonymizer, siamese, classifier, batch, optimizers: Mapping[str, torch.optim.Optimizer], *,
                   w_ac, w_ver, update_adversaries, accelerator) -> dict[str, float]:
    """One generator step, then (``update_adversaries``) one step of each adversary; ``optimizers`` by name:
    ``optimizer`` (the anonymizer's), ``siamese_optimizer``, ``classifier_optimizer``."""
    optimizer, siamese_optimizer, classifier_optimizer = (
        optimizers["optimizer"], optimizers["siamese_optimizer"], optimizers["classifier_optimizer"])
    x1, x2, same, labels1 = batch
    anonymizer.train()
    siamese.eval()
    classifier.eval()
    # the adversaries only pass gradients through to the anonymizer in this step
    _requires_grad(siamese, False)
    _requires_grad(classifier, False)
    with autocast(accelerator):
        losses = adversarial_losses(anonymizer, siamese, classifier, batch, w_ac=w_ac, w_ver=w_ver)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    _requires_grad(siamese, True)
    _requires_grad(classifier, True)
    record = {k: losses[k].item() for k in LOSS_NAMES}
    record["snn"] = record["classifier"] = math.nan
    if update_adversaries:
        anonymized = losses["anonymized"].detach()
        siamese.train()
        siamese_optimizer.zero_grad(set_to_none=True)
        with autocast(accelerator):
            snn_loss = F.binary_cross_entropy_with_logits(siamese(anonymized, x2).reshape(-1).float(),
                                                          same.float())
        snn_loss.backward()
        siamese_optimizer.step()
        classifier.train()
        classifier_optimizer.zero_grad(set_to_none=True)
        with autocast(accelerator):
            classifier_loss = F.binary_cross_entropy_with_logits(classifier(anonymized).float(),
                                                                 labels1.float())
        classifier_loss.backward()
        classifier_optimizer.step()
        record["snn"], record["classifier"] = snn_loss.item(), classifier_loss.item()
    return record


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
        x1, x2, label, _ = _to_device(batch, accelerator.device)
        with autocast(accelerator):
            scores.append(siamese(anonymizer(x1), x2).reshape(-1).float().cpu())
        same.append(label.reshape(-1).cpu())
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
                scores.append(frozen(losses["anonymized"], batch[1]).reshape(-1).float().cpu())
                same.append(batch[2].reshape(-1).cpu())
        size = batch[0].shape[0]
        for key in LOSS_NAMES:
            sums[key] += losses[key].item() * size
        count += size
    means = {k: v / count for k, v in sums.items()}
    return means if frozen is None else {**means, "frozen_auc": _auc(same, scores)}


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


def _to_device(batch, device):
    return tuple(t.to(device, non_blocking=True) for t in batch)
