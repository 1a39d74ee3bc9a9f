"""Privacy-Net: the encoder U-Net of PriCheXy-Net's comparison and its pipeline (its pretraining and
adversarial loop are tested with PriCheXy-Net's, parametrized over the method, in test_adversarial.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems

SIZE = 16


def smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = nn.functional.avg_pool2d(torch.rand(n, 1, SIZE + 4, SIZE + 4, generator=g), 5, 1)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low)


def test_architecture_is_the_papers_encoder():
    net = PrivacyNetAnonymizer()
    assert net.params() == {"features": 16, "poolings": 3}
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 16
    assert net.encoder.head.out_channels == 1
    assert len(net.encoder.encoders) == 3 and net.encoder.poolings == 3
    assert convs[-2].out_channels == 16  # last decoder level is back at 16 filters
    widest = max(m.out_channels for m in convs)
    assert widest == 16 * 2 ** 3
    activations = [m for m in net.encoder.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert activations and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in activations)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.encoder.modules())


def test_output_is_a_sigmoid_image_of_the_input_size():
    torch.manual_seed(0)
    net = PrivacyNetAnonymizer().eval()
    images = torch.rand(3, 1, 24, 24)
    out = net(images)
    assert out.shape == images.shape
    assert 0.0 < out.min().item() and out.max().item() < 1.0
    # a sigmoid, not a clamp: scaling the head's logits up pushes the output towards 0 and 1 without reaching them
    with torch.no_grad():
        net.encoder.head.weight.mul_(1e3)
        net.encoder.head.bias.mul_(1e3)
        out = net(images)
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert ((out < 0.01) | (out > 0.99)).float().mean().item() > 0.5
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 12, 12))


def test_profile_builds_its_privacy_net():
    config = load_profile("smoke").anonymization
    net = PrivacyNetAnonymizer.from_config(config)
    assert net.params() == {"features": config.privacy_net_features, "poolings": config.privacy_net_poolings}


class TinySiamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                   nn.Flatten())
        self.head = nn.Linear(16, 1)

    def forward(self, x1, x2):
        return self.head((self.embed(x1) - self.embed(x2)).abs()).squeeze(1)


def test_train_privacy_net_pretrains_trains_and_reuses_its_checkpoints(tmp_path):
    from cxrlib.config import AnonymizationConfig

    config = AnonymizationConfig(privacy_net_features=4, privacy_net_poolings=3, pretrain_epochs=2,
                                 adversarial_epochs=1, batch_size=4, pretrain_lr=1e-2, lr=1e-2)
    images = TensorItems(image=smooth_images(8, seed=4), labels=torch.zeros(8, len(LABELS)))
    x1, x2 = smooth_images(8, seed=5), smooth_images(8, seed=6)
    pairs = TensorItems(image1=x1, image2=x2, same=(torch.arange(8) % 2).float(),
                        labels1=(torch.rand(8, len(LABELS)) < 0.3).float())
    classifier = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, len(LABELS)))
    from cxrlib.anonymize.privacy_net import train_privacy_net

    def run():
        return train_privacy_net(config, siamese=TinySiamese(), classifier=classifier, images=(images, images),
                                 pairs=(pairs, pairs), artifact_path=lambda name: tmp_path / name,
                                 identity={"siamese": "tiny"}, seed=0, progress=False)

    first = run()
    assert first.pretraining.trained and first.result.trained and not first.anonymizer.training
    assert {p.name for p in tmp_path.iterdir()} >= {"privacy_net_pretrain.safetensors", "privacy_net.safetensors"}
    again = run()
    assert not again.pretraining.trained and not again.result.trained
    probe = smooth_images(2, seed=7)
    assert torch.equal(again.anonymizer(probe), first.anonymizer(probe))
