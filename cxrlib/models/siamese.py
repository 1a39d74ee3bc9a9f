"""The siamese verification network of "Is Medical Chest X-ray Data Anonymous?" (Packhäuser et al. 2022).

Both images pass through one shared backbone ending in ``features`` sigmoid units; the absolute
difference of the two feature vectors goes through one linear layer to a logit (same patient or not),
trained with BCE-with-logits.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlib.models.backbones import build_backbone


class SiameseNetwork(nn.Module):
    def __init__(self, backbone: str, pretrained: bool, features: int = 128):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, features)
        self.classifier = nn.Linear(features, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, features) in (0, 1)."""
        return torch.sigmoid(self.backbone(x))

    def compare(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from two batches of :meth:`embed` outputs, e.g. to score against a stored gallery."""
        return self.classifier(torch.abs(f1 - f2)).squeeze(1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Same-patient logits (B,)."""
        return self.compare(self.embed(x1), self.embed(x2))

    def score(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Same-patient probabilities (B,)."""
        return torch.sigmoid(self(x1, x2))
