"""The 14-finding abnormality classifier (a CheXNet reproduction in the papers' code).

PriCheXy-Net uses it twice: as the auxiliary classifier inside the anonymizer's loss and as the judge
of utility for every anonymization method. The paper's model is an ImageNet DenseNet-121 at 224 px
with one linear layer to 14 outputs; the cpu and smoke profiles use smaller backbones at their image
size. The network returns logits; probabilities are ``sigmoid(logits)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrlib.data.chestxray14 import LABELS
from cxrlib.models.backbones import build_backbone


class Classifier(nn.Module):
    """``(B, 1, H, W)`` in [0, 1] -> logits ``(B, 14)``; resizes to ``input_size`` first when H, W differ."""

    def __init__(self, backbone: str, pretrained: bool, input_size: int):
        super().__init__()
        if input_size < 8:
            raise ValueError(f"input_size must be at least 8 pixels, got {input_size}")
        self.input_size = input_size
        # the backbone repeats the channel and applies ImageNet normalization itself
        self.backbone = build_backbone(backbone, pretrained, len(LABELS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"Classifier expects images of shape (B, 1, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=images.shape[-1] > self.input_size)
        return self.backbone(images)
