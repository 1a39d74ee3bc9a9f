"""The training-free attacks and the identity profile: each attack on a case it must win and one it must
lose, the patient bootstrap, and the profile of the real ChestX-ray14 sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrlib.attacks import (TRAINING_FREE_ATTACKS, IdentityProfile, attack_features, attack_pair_scores,
                            block_means, identity_profile)
from cxrlib.data.cache import prepare_cache
from cxrlib.data.chestxray14 import find_metadata_file, read_metadata
from cxrlib.data.images import Images
from cxrlib.data.pairs import patient_uniform_pairs
from cxrlib.metrics import patient_bootstrap_auc

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "chestxray14-sample"


def _patients(n_patients: int = 30, per_patient: int = 3, size: int = 32, seed: int = 0):
    """Each patient a smooth random pattern of its own; each scan noisy. Returns (Images, meta)."""
    rng = np.random.default_rng(seed)
    names, pixels, ids = [], [], []
    for patient in range(1, n_patients + 1):
        base = np.kron(rng.random((4, 4)), np.ones((size // 4, size // 4)))
        for follow_up in range(per_patient):
            scan = base + 0.05 * rng.normal(size=(size, size))
            names.append(f"{patient:08d}_{follow_up:03d}.png")
            pixels.append((np.clip(scan, 0, 1) * 255).astype(np.uint8))
            ids.append(patient)
    return Images(names, np.stack(pixels)), pd.DataFrame({"image": names, "patient_id": ids})


def test_every_attack_links_copies_of_one_image():
    images, meta = _patients()
    pairs = patient_uniform_pairs(meta, 200, seed=0)
    for kind in TRAINING_FREE_ATTACKS:
        auc = roc_auc_score(pairs["label"], attack_pair_scores(images, pairs, kind))
        assert auc > 0.9, kind


def test_intensity_attacks_are_blind_to_where_pixels_are():
    """Shuffling an image's pixels keeps its mean, sd and histogram but destroys its pixel correlation
    and its block means: the first two must find the pairs, the last two must not."""
    images, _ = _patients(n_patients=20, per_patient=1)
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(p.ravel()).reshape(p.shape) for p in images.pixels])
    both = Images(images.names + tuple(n + "_shuffled" for n in images.names),
                  np.concatenate([images.pixels, shuffled]))
    pairs = pd.DataFrame({"img1": list(images.names), "img2": [n + "_shuffled" for n in images.names], "label": 1})
    for kind in ("mean_sd", "histogram"):
        np.testing.assert_allclose(attack_pair_scores(both, pairs, kind), 0.0, atol=1e-5)
    correlation = 1 - attack_pair_scores(both, pairs, "raw_pixels") ** 2 / 2  # unit vectors
    assert np.abs(correlation).max() < 0.5
    blocks = attack_features(both, "block_means_8")
    assert np.linalg.norm(blocks[:20] - blocks[20:], axis=1).min() > 1.0


def test_block_means_are_the_means_of_the_blocks():
    pixels = np.arange(2 * 16 * 16, dtype=np.uint8).reshape(2, 16, 16)
    means = block_means(pixels, 8)
    assert means.shape == (2, 64)
    assert means[1, 0] == pytest.approx(pixels[1, :2, :2].mean())


def test_attacks_reject_an_unknown_kind():
    images, _ = _patients(n_patients=2, per_patient=2)
    with pytest.raises(ValueError, match="unknown attack 'exposure'"):
        attack_features(images, "exposure")


def test_patient_bootstrap_counts_patients_not_pairs():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(200, int)]
    scores = labels + rng.normal(0, 1.0, 400)
    first = np.r_[np.repeat(np.arange(10), 20), rng.integers(0, 10, 200)]
    second = np.r_[np.repeat(np.arange(10), 20), (first[200:] + 1 + rng.integers(0, 9, 200)) % 10]
    auc, resampled = patient_bootstrap_auc(labels, scores, first, second, n_samples=300, seed=0)
    assert auc == pytest.approx(roc_auc_score(labels, scores))
    assert len(resampled) > 250 and np.percentile(resampled, 2.5) < auc < np.percentile(resampled, 97.5)
    # 10 patients: the interval is wider than a bootstrap over 400 independent pairs would give
    pair_draws = [roc_auc_score(labels[i], scores[i]) for i in rng.integers(0, 400, (300, 400))]
    assert np.std(resampled) > np.std(pair_draws)
    # every pair needs both its patients
    with pytest.raises(ValueError, match="two patients"):
        patient_bootstrap_auc(labels, scores, first[:10], second, n_samples=10)


def test_patient_uniform_pairs_weigh_patients_alike():
    meta = pd.DataFrame({"image": [f"{p}_{i}" for p, n in ((1, 40), (2, 2), (3, 2)) for i in range(n)],
                         "patient_id": [p for p, n in ((1, 40), (2, 2), (3, 2)) for _ in range(n)]})
    pairs = patient_uniform_pairs(meta, 3000, seed=0)
    same = pairs[pairs["label"] == 1]
    share_of_long_series = same["img1"].str.startswith("1_").mean()
    assert 0.28 < share_of_long_series < 0.39  # a third, not the 780 / 782 of all distinct pairs
    patient = lambda name: name.split("_")[0]  # noqa: E731
    assert (same["img1"].map(patient) == same["img2"].map(patient)).all()
    different = pairs[pairs["label"] == 0]
    assert (different["img1"].map(patient) != different["img2"].map(patient)).all()


def test_identity_profile_on_a_known_case_round_trips():
    images, meta = _patients()
    profile = identity_profile(images, meta, data="toy", pairs_per_class=300, n_bootstrap=50)
    assert [c.attack for c in profile.cues] == list(TRAINING_FREE_ATTACKS)
    assert profile.patients == 30 and profile.images == 90 and profile.same_patient_pairs == 300
    assert all(c.ci_low <= c.auc <= c.ci_high for c in profile.cues)
    assert IdentityProfile.from_json(profile.to_json()) == profile
    assert all(profile.inside(profile).values())


def test_identity_profile_of_the_real_sample(tmp_path):
    """The real sample's figures with the protocol of its README: data nobody here wrote."""
    cache = prepare_cache(SAMPLE, 64, cache_dir=tmp_path / "cache", workers=1, progress=False)
    meta = read_metadata(find_metadata_file(SAMPLE))
    profile = identity_profile(Images.from_cache(cache, meta["image"]), meta, data="sample", n_bootstrap=200)
    assert profile.patients == 136 and profile.images == 872
    # the README's figures (its raw pixels are z-scored per pixel; ours are correlated, a stronger attack)
    assert profile.cue("block_means_8").auc == pytest.approx(0.706, abs=0.01)
    assert profile.cue("histogram").auc == pytest.approx(0.648, abs=0.01)
    assert profile.cue("mean_sd").auc == pytest.approx(0.646, abs=0.01)
    assert 0.70 < profile.cue("raw_pixels").auc < 0.77
