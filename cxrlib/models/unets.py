"""One U-Net for the learned anonymizers: PriCheXy-Net's flow-field generator and Privacy-Net's encoder.

The design follows the U-Net PriCheXy-Net takes from mateuszbuda/brain-segmentation-pytorch: per
level two 3x3 Conv-BN-activation layers (convolutions without bias, BatchNorm follows), 2x2 max
pooling, a transposed 2x2 convolution that halves the channels on the way up, skip connections by
concatenation, and a 1x1 output convolution followed by the output activation.

* PriCheXy-Net: ``UNet(1, 2, features=32, poolings=4, activation="relu", output="tanh")``
* Privacy-Net (docs/papers.md section 3): ``UNet(1, 1, features=16, poolings=3, activation="leaky_relu",
  output="sigmoid")``. Its original 2-D port differs in small details (3x3 transposed convolutions
  that keep the channel count, no activation after a block's second convolution, a 3x3 Conv-BN head);
  cxrlib uses the one block design above for both, which keeps the parameterization in one place.

Inputs must have a height and width divisible by ``2 ** poolings``.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "leaky_relu")
OUTPUTS = ("tanh", "sigmoid", "none")


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    # Privacy-Net's slope
    return nn.LeakyReLU(0.2, inplace=True)


def _block(in_channels: int, out_channels: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        _activation(activation),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        _activation(activation),
    )


class UNet(nn.Module):
    """U-Net with ``poolings`` down/up levels; ``features`` channels at the first level, doubling per level.

    ``output`` is the activation applied to the 1x1 output convolution: ``"tanh"`` (values in
    [-1, 1], e.g. a flow field), ``"sigmoid"`` (values in [0, 1], e.g. an image) or ``"none"``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, features: int = 32,
                 poolings: int = 4, activation: str = "relu", output: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: choose one of {ACTIVATIONS}")
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: choose one of {OUTPUTS}")
        if poolings < 1 or features < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"UNet needs positive sizes; got in_channels={in_channels}, "
                             f"out_channels={out_channels}, features={features}, poolings={poolings}")
        self.poolings = poolings
        widths = [features * 2 ** level for level in range(poolings + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(_block(channels, width, activation))
            channels = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _block(widths[-2], widths[-1], activation)
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upconvs.append(nn.ConvTranspose2d(deep, shallow, kernel_size=2, stride=2))
            self.decoders.append(_block(2 * shallow, shallow, activation))
        self.head = nn.Conv2d(features, out_channels, kernel_size=1)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2 ** self.poolings
        if x.ndim != 4 or x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(f"UNet with {self.poolings} poolings needs (B, C, H, W) input with H and W "
                             f"divisible by {multiple}; got shape {tuple(x.shape)}")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upconv, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            x = decoder(torch.cat((upconv(x), skip), dim=1))
        x = self.head(x)
        if self.output == "tanh":
            return torch.tanh(x)
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return x
