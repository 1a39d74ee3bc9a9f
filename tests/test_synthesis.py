"""Latent diffusion synthesis: training, guided sampling, the privacy filter and sampler, evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch


from cxrlib import runtime
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS, NO_FINDING
from cxrlib.data.datasets import TensorItems
from cxrlib.models.classifier import Classifier
from cxrlib.models.diffusion import LatentDiffusion
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.metrics import (PenultimateFeatures, diversity_by_class, frechet_distance, mean_pairwise_ms_ssim,
                            ms_ssim_scales)
from cxrlib.synthesis import (GapDecomposition, PrivacyFilter, SeedAUCs, Thresholds, class_conditions,
                              diffusion_loss, generate, aligned_correlation, gap_decomposition,
                              latent_scaling_factor, near_copies, privacy_enhancing_sample,
                              single_class_names, synthetic_label_vectors, train_latent_diffusion,
                              training_config, utility_gap)
from cxrlib.synthesis.training import artifact_names, class_balance_weights
from torchmetrics.functional.image import image_gradients

SIZE = 32
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def config():
    return load_profile("smoke").synthesis


def _train_tiny(config, folder):
    """The smoke-sized model trained for one epoch on random images: enough to exercise the code."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, SIZE, SIZE, generator=generator)
    labels = (torch.rand(24, len(LABELS), generator=generator) < 0.2).float()
    return train_latent_diffusion(TensorItems(image=images, labels=labels), TensorItems(image=images[:8], labels=labels[:8]),
                                  config, SIZE, artifact_path=lambda name: folder / name, seed=0,
                                  progress=False)


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory):
    return _train_tiny(config, tmp_path_factory.mktemp("ldm"))


def test_training_saves_a_loadable_model_and_reuses_checkpoints(trained, config):
    assert trained.autoencoder_fit.trained and trained.unet_fit.trained
    assert (trained.folder / "unet" / "config.json").is_file()
    names = artifact_names(config, SIZE)
    assert trained.folder.name == names["model"]
    assert {path.name.split(".")[0] for path in trained.folder.parent.glob("ldm-*.json")} == {names["autoencoder"], names["unet"]}
    assert trained.model.scaling_factor != 1.0  # computed from the data, stored in the config
    assert LatentDiffusion.load(trained.folder).scaling_factor == pytest.approx(trained.model.scaling_factor)
    saved = (trained.folder / "unet" / "config.json").stat().st_mtime_ns
    again = _train_tiny(config, trained.folder.parent)
    assert not again.autoencoder_fit.trained and not again.unet_fit.trained
    # loaded, not rewritten: processes that load it side by side must not race on its folder
    assert (trained.folder / "unet" / "config.json").stat().st_mtime_ns == saved
    assert again.model.scaling_factor == pytest.approx(trained.model.scaling_factor)


def test_only_training_fields_key_the_trained_parts(config):
    sampling = dataclasses.replace(config, guidance_scale=7.0, sampler_fpr=0.01, sampling_steps=50)
    assert training_config(sampling, SIZE, "unet") == training_config(config, SIZE, "unet")
    wider = dataclasses.replace(config, unet_channels=(32, 64))
    assert training_config(wider, SIZE, "autoencoder") == training_config(config, SIZE, "autoencoder")
    assert training_config(wider, SIZE, "unet") != training_config(config, SIZE, "unet")


def test_later_recipe_fields_name_a_model_only_when_set(config):
    """Models trained before the edge term, the cosine schedule and balanced batches existed trained as
    their defaults do: their names stay; setting one names a new model."""
    default = training_config(config, SIZE, "unet")
    assert not {"autoencoder_edge_weight", "unet_lr_schedule", "unet_warmup_steps", "unet_class_balance"} & set(default)
    for change in ({"unet_lr_schedule": "cosine"}, {"unet_warmup_steps": 10}, {"unet_class_balance": 1.0}):
        changed = dataclasses.replace(config, **change)
        assert training_config(changed, SIZE, "unet") != default
        assert training_config(changed, SIZE, "autoencoder") == training_config(config, SIZE, "autoencoder")
    edges = dataclasses.replace(config, autoencoder_edge_weight=1.0)
    assert training_config(edges, SIZE, "autoencoder") != training_config(config, SIZE, "autoencoder")
    assert training_config(edges, SIZE, "unet") != default


