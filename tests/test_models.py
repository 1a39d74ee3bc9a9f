import warnings

import pytest
import torch

from cxrlib.models.backbones import BACKBONES, ImageNetInput, build_backbone, build_feature_extractor
from cxrlib.models.siamese import SiameseNetwork


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_take_grayscale_and_give_outputs(name):
    torch.manual_seed(0)
    net = build_backbone(name, pretrained=False, num_outputs=5).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_feature_extractor_reports_its_channels():
    features, channels = build_feature_extractor("resnet18", pretrained=False)
    with torch.no_grad():
        assert features(torch.rand(1, 1, 64, 64)).shape[1] == channels == 512


def test_input_is_expanded_and_imagenet_normalized():
    x = torch.full((1, 1, 2, 2), 0.485)
    out = ImageNetInput()(x)
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, 0], torch.zeros(2, 2), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ImageNetInput()(torch.rand(1, 3, 2, 2))


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", pretrained=False, num_outputs=1)


def test_pretrained_without_weights_warns_once_and_falls_back(monkeypatch, tmp_path):
    import torchvision

    def unavailable(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", unavailable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_backbone("resnet18", pretrained=True, num_outputs=3)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "random initialization" in messages[0]
    assert net.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 3)


def test_siamese_network_is_symmetric_and_scores_probabilities():
    torch.manual_seed(0)
    net = SiameseNetwork("convnet", pretrained=False, features=16).eval()
    x1, x2 = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        logits = net(x1, x2)
        assert logits.shape == (3,)
        assert torch.allclose(logits, net(x2, x1))
        assert torch.allclose(net.score(x1, x2), torch.sigmoid(logits))
        features = net.embed(x1)
        assert features.shape == (3, 16) and ((features > 0) & (features < 1)).all()
        assert torch.allclose(net.compare(features, net.embed(x2)), logits)


def test_siamese_network_learns_to_tell_identical_from_different_pairs():
    torch.manual_seed(0)
    net = SiameseNetwork("convnet", pretrained=False, features=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(16, 1, 32, 32)
    other = torch.rand(16, 1, 32, 32)
    labels = torch.cat([torch.ones(8), torch.zeros(8)])
    second = torch.cat([x[:8], other[8:]])
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x, second), labels)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        scores = net.score(x, second)
    assert scores[:8].min() > scores[8:].max()
