"""Privacy-Net (Kim, Dolz, Jodoin, Desrosiers; IEEE TMI 2021) as PriCheXy-Net's comparison uses it.

An encoder U-Net rewrites the whole image (1 -> 1 channel, 16 filters at the first level, 3 poolings,
LeakyReLU 0.2, BatchNorm, sigmoid output, so the result is an image in [0, 1]). Unlike PriCheXy-Net's
flow field, nothing bounds how far the output may drift from the input: only the classifier term of
the loss keeps it useful.

Training is PriCheXy-Net's, with this encoder in place of the flow field (docs/papers.md section 3):

1. pretraining as an identity map (MSE to the input) --
   :func:`cxrlib.anonymize.adversarial.pretrain_anonymizer`;
2. adversarial training with the same loss and the same per-iteration updates of the siamese network
   and the classifier -- :func:`cxrlib.anonymize.adversarial.train_adversarial`.

Both functions take any :class:`~cxrlib.anonymize.base.Anonymizer`, so there is one loop for both
generators; :func:`train_privacy_net` runs the two steps with the settings PriCheXy-Net's
:func:`~cxrlib.anonymize.flow_field.train_prichexy_net` uses. The U-Net is cxrlib's one configurable
:class:`~cxrlib.models.unets.UNet`; its docstring lists the small block-level differences from the
original 2-D port.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from cxrlib.anonymize.adversarial import (AdversarialResult, AdversarialSettings, batch_loader,
                                         pretrain_anonymizer, train_adversarial)
from cxrlib.anonymize.base import Anonymizer, register
from cxrlib.config import AnonymizationConfig
from cxrlib.models.unets import UNet
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule


@register
class PrivacyNetAnonymizer(Anonymizer):
    """``encoder(x)``: a U-Net with a sigmoid output that replaces the image by a new one."""

    name = "privacy_net"

    def __init__(self, features: int = 16, poolings: int = 3):
        super().__init__()
        self.features, self.poolings = int(features), int(poolings)
        self.encoder = UNet(1, 1, features=self.features, poolings=self.poolings, activation="leaky_relu",
                            output="sigmoid")

    @classmethod
    def from_config(cls, config: AnonymizationConfig) -> PrivacyNetAnonymizer:
        return cls(features=config.privacy_net_features, poolings=config.privacy_net_poolings)

    def params(self) -> dict[str, Any]:
        return {"features": self.features, "poolings": self.poolings}

    def anonymize(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


@dataclass
class PrivacyNet:
    """The outcome of :func:`train_privacy_net`."""

    pretraining: FitResult
    anonymizer: PrivacyNetAnonymizer
    result: AdversarialResult


def train_privacy_net(config: AnonymizationConfig, *, siamese: nn.Module, classifier: nn.Module,
                      images: tuple[Dataset, Dataset], pairs: tuple[Dataset, Dataset],
                      artifact_path: Callable[[str], Path], identity: Mapping[str, Any], seed: int,
                      progress: bool | None = None, accelerator: Accelerator | None = None) -> PrivacyNet:
    """Pretrain the encoder as an identity map, then train it adversarially; cached checkpoints are loaded.

    Arguments as for :func:`~cxrlib.anonymize.flow_field.train_prichexy_net`: ``images`` are (train, val)
    datasets whose items start with an image, ``pairs`` (train, val)
    :class:`~cxrlib.data.datasets.PairDataset` with ``meta``, ``artifact_path(name)`` where the models
    ``privacy_net_pretrain`` and ``privacy_net`` live, ``identity`` names the siamese network and the
    classifier the training starts from (a change of either retrains). Same optimizers, learning
    rates, loss weights, batch size and epochs as PriCheXy-Net.
    """
    torch.manual_seed(seed)  # the encoder's initial weights
    anonymizer = PrivacyNetAnonymizer.from_config(config)

    pretraining = pretrain_anonymizer(
        anonymizer, batch_loader(images[0], config.batch_size, seed), batch_loader(images[1], config.batch_size),
        lr=config.pretrain_lr, max_epochs=config.pretrain_epochs,
        checkpoint=Checkpoint(artifact_path("privacy_net_pretrain"),
                              {"anonymizer": anonymizer.config(), "batch_size": config.batch_size}, seed),
        runtime=Runtime(accelerator, progress))
    result = train_adversarial(
        anonymizer, siamese, classifier, batch_loader(pairs[0], config.batch_size, seed, config.pairs_per_epoch),
        batch_loader(pairs[1], config.batch_size),
        schedule=Schedule(config.adversarial_epochs, config.adversarial_patience),
        checkpoint=Checkpoint(artifact_path("privacy_net"), anonymizer.config(), seed,
                              training={"anonymization": dataclasses.asdict(config),
                                        "pretrained": pretraining.checkpoint_path.name, **identity}),
        settings=AdversarialSettings.of(config), runtime=Runtime(accelerator, progress))
    return PrivacyNet(pretraining=pretraining, anonymizer=anonymizer.eval(), result=result)