def test_class_balance_weights_draw_every_label_about_equally():
    generator = torch.Generator().manual_seed(0)
    prevalence = torch.tensor([0.30, 0.10, 0.02] + [0.0] * (len(LABELS) - 3))
    labels = (torch.rand(20_000, len(LABELS), generator=generator) < prevalence).float()
    assert torch.equal(class_balance_weights(labels, 0.0), torch.ones(len(labels), dtype=torch.float64))
    weights = class_balance_weights(labels, 1.0)
    drawn = labels[torch.multinomial(weights, 50_000, replacement=True, generator=generator)]
    share = torch.cat([drawn[:, :3], (drawn.sum(1, keepdim=True) == 0).float()], 1).mean(0)
    # uniformly drawn: 0.30 / 0.10 / 0.02 / 0.61; balanced: each near a quarter (overlaps lift the common)
    assert share.min() > 0.18 and share.max() < 0.40, share
    assert share[2] > 0.2  # the rarest finding, 2 % of the images
    root = class_balance_weights(labels, 0.5)
    assert root.max() / root.min() == pytest.approx((weights.max() / weights.min()).sqrt())


def test_cosine_schedule_runs_its_whole_budget_and_balanced_batches_train(config, tmp_path):
    """A cosine schedule runs all of ``unet_epochs``, whatever the patience; the edge term and balanced
    batches train and are reused like the default recipe."""
    recipe = dataclasses.replace(config, unet_epochs=3, patience=1, min_improvement=0.5, unet_lr_schedule="cosine",
                                 unet_warmup_steps=1, unet_class_balance=1.0, autoencoder_edge_weight=0.5)
    trained = _train_tiny(recipe, tmp_path)
    assert trained.unet_fit.trained and len(trained.unet_fit.history) == 3 and trained.unet_fit.patience is None
    again = _train_tiny(recipe, tmp_path)
    assert not again.unet_fit.trained and not again.autoencoder_fit.trained
    elsewhere = _train_tiny(recipe, tmp_path / "again")  # trained afresh from the same seed: the same weights
    for ours, theirs in zip(trained.model.unet.state_dict().values(), elsewhere.model.unet.state_dict().values()):
        assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="unet_class_balance"):
        dataclasses.replace(recipe, unet_class_balance=-1.0)
    with pytest.raises(ValueError, match="unet_lr_schedule"):
        _train_tiny(dataclasses.replace(recipe, unet_lr_schedule="linear"), tmp_path)


def test_edge_term_penalizes_a_blurred_thin_line():
    from cxrlib.synthesis.training import AutoencoderObjective

    class Blur(torch.nn.Module):  # stands in for the autoencoder's decode(encode(x)): a 3-px box blur
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    image = torch.zeros(1, 1, 16, 16)
    image[..., 8, :] = 1.0  # a 1-px band
    target = image * 2 - 1
    blurred = Blur()(target)
    plain = torch.nn.functional.l1_loss(blurred, target)
    edges = sum(torch.nn.functional.l1_loss(a, b) for a, b in zip(image_gradients(blurred), image_gradients(target)))
    assert edges > plain  # the band's two edges cost more than its blurred intensity
    assert AutoencoderObjective(Blur(), kl_weight=0.0, edge_weight=1.0).edge_weight == 1.0


def test_latent_scaling_factor_makes_latents_unit_variance():
    generator = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(500, 4, 4, 4, generator=generator)
    stds = torch.full_like(means, 4.0)
    assert latent_scaling_factor(means, stds) == pytest.approx(1 / 5.0, rel=0.05)


