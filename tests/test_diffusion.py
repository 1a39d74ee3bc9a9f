"""The diffusion models: shapes, the condition actually conditions, save/load by path offline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.models.diffusion import (LatentDiffusion, build_autoencoder, build_noise_scheduler,
                                     build_unet, downsampling_factor)

SIZE = 32


@pytest.fixture(scope="module", params=[1, 2], ids=["full-resolution", "patches"])
def config(request):
    """The smoke autoencoder as it is, and taking 2 x 2 pixel patches as channels."""
    return dataclasses.replace(load_profile("smoke").synthesis, autoencoder_patch_size=request.param)


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return LatentDiffusion(build_autoencoder(config, SIZE), build_unet(config, SIZE),
                           build_noise_scheduler(config))


def test_autoencoder_round_trip_shapes(config, model):
    images = torch.rand(2, 1, SIZE, SIZE)
    latents = model.encode(images)
    factor = downsampling_factor(config)
    assert factor == config.autoencoder_patch_size * 2 ** (len(config.autoencoder_channels) - 1)
    assert latents.shape == (2, config.latent_channels, SIZE // factor, SIZE // factor)
    decoded = model.decode(latents)
    assert decoded.shape == images.shape
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_condition_changes_the_output(config, model):
    """The diffusers trap: a U-Net not configured for class conditioning ignores the labels."""
    unet = model.unet.eval()
    latents = torch.randn(1, config.latent_channels, 16, 16)
    t = torch.tensor([500])
    no_finding = torch.zeros(1, len(LABELS))
    with torch.no_grad():
        outputs = {name: unet(latents, t, labels) for name, labels in {
            "no_finding": no_finding,
            "cardiomegaly": torch.eye(len(LABELS))[[LABELS.index("Cardiomegaly")]],
            "effusion": torch.eye(len(LABELS))[[LABELS.index("Effusion")]],
        }.items()}
        null = unet(latents, t, no_finding, torch.tensor([True]))
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-5), f"{a} and {b} give the same output"
    # the null condition differs from "No Finding" (all-zero labels)
    assert not torch.allclose(null, outputs["no_finding"], atol=1e-5)
    # and ignores whatever labels come with it
    with torch.no_grad():
        null_with_labels = unet(latents, t, torch.ones(1, len(LABELS)), torch.tensor([True]))
    assert torch.allclose(null, null_with_labels)


def test_condition_shape_is_checked(model):
    with pytest.raises(ValueError, match="labels must have shape"):
        model.unet(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.zeros(1, 3))


def test_image_size_must_fit_the_autoencoder(config):
    with pytest.raises(ValueError, match="not divisible.*autoencoder_patch_size"):
        build_autoencoder(config, 33)
    with pytest.raises(ValueError, match="not divisible"):
        build_autoencoder(dataclasses.replace(config, autoencoder_patch_size=3), 32)


def test_save_and_load_by_path_offline(model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model.autoencoder.register_to_config(scaling_factor=0.37)
    folder = model.save(tmp_path / "ldm")
    assert not (tmp_path / "ldm.partial").exists()
    loaded = LatentDiffusion.load(folder)
    assert loaded.scaling_factor == pytest.approx(0.37)
    latents, t, labels = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.eye(len(LABELS))[:2]
    with torch.no_grad():
        assert torch.allclose(loaded.unet(latents, t, labels), model.unet(latents, t, labels))
        images = torch.rand(2, 1, SIZE, SIZE)
        latents = model.encode(images)
        assert torch.allclose(loaded.encode(images), latents, atol=1e-6)
        # the patch size comes back with the weights: the loaded model decodes to the same pixels
        assert torch.allclose(loaded.decode(latents), model.decode(latents), atol=1e-6)
    assert loaded.scheduler.config.num_train_timesteps == model.scheduler.config.num_train_timesteps


def test_load_names_what_is_missing(tmp_path):
    (tmp_path / "ldm" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing"):
        LatentDiffusion.load(tmp_path / "ldm")
