"""DP-Pix: the noise has the theoretical Laplace scale, cell means survive in expectation, cells are flat."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlib.anonymize.base import load_anonymizer
from cxrlib.anonymize.dp_pix import DPPix, cell_means, dp_pixelize, noise_scale


def _cells(images: torch.Tensor, b: int) -> torch.Tensor:
    """The b x b cells of a (B, 1, H, W) image with H, W divisible by b, as (B, rows, cols, b*b)."""
    batch, _, height, width = images.shape
    cells = images.reshape(batch, height // b, b, width // b, b).permute(0, 1, 3, 2, 4)
    return cells.reshape(batch, height // b, width // b, b * b)


def test_published_setting_gives_the_published_scale():
    # docs/papers.md: m = 1, eps = 0.1, b = 8 -> 255 / 640 on 8-bit images, 0.156 on [0, 1]
    assert DPPix(b=8, eps=0.1, m=1.0).noise_scale == pytest.approx(0.15625)


@pytest.mark.parametrize("b, eps, m", [(4, 3.125, 1.0), (2, 5.0, 2.0)])
def test_noise_has_the_theoretical_laplace_scale(b, eps, m):
    # a constant 0.5 image: the cell means are 0.5, so output - 0.5 is the noise (scale 0.02 / 0.1:
    # clipping at 0 and 1 is at least 5 scales away and changes nothing measurable)
    images = torch.full((4, 1, 256, 256), 0.5)
    noise = (DPPix(b=b, eps=eps, m=m, seed=1)(images) - 0.5)
    per_cell = _cells(noise, b)[..., 0].flatten().double()
    scale = noise_scale(b, eps, m)
    n = per_cell.numel()
    # mean |X| estimates a Laplace scale with standard error scale / sqrt(n)
    assert per_cell.abs().mean().item() == pytest.approx(scale, abs=4 * scale / math.sqrt(n))
    assert per_cell.mean().item() == pytest.approx(0.0, abs=4 * math.sqrt(2) * scale / math.sqrt(n))
    # Laplace, not Gaussian with the same mean |X|: P(|X| > scale) = e^-1 (a Gaussian gives 0.29)
    share = (per_cell.abs() > scale).double().mean().item()
    assert share == pytest.approx(math.exp(-1), abs=4 * math.sqrt(0.25 / n))


def test_cell_means_are_preserved_in_expectation():
    torch.manual_seed(0)
    b, draws = 4, 400
    image = 0.3 + 0.4 * torch.rand(1, 1, 32, 32)  # far enough from 0 and 1 that clipping never acts
    anonymizer = DPPix(b=b, eps=12.5, m=1.0, seed=3)  # scale 0.005
    mean_output = torch.stack([anonymizer(image) for _ in range(draws)]).mean(0)
    expected = _cells(image, b).mean(-1)
    got = _cells(mean_output, b)[..., 0]
    tolerance = 4 * math.sqrt(2) * anonymizer.noise_scale / math.sqrt(draws)
    assert (got - expected).abs().max().item() < tolerance
    # the noise is what keeps single draws away from the means: no draw reproduces them
    single = _cells(anonymizer(image), b)[..., 0]
    assert (single - expected).abs().max().item() > tolerance


@pytest.mark.parametrize("height, width", [(32, 32), (30, 27)])
def test_output_is_constant_within_each_cell_and_keeps_the_size(height, width):
    torch.manual_seed(1)
    b = 4
    images = torch.rand(3, 1, height, width)
    out = DPPix(b=b, eps=0.5, seed=0)(images)
    assert out.shape == images.shape
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    for row in range(0, height, b):
        for col in range(0, width, b):
            cell = out[..., row:row + b, col:col + b]
            assert torch.equal(cell, cell[..., :1, :1].expand_as(cell)), (row, col)
    # neighbouring cells differ (the output is not one constant)
    assert not torch.equal(out[..., :b, :b], out[..., :b, b:2 * b])


def test_partial_edge_cells_average_their_real_pixels_with_a_scale_for_their_size():
    # 9 x 9 with b = 8: one full cell (64 pixels), two 8-pixel strips and a 1-pixel corner
    image = torch.rand(1, 1, 9, 9)
    means, counts = cell_means(image, 8)
    assert counts.tolist() == [[64.0, 8.0], [8.0, 1.0]]
    torch.testing.assert_close(means[0, 0, 0, 1], image[0, 0, :8, 8].mean())
    torch.testing.assert_close(means[0, 0, 1, 1], image[0, 0, 8, 8])

    n, eps = 4000, 100.0  # corner scale 0.01, full-cell scale 0.00016: no clipping around 0.5
    noise = DPPix(b=8, eps=eps, seed=2)(torch.full((n, 1, 9, 9), 0.5)) - 0.5
    for (row, col), pixels in {(0, 0): 64, (0, 8): 8, (8, 8): 1}.items():
        scale = 1.0 / (pixels * eps)
        measured = noise[:, 0, row, col].double().abs().mean().item()
        assert measured == pytest.approx(scale, rel=4 / math.sqrt(n)), (row, col)


def test_noise_is_fresh_per_call_and_reproducible_after_reset():
    images = torch.rand(2, 1, 16, 16)
    anonymizer = DPPix(b=2, eps=1.0, seed=7)
    first, second = anonymizer(images), anonymizer(images)
    assert not torch.equal(first, second)
    assert torch.equal(anonymizer.reset()(images), first)
    assert torch.equal(DPPix(b=2, eps=1.0, seed=7)(images), first)
    assert not torch.equal(DPPix(b=2, eps=1.0, seed=8)(images), first)
    assert torch.equal(anonymizer.reset(seed=8)(images), DPPix(b=2, eps=1.0, seed=8)(images))


def test_functional_form_matches_the_module():
    images = torch.rand(2, 1, 12, 12)
    expected = DPPix(b=3, eps=0.7, m=2.0, seed=5)(images)
    got = dp_pixelize(images, 3, 0.7, 2.0, torch.Generator().manual_seed(5))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kwargs, problem", [
    ({"b": 0}, "b must be"), ({"b": 2.5}, "b must be"), ({"b": 2, "eps": 0.0}, "eps"),
    ({"b": 2, "m": -1.0}, "m > 0"), ({"b": 2, "eps": float("inf")}, "eps"),
])
def test_bad_settings_are_refused(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        DPPix(**kwargs)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DPPix(b=2)(torch.full((1, 1, 4, 4), 2.0))


def test_saved_dp_pix_reloads_with_its_settings_and_seed(tmp_path):
    anonymizer = DPPix(b=4, eps=0.3, m=2.0, seed=11)
    images = torch.rand(2, 1, 16, 16)
    loaded = load_anonymizer(anonymizer.save(tmp_path / "dp_pix"))
    assert isinstance(loaded, DPPix) and loaded.params() == anonymizer.params()
    assert torch.equal(loaded(images), anonymizer(images))