def test_generate_is_seeded_and_guidance_uses_the_condition(trained, config):
    labels = torch.eye(len(LABELS))[:3]

    def draw(seed, scale, labels=labels):
        return generate(trained.model, labels, steps=config.sampling_steps, guidance_scale=scale,
                        generator=torch.Generator().manual_seed(seed), device=CPU)

    first = draw(0, 3.0)
    assert first.shape == (3, 1, SIZE, SIZE) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, draw(0, 3.0))
    assert not torch.equal(first, draw(1, 3.0))
    assert not torch.allclose(first, draw(0, 3.0, torch.zeros(3, len(LABELS))))


def test_generate_predicts_the_noise_in_bf16_only_where_the_cpu_computes_it(trained, config, monkeypatch):
    labels = torch.eye(len(LABELS))[:3]

    def draw(**precision):
        return generate(trained.model, labels, steps=config.sampling_steps, guidance_scale=3.0,
                        generator=torch.Generator().manual_seed(0), device=CPU, **precision)

    fp32 = draw(cpu_bf16=False)
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: True)
    monkeypatch.delenv(runtime.CPU_BF16_VARIABLE, raising=False)
    bf16 = draw()
    assert not torch.equal(bf16, fp32) and torch.equal(bf16, draw())  # another precision, still seeded
    assert (bf16 - fp32).abs().mean() < 0.02  # images in [0, 1]
    assert torch.equal(draw(cpu_bf16=False), fp32)
    monkeypatch.setenv(runtime.CPU_BF16_VARIABLE, "0")
    assert torch.equal(draw(), fp32)
    monkeypatch.delenv(runtime.CPU_BF16_VARIABLE)
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: False)
    assert torch.equal(draw(), fp32)


@pytest.fixture(scope="module")
def untrained_reid():
    torch.manual_seed(0)
    siamese = SiameseNetwork("convnet", pretrained=False, features=16)
    return siamese.embed, siamese.eval()


def test_sampler_redraws_rejected_samples_a_bounded_number_of_times(trained, config, untrained_reid):
    retrieval, siamese = untrained_reid
    gallery_images = torch.rand(6, 1, SIZE, SIZE)
    labels = torch.eye(len(LABELS))[:3]
    common = dict(config=config, seed=0, device=CPU)

    def privacy_filter(thresholds):
        return PrivacyFilter(gallery_images, [f"real_{i}.png" for i in range(6)], retrieval, siamese,
                             neighbours=config.sampler_neighbours, thresholds=thresholds, device=CPU)

    gallery = privacy_filter(None)
    with pytest.raises(ValueError, match="calibrate it first"):
        privacy_enhancing_sample(trained.model, labels, privacy_filter=gallery, **common)
    # every correlation is at least -1: all rejected as near-duplicates
    everything = privacy_enhancing_sample(trained.model, labels,
                                          privacy_filter=privacy_filter(Thresholds(2.0, -1.01, 0.05)), **common)
    attempts = config.max_retries + 1
    assert everything.drawn == 3 * attempts and len(everything.rejections) == 3 * attempts
    assert len(everything.images) == 0 and list(everything.exhausted) == [0, 1, 2]
    assert everything.rejection_rate == 1.0
    assert len(everything.rejected_images) == 3 * attempts
    assert {r.attempt for r in everything.rejections} == set(range(attempts))
    assert all(r.real_image in gallery.names for r in everything.rejections)
    assert {r.reason for r in everything.rejections} == {"near-duplicate"}
    assert everything.summary()["rejected_by"] == {"siamese": 0, "near-duplicate": 3 * attempts, "both": 0}

    nothing = privacy_enhancing_sample(trained.model, labels,
                                       privacy_filter=privacy_filter(Thresholds(1.0, 1.01, 0.05)), **common)
    assert nothing.drawn == 3 and not nothing.rejections and len(nothing.exhausted) == 0
    assert torch.equal(nothing.labels, labels) and len(nothing.nearest_real) == 3
    assert np.all((nothing.scores >= 0) & (nothing.scores <= 1))
    assert np.all(np.abs(nothing.correlations) <= 1 + 1e-5)

    by_siamese = privacy_enhancing_sample(trained.model, labels,
                                          privacy_filter=privacy_filter(Thresholds(-0.01, 1.01, 0.05)), **common)
    assert {r.reason for r in by_siamese.rejections} == {"siamese"}


