"""Image backbones shared by every network: torchvision ResNets / DenseNet and a small fast CNN.

All take grayscale radiographs, float tensors (B, 1, H, W) in [0, 1]. They repeat the channel three
times and apply ImageNet normalization themselves, as the papers feed grayscale X-rays to
ImageNet-initialized networks; callers never normalize.

ImageNet weights come from torchvision when ``pretrained`` and they can be loaded (from the torch hub
cache, or downloaded); otherwise the network starts from random weights with one warning.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import nn

BACKBONES = ("resnet18", "resnet50", "densenet121", "convnet", "convnet_spatial")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TORCHVISION = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "densenet121": (torchvision.models.densenet121, torchvision.models.DenseNet121_Weights.IMAGENET1K_V1),
}


class ImageNetInput(nn.Module):
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W), ImageNet-normalized."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected grayscale images of shape (B, 1, H, W), got {tuple(x.shape)}")
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std


class Backbone(nn.Module):
    """``features`` (a feature map with ``channels`` channels) -> global average pool -> ``head``."""

    def __init__(self, features: nn.Module, channels: int, num_outputs: int):
        super().__init__()
        self.features = features
        self.channels = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build_feature_extractor(name: str, pretrained: bool) -> tuple[nn.Sequential, int]:
    """The convolutional part of backbone ``name``: (B, 1, H, W) in [0, 1] -> (B, C, h, w); returns C too."""
    if name in ("convnet", "convnet_spatial"):  # the two differ in build_backbone's head only
        if pretrained:
            warnings.warn("the convnet backbone has no ImageNet weights; using random initialization",
                          stacklevel=3)
        return nn.Sequential(ImageNetInput(), *_convnet_blocks((16, 32, 64, 128))), 128
    if name not in _TORCHVISION:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    constructor, weights = _TORCHVISION[name]
    network = constructor(weights=None)
    if pretrained:
        _load_imagenet(network, name, weights)
    if name == "densenet121":
        # torchvision's DenseNet applies this ReLU in forward(), after .features
        return nn.Sequential(ImageNetInput(), network.features, nn.ReLU()), network.classifier.in_features
    stem = [network.conv1, network.bn1, network.relu, network.maxpool,
            network.layer1, network.layer2, network.layer3, network.layer4]
    return nn.Sequential(ImageNetInput(), *stem), network.fc.in_features


def build_backbone(name: str, pretrained: bool, num_outputs: int) -> Backbone:
    """Backbone ``name`` ending in a linear layer with ``num_outputs`` outputs (no activation)."""
    features, channels = build_feature_extractor(name, pretrained)
    if name == "convnet_spatial":
        # For small images (32-64 px), where anatomy and findings differ in where things are: the last
        # 4 x 4 map is mixed by a 4 x 4 convolution instead of averaged away. Measured at 64 px on the
        # phantom: classifier mean AUC 0.70 with the plain convnet's average pooling, 0.75 with this
        # head (1,500 patients). Its batch norm matters (siamese AUC 0.95 with, 0.92 without, 2,000
        # patients) and needs training batches of two or more images: training loaders drop a last
        # incomplete batch. Where identity is a shift-invariant texture, average pooling is the better
        # choice (the plain convnet).
        features = nn.Sequential(*features, nn.AdaptiveAvgPool2d(4),
                                 nn.Conv2d(channels, 2 * channels, 4, bias=False), nn.BatchNorm2d(2 * channels),
                                 nn.ReLU(inplace=True))
        channels *= 2
    return Backbone(features, channels, num_outputs)


def _convnet_blocks(widths: tuple[int, ...]) -> list[nn.Module]:
    blocks, previous = [], 3
    for width in widths:
        blocks += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        previous = width
    return blocks


def _load_imagenet(network: nn.Module, name: str, weights) -> None:
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as err:  # no network, no cache, corrupt file: all mean "train from scratch"
        warnings.warn(f"ImageNet weights for {name} are not available ({type(err).__name__}: {err}); "
                      f"using random initialization. To use them, place {weights.url.rsplit('/', 1)[1]} "
                      f"in {torch.hub.get_dir()}/checkpoints/.", stacklevel=4)
        return
    network.load_state_dict(state)
