"""Train and evaluate the 14-finding abnormality classifier, on original or anonymized images.

Training follows the CheXNet reproduction the PriCheXy-Net code uses: BCE on 14 outputs, SGD with
momentum, the learning rate divided by 10 whenever the validation loss does not improve, early
stopping after ``patience`` epochs without improvement, random horizontal flips. Small profiles train
from scratch on a few hundred phantom images, where SGD at lr 0.01 does not leave the label priors;
they use Adam and wait ``lr_patience`` epochs before dividing the learning rate. Evaluation reports
the AUC per finding, their mean, and a bootstrap 95 % CI of the mean (docs/papers.md section 2, utility).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrlib.config import ClassifierConfig
from cxrlib.data.chestxray14 import LABELS
from cxrlib.metrics import multilabel_auc
from cxrlib.models.classifier import Classifier
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit
from cxrlib.runtime import autocast, make_accelerator, seed_everything


def build_classifier(config: ClassifierConfig) -> Classifier:
    return Classifier(config.backbone, config.pretrained, config.input_size)


def _flip_loss(model: nn.Module, batch) -> torch.Tensor:
    images, labels = batch["image"], batch["labels"]
    if model.training:
        # random horizontal flip per image, drawn from fit's per-epoch, per-process seed
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return F.binary_cross_entropy_with_logits(model(images).float(), labels.float())


def make_optimizer(model: nn.Module, config: ClassifierConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"classifier optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


def train_classifier(train_set: Dataset, val_set: Dataset, config: ClassifierConfig, *,
                     checkpoint_path: str | Path, seed: int, progress: bool | None = None,
                     accelerator: Accelerator | None = None, num_workers: int = 0,
                     initial_weights: Mapping[str, torch.Tensor] | None = None) -> tuple[Classifier, FitResult]:
    """Build the classifier (initialized from ``seed``, or from ``initial_weights``, a state dict to
    fine-tune) and train it on image datasets (items with ``image`` and ``labels``, :mod:`cxrlib.data.datasets`) with the shared loop; a finished checkpoint
    is reused. Returns the classifier and the FitResult."""
    seed_everything(seed)
    model = build_classifier(config)
    if initial_weights is not None:
        model.load_state_dict(initial_weights)
    return model, _train(model, train_set, val_set, config, checkpoint_path=checkpoint_path, seed=seed,
                         progress=progress, accelerator=accelerator, num_workers=num_workers)


def _train(model: Classifier, train_set: Dataset, val_set: Dataset, config: ClassifierConfig, *,
           checkpoint_path: str | Path, seed: int, progress: bool | None, accelerator: Accelerator | None,
           num_workers: int) -> FitResult:
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                              drop_last=len(train_set) > config.batch_size,
                              num_workers=num_workers)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=num_workers)
    optimizer = make_optimizer(model, config)
    # lr_patience 0 divides by 10 after every epoch without a new best validation loss, as the CheXNet code
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=config.lr_patience)
    return fit(model, _flip_loss, train_loader, val_loader, optimizer=optimizer, scheduler=scheduler,
               schedule=Schedule(config.max_epochs, config.patience),
               checkpoint=Checkpoint(checkpoint_path, {"classifier": dataclasses.asdict(config)}, seed),
               runtime=Runtime(accelerator, progress))


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, anonymizer: nn.Module | None = None, batch_size: int = 64,
            accelerator: Accelerator | None = None, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 14) and labels (N, 14) on ``dataset``, images passed through ``anonymizer`` first."""
    accelerator = accelerator or make_accelerator()
    device = accelerator.device
    model.eval().to(device)
    if anonymizer is not None:
        anonymizer.eval().to(device)
    probabilities, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size)
    for batch in tqdm(loader, desc="predict", leave=False, disable=None if progress is None else not progress):
        images, targets = batch["image"].to(device), batch["labels"]
        with autocast(accelerator):
            if anonymizer is not None:
                images = anonymizer(images)
            probabilities.append(torch.sigmoid(model(images).float()).cpu())
        labels.append(targets)
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def evaluate_classifier(model: nn.Module, dataset: Dataset, *, anonymizer: nn.Module | None = None,
                        bootstrap_samples: int = 1000, seed: int = 0, batch_size: int = 64,
                        accelerator: Accelerator | None = None,
                        progress: bool | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Per-finding AUC, mean AUC and its bootstrap 95 % CI on (optionally anonymized) ``dataset``, and
    the probabilities (N, 14).

    The metrics are :func:`cxrlib.metrics.multilabel_auc`'s dict: ``per_class``, ``mean_auc``, ``ci``,
    ``excluded`` (findings absent from, or present in every image of, the test set).
    """
    probabilities, labels = predict(model, dataset, anonymizer=anonymizer, batch_size=batch_size,
                                    accelerator=accelerator, progress=progress)
    metrics = multilabel_auc(labels, probabilities, labels=LABELS, n_bootstrap=bootstrap_samples, seed=seed)
    return metrics, probabilities