def test_filter_checks_its_arguments(untrained_reid):
    retrieval, siamese = untrained_reid
    images = torch.rand(2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="neighbours"):
        PrivacyFilter(images, ["a.png", "b.png"], retrieval, siamese, neighbours=0, device=CPU)
    with pytest.raises(ValueError, match="one name per image"):
        PrivacyFilter(images, ["a.png"], retrieval, siamese, neighbours=1, device=CPU)
    uncalibrated = PrivacyFilter(images, ["a.png", "b.png"], retrieval, siamese, neighbours=1, device=CPU)
    with pytest.raises(ValueError, match="calibrate it first"):
        uncalibrated.check(images)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        uncalibrated.calibrated(images, fpr=0)
    calibrated = uncalibrated.calibrated(torch.rand(4, 1, SIZE, SIZE), fpr=0.5)
    assert uncalibrated.thresholds is None and calibrated.thresholds.fpr == 0.5
    assert calibrated.features is uncalibrated.features  # the gallery is embedded once


def test_conditions_and_label_vectors():
    names, vectors = class_conditions(2)
    assert len(names) == len(vectors) == 2 * (len(LABELS) + 1)
    assert list(single_class_names(vectors.numpy())) == names
    real = np.eye(len(LABELS), dtype=np.float32)[[0, 0, 3, 5]]
    real[3, 7] = 1  # one multi-label vector
    drawn = synthetic_label_vectors(real, 10, seed=0).numpy()
    assert len(drawn) == 10
    # every real vector once per full pass: the first two passes hold each real row twice
    for full_pass in (drawn[:4], drawn[4:8]):
        assert sorted(map(tuple, full_pass)) == sorted(map(tuple, real))
    assert not np.array_equal(drawn[:4], drawn[4:8])  # shuffled per pass
    assert single_class_names(real)[3] == ""
    assert single_class_names(np.zeros((1, len(LABELS))))[0] == NO_FINDING


def test_ms_ssim_handles_small_images():
    assert [ms_ssim_scales(s) for s in (32, 64, 256)] == [2, 3, 5]
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 1, SIZE, SIZE, generator=generator)
    assert mean_pairwise_ms_ssim(noise[:1].repeat(3, 1, 1, 1)) == pytest.approx(1.0, abs=1e-4)
    assert mean_pairwise_ms_ssim(noise) < 0.2
    diversity = diversity_by_class(torch.cat([noise, noise[:1].repeat(2, 1, 1, 1)]),
                                   np.array([NO_FINDING] * 4 + ["Mass"] * 2))
    assert diversity["Mass"] == pytest.approx(1.0, abs=1e-4) and diversity[NO_FINDING] < 0.2
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_ms_ssim(noise[:1])


def test_frechet_distance_in_classifier_features():
    torch.manual_seed(0)
    classifier = Classifier("convnet", pretrained=False, input_size=SIZE)
    features = PenultimateFeatures(classifier)
    assert features.num_features == 128
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(64, 1, SIZE, SIZE, generator=generator) * 0.5
    same = torch.rand(64, 1, SIZE, SIZE, generator=generator) * 0.5
    other = torch.rand(64, 1, SIZE, SIZE, generator=generator) * 0.5 + 0.5
    near = frechet_distance(real, same, features, device=CPU)
    far = frechet_distance(real, other, features, device=CPU)
    assert 0 <= near < far


