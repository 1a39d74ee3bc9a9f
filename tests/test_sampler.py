"""The sampler choices of :func:`cxrlib.synthesis.generate`: DDIM (the default, unchanged), DPM-Solver++
and guidance rescaling, on a tiny untrained model (the arithmetic, not the images, is under test)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.models.diffusion import LatentDiffusion, build_autoencoder, build_noise_scheduler, build_unet
from cxrlib.synthesis import generate

SIZE = 32
STEPS = 4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> LatentDiffusion:
    config = load_profile("smoke").synthesis
    torch.manual_seed(0)
    return LatentDiffusion(build_autoencoder(config, SIZE), build_unet(config, SIZE), build_noise_scheduler(config))


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.eye(len(LABELS))[:3]


def _draw(model, labels, seed=0, **options) -> torch.Tensor:
    return generate(model, labels, steps=STEPS, guidance_scale=3.0, generator=torch.Generator().manual_seed(seed),
                    device=CPU, cpu_bf16=False, progress=False, **options)


@torch.no_grad()
def _ddim_as_before(model: LatentDiffusion, labels: torch.Tensor, guidance_scale: float, seed: int,
                    steps: int = STEPS, clean_end: bool = False) -> torch.Tensor:
    """generate's loop as it was before it had a sampler choice (fp32, one batch); ``clean_end``: the
    last step's clean estimate x0 instead of its ``prev_sample``."""
    config = model.unet.config
    latents = torch.randn((len(labels), config.latent_channels, config.sample_size, config.sample_size),
                          generator=torch.Generator().manual_seed(seed))
    scheduler = DDIMScheduler.from_config(model.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    both = torch.cat([labels, labels])
    unconditional = torch.cat([torch.zeros(len(labels), dtype=torch.bool), torch.ones(len(labels), dtype=torch.bool)])
    for t in scheduler.timesteps:
        eps = model.unet(torch.cat([latents, latents]), torch.full((2 * len(labels),), int(t)), both, unconditional)
        eps_cond, eps_null = eps.float().chunk(2)
        step = scheduler.step(eps_null + guidance_scale * (eps_cond - eps_null), t, latents)
        latents = step.pred_original_sample if clean_end and t == scheduler.timesteps[-1] else step.prev_sample
    return model.decode(latents).float()


def test_the_default_sampler_is_ddim_as_before_bit_for_bit(model, labels):
    default = _draw(model, labels)
    assert torch.equal(default, _ddim_as_before(model, labels, 3.0, seed=0))
    assert torch.equal(default, _draw(model, labels, sampler="ddim", guidance_rescale=0.0))


def test_ddim_ends_at_the_clean_estimate_where_its_steps_do_not_divide_the_training_steps(model, labels):
    # 4 of 1000 steps: the last step already lands on alpha-bar 1, so nothing changes there (above);
    # 15 of 1000: it lands on t = 0 (alpha-bar 0.99915), and the plain update would keep ~3 % noise
    scheduler = model.sampling_scheduler("ddim", 15)
    assert int(scheduler.timesteps[-1]) - 1000 // 15 == 0 and float(scheduler.alphas_cumprod[0]) < 0.9995
    drawn = generate(model, labels, steps=15, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                     device=CPU, cpu_bf16=False, progress=False)
    assert torch.equal(drawn, _ddim_as_before(model, labels, 3.0, seed=0, steps=15, clean_end=True))
    assert not torch.equal(drawn, _ddim_as_before(model, labels, 3.0, seed=0, steps=15))


def test_dpm_solver_visits_the_same_timesteps_and_gives_other_seeded_images(model, labels):
    ddim, dpm = model.sampling_scheduler("ddim", STEPS), model.sampling_scheduler("dpm", STEPS)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert torch.equal(dpm.timesteps, ddim.timesteps) and int(dpm.timesteps[0]) == model.scheduler.config.num_train_timesteps - 1
    images = _draw(model, labels, sampler="dpm")
    assert images.shape == (3, 1, SIZE, SIZE) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, _draw(model, labels, sampler="dpm"))
    assert not torch.equal(images, _draw(model, labels))


def test_guidance_rescale_changes_the_images_only_when_above_zero(model, labels):
    plain = _draw(model, labels)
    assert torch.equal(_draw(model, labels, guidance_rescale=0.0), plain)
    rescaled = _draw(model, labels, guidance_rescale=0.7)
    assert not torch.allclose(rescaled, plain) and 0 <= rescaled.min() and rescaled.max() <= 1
    assert not torch.equal(_draw(model, labels, sampler="dpm", guidance_rescale=0.7), _draw(model, labels, sampler="dpm"))


def test_unknown_sampler_or_rescale_out_of_range_is_refused(model, labels):
    with pytest.raises(ValueError, match="sampler must be one of"):
        _draw(model, labels, sampler="euler")
    with pytest.raises(ValueError, match="guidance_rescale"):
        _draw(model, labels, guidance_rescale=1.5)
