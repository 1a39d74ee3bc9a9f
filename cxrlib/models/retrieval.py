"""The patient-retrieval embedding network of "Is Medical Chest X-ray Data Anonymous?".

As in the authors' code: a backbone without its pooling and classifier, concat pooling (adaptive max
and average pooling to ``pool_size`` x ``pool_size``, concatenated), a 1x1 bottleneck convolution,
then BN, dropout 0.5, a hidden fully connected layer with ReLU, BN, dropout 0.25 and a linear layer to
the embedding. The published model (ResNet-50, 256 px) uses pool size 5, 100 bottleneck channels and
2048 hidden units; the small profiles shrink these to fit their small feature maps, and drop the
dropout, which slows learning on a few hundred patients far more than it helps.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlib.models.backbones import build_feature_extractor


class RetrievalNetwork(nn.Module):
    def __init__(self, backbone: str, pretrained: bool, embedding_dim: int = 128, pool_size: int = 5,
                 bottleneck_channels: int = 100, hidden: int = 2048,
                 dropout: tuple[float, float] = (0.5, 0.25)):
        super().__init__()
        self.features, channels = build_feature_extractor(backbone, pretrained)
        self.max_pool = nn.AdaptiveMaxPool2d(pool_size)
        self.avg_pool = nn.AdaptiveAvgPool2d(pool_size)
        self.bottleneck = nn.Conv2d(channels, bottleneck_channels, kernel_size=1, bias=False)
        flat = bottleneck_channels * pool_size * pool_size * 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.BatchNorm1d(flat), nn.Dropout(dropout[0]), nn.Linear(flat, hidden),
            nn.ReLU(inplace=True), nn.BatchNorm1d(hidden), nn.Dropout(dropout[1]), nn.Linear(hidden, embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> embeddings (B, embedding_dim)."""
        f = self.features(x)
        pooled = torch.cat([self.max_pool(f), self.avg_pool(f)], dim=1)
        b, c2, h, w = pooled.shape
        # the authors fold the 2C concatenated channels into C channels of twice the height before the
        # bottleneck; kept so that the published architecture is reproduced exactly
        return self.head(self.bottleneck(pooled.reshape(b, c2 // 2, 2 * h, w)))

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Phase one of the published schedule trains the head only."""
        for p in self.features.parameters():
            p.requires_grad_(not frozen)