def test_utility_gap_compares_on_the_same_images():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, len(LABELS))) < 0.3).astype(int)
    good = np.clip(labels * 0.6 + rng.random(labels.shape) * 0.5, 0, 1)
    worse = np.clip(labels * 0.2 + rng.random(labels.shape) * 0.5, 0, 1)
    result = utility_gap(labels, good, worse, n_bootstrap=50)
    assert result["real"]["mean_auc"] > result["synthetic"]["mean_auc"]
    assert result["gap_points"] == pytest.approx(
        100 * (result["real"]["mean_auc"] - result["synthetic"]["mean_auc"]))
    low, high = result["gap_points_ci"]
    assert 0 < low <= result["gap_points"] <= high
    assert utility_gap(labels, good, good, n_bootstrap=0)["gap_points"] == 0


# -- the privacy filter with trained re-identification models -------------------------------------

def _patient_scans(n_patients: int, per_patient: int, seed: int) -> dict[str, np.ndarray]:
    """Radiograph stand-ins with a strong identity, so that smoke-sized re-identification networks
    learn it in seconds: each patient a coarse random pattern of its own; each scan shifted by up to
    6 px, with another exposure and noise."""
    rng = np.random.default_rng(seed)
    scans = {}
    for patient in range(1, n_patients + 1):
        pattern = np.kron(rng.random((5, 5)), np.ones((8, 8)))  # 40 x 40
        for follow_up in range(per_patient):
            dy, dx = rng.integers(0, 7, 2)
            exposure = rng.uniform(0.8, 1.0)
            scan = pattern[dy:dy + SIZE, dx:dx + SIZE] * exposure + rng.normal(0, 0.05, (SIZE, SIZE))
            scans[f"{patient:08d}_{follow_up:03d}.png"] = (np.clip(scan, 0, 1) * 255).astype(np.uint8)
    return scans


@pytest.fixture(scope="module")
def reid_world(tmp_path_factory):
    """Siamese and retrieval networks trained (smoke-sized) on patients with a strong identity, the
    gallery of training images, thresholds calibrated on the validation patients, held-out images."""
    from PIL import Image

    from cxrlib.data.cache import prepare_cache
    from cxrlib.data.chestxray14 import make_splits, read_metadata
    from cxrlib.data.datasets import ImageDataset, PairDataset
    from cxrlib.data.pairs import make_pairs, max_positive_pairs
    from cxrlib.data.images import Images
    from cxrlib.reid import retrieval_augmentation, train_retrieval, train_verification
    from tests.conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("reid_world")
    folder = root / "cxr14"
    write_tiny_dataset(folder, n_patients=48, per_patient=4, size=SIZE)
    for name, pixels in _patient_scans(48, 4, seed=0).items():
        Image.fromarray(pixels).save(folder / "images" / name)
    cache = prepare_cache(folder, SIZE, workers=1, progress=False)
    splits = make_splits(read_metadata(folder / "Data_Entry_2017_v2020.csv"), folder, seed=0,
                         val_fraction=0.25, test_fraction=0.25)
    profile = load_profile("smoke", **{"verification.max_epochs": 5, "verification.patience": 5,
                                       "verification.lr": 1e-3, "retrieval.unfrozen_epochs": 5})
    pairs = {name: make_pairs(splits[name], 2 * max_positive_pairs(splits[name]), seed=1)
             for name in ("train", "val")}
    siamese, _ = train_verification(PairDataset(cache, pairs["train"]), PairDataset(cache, pairs["val"]),
                                    profile.verification, seed=0, checkpoint_path=root / "siamese",
                                    progress=False)
    retrieval, _ = train_retrieval(
        ImageDataset(cache, splits.train, transform=retrieval_augmentation(profile.retrieval)),
        ImageDataset(cache, splits.val), profile.retrieval, seed=0,
        checkpoint_path=root / "retrieval", progress=False)
    train_images = Images.from_cache(cache, splits.train["image"])
    privacy_filter = PrivacyFilter(train_images.tensor(), train_images.names, retrieval, siamese, neighbours=5,
                                   device=CPU)
    privacy_filter = privacy_filter.calibrated(Images.from_cache(cache, splits.val["image"]).tensor(), fpr=0.05)
    held_out = Images.from_cache(cache, splits.test["image"]).tensor()
    return {"filter": privacy_filter, "held_out": held_out}


