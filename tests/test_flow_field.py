"""PriCheXy-Net's deformation: identity cases, the displacement bound, smoothing, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlib.anonymize.flow_field import (
    REFERENCE_KERNEL, REFERENCE_SIGMA, FlowFieldAnonymizer, GaussianSmoothing, displacement_bound_pixels,
    grid_amplitude, identity_grid, jacobian_determinant, jacobian_lower_bound, worst_case_jacobian,
)
from cxrlib.config import load_profile
from cxrlib.models.unets import UNet

SIZE = 16


def make(mu: float, kernel: int = 3, sigma: float = 0.5) -> FlowFieldAnonymizer:
    torch.manual_seed(0)
    return FlowFieldAnonymizer(mu=mu, image_size=SIZE, features=4, poolings=2, smoothing_kernel=kernel,
                               smoothing_sigma=sigma).eval()


def constant_generator(anonymizer: FlowFieldAnonymizer, x: float, y: float) -> None:
    """Make G(x) the constant field (x, y) (tanh saturated or exactly zero)."""
    head = anonymizer.generator.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([math.copysign(50.0, x) if x else 0.0,
                                      math.copysign(50.0, y) if y else 0.0]))


def test_identity_grid_reproduces_the_image():
    images = torch.rand(2, 1, SIZE, SIZE)
    grid = identity_grid(SIZE).permute(0, 2, 3, 1).expand(2, -1, -1, -1)
    out = torch.nn.functional.grid_sample(images, grid, align_corners=True)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)  # float32 grid rounding


def test_mu_zero_is_the_identity_whatever_the_generator():
    images = torch.rand(3, 1, SIZE, SIZE)
    torch.testing.assert_close(make(0.0)(images), images, atol=1e-5, rtol=0)  # float32 grid rounding


def test_zero_generator_is_the_identity_for_any_mu():
    anonymizer = make(0.5)
    constant_generator(anonymizer, 0.0, 0.0)
    images = torch.rand(3, 1, SIZE, SIZE)
    torch.testing.assert_close(anonymizer(images), images, atol=1e-5, rtol=0)  # float32 grid rounding


def test_displacement_never_exceeds_the_bound():
    anonymizer = make(0.3)
    images = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        shift = anonymizer.displacement_pixels(images)
    bound = displacement_bound_pixels(0.3)
    assert bound == pytest.approx(0.3 * 255 / 2)
    assert shift.abs().max() <= bound + 1e-5
    assert shift.abs().max() > 0


def test_saturated_generator_shifts_by_exactly_the_bound_away_from_the_border():
    mu = 2.0 / 255  # bound = one pixel
    anonymizer = make(mu)
    constant_generator(anonymizer, 1.0, 0.0)
    images = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        shift = anonymizer.displacement_pixels(images)
        out = anonymizer(images)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(shift[:, 0][interior[:1] + interior[2:]], torch.full((2, SIZE - 2, SIZE - 2), -1.0))
    assert shift[:, 1].abs().max() == 0
    # grid = identity - mu * G samples one pixel to the left: out[..., j] = in[..., j - 1]
    torch.testing.assert_close(out[..., 1:-1, 2:-1], images[..., 1:-1, 1:-2], atol=1e-5, rtol=0)


def test_smoothing_preserves_a_constant_field_away_from_the_border_and_reduces_noise():
    smoothing = GaussianSmoothing(2, kernel_size=5, sigma=1.0)
    assert smoothing.weight.sum(dim=(-1, -2)).allclose(torch.ones(2, 1))
    constant = torch.full((1, 2, 12, 12), 0.7)
    torch.testing.assert_close(smoothing(constant)[..., 2:-2, 2:-2], constant[..., 2:-2, 2:-2])
    # zero padding: the border is pulled towards zero
    assert smoothing(constant)[0, 0, 0, 0] < 0.7
    noise = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    assert smoothing(noise).std() < 0.5 * noise.std()
    with pytest.raises(ValueError, match="odd"):
        GaussianSmoothing(2, kernel_size=4, sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianSmoothing(2, kernel_size=3, sigma=0.0)


def test_the_papers_displacement_in_pixels_at_every_size():
    # the paper's bounds at 256 px: 0.13 / 0.64 / 1.28 px for mu 0.001 / 0.005 / 0.01
    assert [round(displacement_bound_pixels(mu), 2) for mu in (0.001, 0.005, 0.01)] == [0.13, 0.64, 1.28]
    assert grid_amplitude(0.01, 256) == pytest.approx(0.01)  # the official code's grid offset at 256 px
    for size in (16, 64, 128):
        torch.manual_seed(0)
        anonymizer = FlowFieldAnonymizer(mu=0.01, image_size=size, features=4, poolings=2).eval()
        constant_generator(anonymizer, 1.0, 0.0)
        with torch.no_grad():
            shift = anonymizer.displacement_pixels(torch.rand(1, 1, size, size))
        # a saturated generator moves every pixel away from the border by the bound, in pixels
        assert shift[0, 0, size // 2, size // 2].item() == pytest.approx(-displacement_bound_pixels(0.01), rel=1e-4)
        # the bound in units of the official sigma (2 px) is the paper's 0.64
        assert anonymizer.displacement_bound / anonymizer.smoothing_sigma == pytest.approx(0.64, abs=0.01)


def test_jacobian_determinant_of_known_fields():
    zero = torch.zeros(2, 2, 8, 8)
    assert torch.equal(jacobian_determinant(zero), torch.ones(2, 8, 8))
    coords = torch.arange(8.0)
    # a shift by a constant keeps areas; a stretch by 1.5 along x has determinant 1.5
    shift = torch.stack([torch.full((8, 8), 0.7), torch.full((8, 8), -0.3)]).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(shift), torch.ones(1, 8, 8))
    stretch = torch.stack([0.5 * coords.expand(8, 8), torch.zeros(8, 8)]).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(stretch), torch.full((1, 8, 8), 1.5))
    # u_x = -2 x maps x to -x: the image is flipped over itself, determinant -1
    folding = torch.stack([-2.0 * coords.expand(8, 8), torch.zeros(8, 8)]).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(folding), torch.full((1, 8, 8), -1.0))
    # a shear: det = 1 - dux/dy * duy/dx
    shear = torch.stack([0.5 * coords[:, None].expand(8, 8), 0.5 * coords.expand(8, 8)]).unsqueeze(0)
    assert torch.allclose(jacobian_determinant(shear), torch.full((1, 8, 8), 0.75))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        jacobian_determinant(torch.zeros(2, 8, 8))


def test_no_generator_folds_the_cpu_geometry_while_a_shrunk_kernel_would():
    section, size = load_profile("cpu").anonymization, load_profile("cpu").image_size
    kernel, sigma = section.smoothing_kernel, section.smoothing_sigma
    bound = jacobian_lower_bound(max(section.mu_values), size, kernel, sigma)
    assert 0 < bound <= worst_case_jacobian(max(section.mu_values), size, kernel, sigma, steps=150)
    # the paper's displacement with the kernel shrunk with the image (3, sigma 0.5 at 64 px) folds
    assert worst_case_jacobian(max(section.mu_values), size, 3, 0.5, steps=150) < 0


@pytest.mark.parametrize("mu", [0.01, 0.05])  # partial derivatives below and above 1
@pytest.mark.parametrize("size, kernel, sigma", [(16, 3, 0.5), (32, 5, 0.8), (24, 9, 2.0)])
def test_jacobian_lower_bound_holds_for_the_fields_that_fold_most(size, kernel, sigma, mu):
    bound = jacobian_lower_bound(mu, size, kernel, sigma)
    smoothing = GaussianSmoothing(2, kernel, sigma)
    pixels = displacement_bound_pixels(mu)
    generator = torch.Generator().manual_seed(size)
    # sign fields (the extremes of |G| <= 1) and the ones that align every sign with the derivative filter
    fields = [torch.sign(torch.randn(8, 2, size, size, generator=generator))]
    stripes = torch.sign(torch.sin(torch.arange(size, dtype=torch.float32) * math.pi / 2 + 0.1))
    fields.append(torch.stack([stripes.expand(size, size), stripes[:, None].expand(size, size)])[None])
    fields.append(torch.stack([torch.sign(torch.arange(size) - size / 2 + 0.5).float().expand(size, size),
                               torch.zeros(size, size)])[None])
    for field in fields:
        for scale in (1.0, -1.0):
            det = jacobian_determinant(-pixels * smoothing(scale * field))
            assert det.min() >= bound - 1e-6
    assert bound <= worst_case_jacobian(mu, size, kernel, sigma, steps=100) + 1e-6


def test_anonymizer_reports_its_smallest_jacobian():
    images = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert make(0.0).smallest_jacobian(images) == pytest.approx(1.0)
    strong = make(0.5)
    with torch.no_grad():
        expected = jacobian_determinant(strong.displacement_pixels(images)).min()
    assert strong.smallest_jacobian(images, batch_size=2) == pytest.approx(float(expected))


def test_generator_is_deterministic_in_eval_mode_and_gradients_flow():
    anonymizer = make(0.2)
    images = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(anonymizer(images), anonymizer(images))
    anonymizer.train()
    anonymizer(images).sum().backward()
    assert anonymizer.generator.head.weight.grad.abs().sum() > 0


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="built for 16x16"):
        make(0.1)(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        FlowFieldAnonymizer(mu=0.1, image_size=18, poolings=2)
    with pytest.raises(ValueError, match="mu"):
        FlowFieldAnonymizer(mu=-0.1, image_size=16, poolings=2)


def test_unet_variants_keep_the_shape_and_range():
    images = torch.rand(2, 1, 16, 16)
    flow = UNet(1, 2, features=4, poolings=2, activation="relu", output="tanh").eval()(images)
    image = UNet(1, 1, features=4, poolings=3, activation="leaky_relu", output="sigmoid").eval()(images)
    assert flow.shape == (2, 2, 16, 16) and flow.abs().max() <= 1
    assert image.shape == (2, 1, 16, 16) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet(1, 1, features=4, poolings=3)(torch.rand(1, 1, 12, 12))
    with pytest.raises(ValueError, match="activation"):
        UNet(activation="gelu")


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_profiles_smooth_with_the_papers_kernel_in_pixels(name):
    section = load_profile(name).anonymization
    assert (section.smoothing_kernel, section.smoothing_sigma) == (REFERENCE_KERNEL, REFERENCE_SIGMA)


def test_deformation_and_tradeoff_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrlib.plots.anonymize import plot_deformations, plot_privacy_utility

    anonymizer = make(0.2)
    images = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        fig = plot_deformations(images[:, 0].numpy(), anonymizer(images)[:, 0].numpy(),
                                anonymizer.displacement_pixels(images).numpy(), titles=["a", "b"],
                                bound=anonymizer.displacement_bound)
    assert len(fig.axes) == 2 * 4 + 2 * 2  # panels and two colour bars per row
    fig2 = plot_privacy_utility([0.1, 0.2], [0.8, 0.3], [0.7, 0.68], [(0.6, 0.8), (0.6, 0.75)], reference=(0.9, 0.7))
    assert fig2.axes[0].get_ylim()[0] <= 0.25
    plt.close("all")


def test_the_teachers_mu_slider_redraws_with_the_nearest_trained_generator(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrlib.plots.anonymize import deformation_slider

    drawn = []
    monkeypatch.setattr(plt, "show", lambda: drawn.append(plt.gcf()._suptitle.get_text()))
    trained = {0.005: make(0.005), 0.01: make(0.01)}
    constant_generator(trained[0.005], 1.0, 0.0)
    widget = deformation_slider(trained, torch.rand(1, 1, SIZE, SIZE), titles=["a"])
    slider = widget.children[0]
    assert (slider.min, slider.max, slider.value) == (0.0, 0.01, 0.01)
    widget.update()
    slider.value = 0.004
    assert drawn[0].endswith("(the generator trained for mu = 0.01)")
    assert drawn[-1].startswith("mu = 0.0040: at most 0.51 px") and drawn[-1].endswith("mu = 0.005)")
    plt.close("all")
