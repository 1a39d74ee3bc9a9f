"""The diffusion models: shapes, the condition actually conditions, save/load by path offline."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from torch import nn

from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.models.diffusion import (CPUFloat32Attention, CPUFloat32GroupNorm, LatentDiffusion, build_autoencoder,
                                     build_noise_scheduler, build_unet, downsampling_factor)

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


def test_attention_and_the_autoencoders_group_norms_compute_in_fp32_under_cpu_bf16_autocast(config, model,
                                                                                          tmp_path):
    """Under bf16 autocast the convolutions run in bf16 and these layers in fp32; without autocast the
    models compute as plain diffusers models do; the state dict and a saved-and-loaded model keep it."""
    plain = AutoencoderKL.from_config(model.autoencoder.config)  # as diffusers builds it
    norms = [m for m in model.autoencoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is CPUFloat32GroupNorm for m in norms)
    assert not any(type(m) is CPUFloat32GroupNorm for m in model.unet.modules())  # faster in bf16 there
    for network in (model.autoencoder, model.unet, LatentDiffusion.load(model.save(tmp_path / "ldm")).autoencoder):
        attention = [m for m in network.modules() if isinstance(m, Attention)]
        assert attention and all(isinstance(m.processor, CPUFloat32Attention) for m in attention)
    assert plain.state_dict().keys() == model.autoencoder.state_dict().keys()

    seen = {}
    norm, attention = norms[0], next(m for m in model.autoencoder.modules() if isinstance(m, Attention))
    hooks = [module.register_forward_hook(lambda _, inputs, output, name=name: seen.update({name: output.dtype}))
             for name, module in (("norm", norm), ("attention", attention),
                                  ("conv", model.autoencoder.encoder.conv_in))]
    images = torch.rand(2, config.autoencoder_patch_size ** 2, SIZE, SIZE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.autoencoder.encode(images)
    for hook in hooks:
        hook.remove()
    assert seen == {"norm": torch.float32, "attention": torch.float32, "conv": torch.bfloat16}

    plain.load_state_dict(model.autoencoder.state_dict())
    copied = copy.deepcopy(model.autoencoder)  # as the EMA of fit copies a model: it must compute on its own weights
    with torch.no_grad():
        expected = plain.encode(images).latent_dist.mean
        assert torch.equal(model.autoencoder.encode(images).latent_dist.mean, expected)
        for parameter in copied.parameters():
            parameter.add_(0.1)
        assert not torch.allclose(copied.encode(images).latent_dist.mean, expected)


@pytest.mark.parametrize("steps", [10, 15, 25])
def test_sampling_starts_at_the_last_training_step_and_ends_near_zero(steps):
    from diffusers import DDPMScheduler

    from cxrlib.models.diffusion import LatentDiffusion

    model = LatentDiffusion(autoencoder=None, unet=None, scheduler=DDPMScheduler(num_train_timesteps=1000))
    timesteps = model.ddim_scheduler(steps).timesteps.tolist()
    assert len(timesteps) == steps and timesteps[0] == 999  # pure noise in, as sampling begins
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[-1] <= 1000 // steps