def test_planted_copies_are_rejected_and_other_patients_mostly_pass(reid_world):
    privacy_filter = reid_world["filter"]
    gallery, thresholds = privacy_filter, privacy_filter.thresholds
    generator = torch.Generator().manual_seed(0)
    planted_rows = torch.randperm(len(gallery.images), generator=generator)[:10]
    planted = near_copies(gallery.images[planted_rows], seed=0)
    held_out = reid_world["held_out"]
    # the planted copies hide among fresh images of held-out patients, as in a generated batch
    batch = torch.cat([held_out, *planted.values()])
    result = privacy_filter.check(batch)
    fresh = slice(0, len(held_out))
    for i, (name, _) in enumerate(planted.items()):
        rows = slice(len(held_out) + i * len(planted_rows), len(held_out) + (i + 1) * len(planted_rows))
        assert result.rejected[rows].all(), (
            f"{name}: {int((~result.rejected[rows]).sum())} of {len(planted_rows)} planted copies passed; "
            f"scores {np.round(result.scores[rows], 3)}, "
            f"correlations {np.round(result.correlations[rows], 3)}, {thresholds}")
        # the copy is linked to the very image it was made from
        assert (result.culprits[rows] == planted_rows.numpy()).mean() >= 0.9, name
    pass_rate = 1 - result.rejected[fresh].mean()
    assert pass_rate >= 0.75, f"only {pass_rate:.0%} of held-out patients' images pass the filter"

    rates = privacy_filter.planted_copy_rates(len(planted_rows), seed=0)  # the same rows, drawn with seed 0
    assert list(rates) == list(planted)
    assert all(r["rejected"] == 1.0 and r["linked to its source"] >= 0.9 for r in rates.values())


def test_why_the_filter_needs_a_near_duplicate_test():
    """The siamese network scores |f1 - f2|: every exact copy gets one and the same score,
    sigmoid(bias), however the network was trained, so its threshold alone cannot catch copies."""
    torch.manual_seed(0)
    siamese = SiameseNetwork("convnet", pretrained=False, features=16).eval()
    images = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        scores = siamese.score(images, images)
    assert torch.allclose(scores, torch.sigmoid(siamese.classifier.bias).expand(4))


def test_aligned_correlation_is_the_best_shifted_pixel_correlation_over_the_gallery():
    """Chunks, batches and shifts taken in any order give what one image and one gallery image at a
    time give: the highest correlation of their overlapping windows over shifts of up to 2 px."""
    generator = torch.Generator().manual_seed(0)
    gallery = torch.rand(5, 1, 12, 12, generator=generator)
    images = torch.rand(7, 1, 12, 12, generator=generator)
    images[2] = torch.roll(gallery[3], shifts=(1, -2), dims=(-2, -1)) * 0.5 + 0.2  # shifted, rescaled copy

    def correlation(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float(a @ b / (a.norm() * b.norm()))

    expected = np.array([[max(correlation(image[..., max(dy, 0):12 + min(dy, 0), max(dx, 0):12 + min(dx, 0)],
                                          real[..., max(-dy, 0):12 + min(-dy, 0), max(-dx, 0):12 + min(-dx, 0)])
                              for dy in range(-2, 3) for dx in range(-2, 3))
                          for real in gallery] for image in images])
    values, index = aligned_correlation(images, gallery, batch_size=2, chunk_size=3, device=torch.device("cpu"))
    np.testing.assert_allclose(values, expected.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(index, expected.argmax(axis=1))
    assert index[2] == 3 and values[2] == pytest.approx(1.0, abs=1e-5)


class _ZeroUNet(torch.nn.Module):
    """Predicts no noise and records what it was given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, noisy, timesteps, labels, unconditional):
        self.calls.append((timesteps.clone(), unconditional.clone()))
        return torch.zeros_like(noisy) + self.weight


def _posterior_batch(n: int = 64):
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(n, 4, 4, 4, generator=generator)
    return {"mean": mean, "std": torch.full_like(mean, 0.1), "labels": torch.zeros(n, len(LABELS))}


def test_diffusion_loss_is_fixed_in_eval_mode_random_in_training_and_min_snr_weighted(config):
    from cxrlib.models.diffusion import build_noise_scheduler

    scheduler = build_noise_scheduler(config)
    unet, batch = _ZeroUNet(), _posterior_batch()

    def loss(gamma, dropout=0.0):
        return diffusion_loss(unet, batch, scheduler=scheduler, scaling_factor=1.0, condition_dropout=dropout,
                              min_snr_gamma=gamma).item()

    unet.eval()
    plain = loss(0.0)
    assert plain == loss(0.0)  # evenly spread timesteps, fixed noise: comparable across epochs
    timesteps, unconditional = unet.calls[-1]
    assert timesteps.tolist() == sorted(timesteps.tolist()) and not unconditional.any()
    assert plain == pytest.approx(1.0, abs=0.1)  # a zero prediction misses unit-variance noise by ~1
    # min(SNR, gamma) / SNR never exceeds 1 and cuts the nearly noise-free steps
    assert loss(1.0) < plain and loss(1e9) == pytest.approx(plain)
    unet.train()
    assert loss(0.0) != loss(0.0)
    loss(0.0, dropout=1.0)
    assert unet.calls[-1][1].all()
    loss(0.0, dropout=0.0)
    assert not unet.calls[-1][1].any()


def test_synthesis_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    from cxrlib.plots import synthesis as plots

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, SIZE, SIZE, generator=generator)
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6}]
    assert plots.plot_training_curves({"autoencoder": history, "unet": history}).axes
    assert len(plots.plot_reconstructions(images, images).axes) >= 8
    assert plots.plot_class_grid(images, ["Mass", "Mass", NO_FINDING, NO_FINDING], per_row=2).axes
    assert plots.plot_matches(images[:2], images[2:], ["a", "b"], ["x.png", "y.png"], title="t").axes
    auc = {"per_class": {LABELS[0]: 0.7}, "mean_auc": 0.7, "ci": [0.6, 0.8]}
    fig = plots.plot_utility({"real": auc, "synthetic only": auc}, 3.5)
    assert "3.5 %" in fig.axes[0].get_title()
    assert len(plots.plot_quality({"real": 1.0, "synthetic": 2.0},
                                  {"real": {"Mass": 0.3}, "synthetic": {"Mass": 0.4}}).axes) == 2
    fig = plots.plot_memorization({"synthetic": (np.array([0.1, 0.2]), np.array([0.3, 0.5]))}, (0.5, 0.9))
    assert "threshold 0.500" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


# -- the gap decomposed ---------------------------------------------------------------------------
def _seed_aucs(seed: int, real: float, on_reconstructed: float, reconstructed: float, synthetic: float):
    """Hand-made AUCs: every finding at the part's value, Fibrosis without an AUC (no positive)."""
    def finding_aucs(value):
        return {f: (float("nan") if f == "Fibrosis" else value) for f in LABELS}

    return SeedAUCs(seed, {"real": finding_aucs(real), "real_on_reconstructed": finding_aucs(on_reconstructed),
                           "reconstructed": finding_aucs(reconstructed), "synthetic": finding_aucs(synthetic)},
                    finding_aucs(0.6 + seed / 1000))


def test_gaps_are_the_differences_of_the_parts_paired_by_seed():
    result = GapDecomposition(tuple(LABELS), (_seed_aucs(1, 0.85, 0.80, 0.78, 0.70),
                                              _seed_aucs(2, 0.83, 0.80, 0.77, 0.72)),
                              test_images=10, real_training_images=20, synthetic_training_images=20, rendered_images=24)
    assert result.auc("real").mean == pytest.approx(0.84)  # the finding without an AUC is left out
    assert result.gap("autoencoder_at_test").values == pytest.approx((5.0, 3.0))
    assert result.gap("autoencoder_in_training").values == pytest.approx((7.0, 6.0))
    assert result.gap("generator").values == pytest.approx((8.0, 5.0))
    assert result.gap("generator").std == pytest.approx(np.std([8.0, 5.0], ddof=1))
    whole = result.gap("synthetic_only")
    assert whole.mean == pytest.approx(result.gap("autoencoder_in_training").mean + result.gap("generator").mean)
    assert np.isnan(result.gap_per_finding("generator")["Fibrosis"].mean)
    assert result.gap_per_finding("generator")["Effusion"].mean == pytest.approx(6.5)
    assert result.rendering().mean == pytest.approx(0.6015)
    assert "Fibrosis" not in result.worst_findings()
    summary = result.summary()
    assert summary["gap_points"]["synthetic_only"]["mean"] == pytest.approx(whole.mean)
    assert summary["per_finding"]["Fibrosis"]["real"]["mean"] is None  # JSON has no NaN
    table = result.table()
    assert list(table.index) == [*result.worst_findings(count=len(LABELS)), "Fibrosis", "mean"]
    assert table.loc["mean", "gap: generator (c - d)"] == pytest.approx(6.5)
    assert table.loc["Effusion", "gap: autoencoder (a - c)"] == pytest.approx(6.5)
    assert table.loc["mean", "real (a)"] == pytest.approx(0.84)
    import matplotlib

    matplotlib.use("Agg")
    from cxrlib.plots import synthesis as plots

    fig = plots.plot_gap_decomposition(result)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == result.worst_findings(count=1)[0].replace("_", " ")


def test_gap_decomposition_trains_each_classifier_per_seed(trained, tmp_path):
    generator = torch.Generator().manual_seed(1)

    def labeled(n):
        labels = (torch.rand(n, len(LABELS), generator=generator) < 0.4).float()
        # the labels leave a trace in the pixels, so that the classifiers have something to learn
        images = torch.rand(n, 1, SIZE, SIZE, generator=generator) * 0.5 + 0.4 * labels[:, :1, None, None]
        return TensorItems(image=images, labels=labels)

    real_train, real_val, test, synthetic_train, synthetic_val = (labeled(n) for n in (32, 16, 24, 32, 16))
    classifier = dataclasses.replace(load_profile("smoke").classifier, max_epochs=1)
    trained_paths = []

    def checkpoint_path(kind, seed):
        trained_paths.append((kind, seed))
        return tmp_path / f"{kind}-{seed}"

    common = dict(real_train=real_train, real_val=real_val, test=test, synthetic_train=synthetic_train,
                  synthetic_val=synthetic_val, config=classifier, seeds=[3, 4], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        gap_decomposition(trained.model, **{**common, "seeds": [3, 3]}, checkpoint_path=checkpoint_path)
    # a perfect autoencoder (the identity) loses nothing at test time
    perfect = gap_decomposition(None, **common, checkpoint_path=checkpoint_path, reconstruct_images=lambda x: x)
    assert sorted(trained_paths) == sorted((kind, seed) for kind in ("real", "reconstructed", "synthetic")
                                           for seed in (3, 4))
    assert perfect.gap("autoencoder_at_test").values == (0.0, 0.0)
    first, second = perfect.seeds
    assert first.per_finding["real"] != second.per_finding["real"]  # each seed is its own classifier
    assert set(first.rendering) == set(LABELS) and perfect.rendered_images == 48

    # the trained autoencoder changes the test images, so the real classifier scores them differently
    lossy = gap_decomposition(trained.model, **common,
                              checkpoint_path=lambda kind, seed: tmp_path / f"ae-{kind}-{seed}")
    assert lossy.seeds[0].per_finding["real_on_reconstructed"] != lossy.seeds[0].per_finding["real"]
    again = GapDecomposition.from_json(json.loads(json.dumps(lossy.to_json())))
    assert again.to_json() == lossy.to_json() and again.summary() == lossy.summary()
