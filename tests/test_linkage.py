"""The project's one k-NN and its one panel of linkage attacks (cxrlib.linkage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlib.data.images import Images
from cxrlib.linkage import (Attack, LinkagePanel, descriptor_attacks, embedding_attack, linkage_panel, p1_chance,
                            panels_table, siamese_attack)
from cxrlib.metrics import nearest_neighbours, retrieval_metrics


def test_nearest_neighbours_leaves_the_query_out_by_index_not_by_distance():
    x = np.array([[0.0], [0.0], [1.0], [5.0]])  # rows 0 and 1 are exact duplicates
    distances, indices = nearest_neighbours(x, k=2)
    assert indices[0].tolist() == [1, 2] and indices[1].tolist() == [0, 2]
    assert distances[0].tolist() == [0.0, 1.0]
    # against a gallery, a given row left out per query (its own source)
    _, indices = nearest_neighbours(x[:2] + 0.1, x, k=1, own=np.array([0, 1]))
    assert indices[:, 0].tolist() == [1, 0]
    # k is capped at the gallery less the row left out
    assert nearest_neighbours(x, k=10)[1].shape == (4, 3)
    with pytest.raises(ValueError, match="must be"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((2, 4)))


def test_retrieval_metrics_rank_with_the_one_knn():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 3)
    centres = rng.normal(size=(10, 8))
    embeddings = centres[labels] + 0.01 * rng.normal(size=(30, 8))
    assert retrieval_metrics(embeddings, labels) == {"map_at_r": 1.0, "r_precision": 1.0, "precision_at_1": 1.0}


def _images(pixels: np.ndarray) -> Images:
    return Images(tuple(f"{i:08d}_000.png" for i in range(len(pixels))), pixels.astype(np.uint8))


def _patients(n_patients=12, per=3, noise=4.0, seed=0) -> tuple[Images, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_patients), per)
    patterns = rng.uniform(40, 215, (n_patients, 16, 16))
    pixels = np.clip(patterns[labels] + rng.normal(0, noise, (len(labels), 16, 16)), 0, 255)
    return _images(pixels), labels


def test_a_panel_finds_identity_in_the_pixels_and_reports_chance():
    images, labels = _patients()
    panel = linkage_panel(descriptor_attacks(images), labels, scope="internal", n_bootstrap=50)
    assert panel.chance_precision_at_1 == pytest.approx(2 / 35)
    raw = panel["raw_pixels"]
    assert raw.precision_at_1 == 1.0 and raw.map_at_r == 1.0 and raw.auc > 0.99
    assert raw.precision_at_1_ci[0] <= raw.precision_at_1 <= raw.precision_at_1_ci[1]
    worst = panel.worst_case()
    assert worst["precision_at_1"].value == 1.0 and worst["precision_at_1"].chance == panel.chance_precision_at_1
    assert LinkagePanel.from_json(panel.to_json()).to_json() == panel.to_json()


def test_a_panel_on_noise_stays_near_chance():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(40), 3)
    images = _images(rng.uniform(0, 255, (len(labels), 16, 16)))
    panel = linkage_panel(descriptor_attacks(images), labels, scope="internal", n_bootstrap=100)
    for a in panel.attacks:
        assert a.precision_at_1 < 0.15 and abs(a.auc - 0.5) < 0.1, a


def test_the_anonymized_scope_leaves_the_source_out():
    images, labels = _patients(per=2)
    # the "anonymized" images are the originals themselves: with the source left out the attack must find
    # the patient's other scan, not the identical source image
    panel = linkage_panel(descriptor_attacks(images, images), labels, labels, scope="anonymized", n_bootstrap=20)
    assert panel.chance_precision_at_1 == pytest.approx(1 / 23)
    raw = panel["raw_pixels"]
    assert raw.precision_at_1 == 1.0
    assert (raw.nearest_index != np.arange(len(labels))).all()
    against = linkage_panel(descriptor_attacks(images, images), labels, labels, scope="against", n_bootstrap=20)
    assert (against["raw_pixels"].nearest_index == np.arange(len(labels))).all()
    assert against.chance_precision_at_1 == pytest.approx(2 / 24)


def test_a_pair_scoring_network_ranks_its_score_matrix():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), 2)
    embeddings = rng.normal(size=(6, 4))[labels] + 0.01 * rng.normal(size=(12, 4))
    weight = torch.tensor([-1.0, -2.0, -0.5, -1.5])

    def compare(a, b):
        return (torch.abs(a - b) * weight).sum(dim=1)

    siamese = siamese_attack("siamese", compare, embeddings)
    panel = linkage_panel([siamese, embedding_attack("retrieval", embeddings)], labels, n_bootstrap=20)
    assert panel["siamese"].precision_at_1 == 1.0 and panel["retrieval"].precision_at_1 == 1.0
    # pair scores of given pairs equal the matrix's entries
    matrix = siamese.score_matrix()
    i, j = np.array([0, 3, 5]), np.array([1, 7, 2])
    np.testing.assert_allclose(siamese.scores(i, j), matrix[i, j], rtol=1e-6)


def test_chance_and_tables():
    labels = np.array([0, 0, 1, 1, 1, 2])
    assert p1_chance(np.array([0, 1]), labels, own=np.array([0, 2])) == pytest.approx([1 / 5, 2 / 5])
    assert p1_chance(np.array([0, 1]), labels, own=None) == pytest.approx([2 / 6, 3 / 6])
    images, ids = _patients()
    panel = linkage_panel(descriptor_attacks(images), ids, n_bootstrap=10)
    table = panels_table({"a": panel, "b": panel})
    assert table.loc["chance", "a"] == pytest.approx(panel.chance_precision_at_1)
    assert table.loc["worst case", "b"] == 1.0
    with pytest.raises(ValueError, match="scope"):
        linkage_panel(descriptor_attacks(images), ids, scope="nowhere")
    with pytest.raises(ValueError, match="nothing to link"):
        linkage_panel([Attack("x", np.eye(3, dtype=np.float32))], np.arange(3))


def test_memorization_panel_flags_copies_and_not_new_patients():
    from cxrlib.memorization import MemorizationPanel, memorization_panel

    training, _ = _patients(n_patients=30, per=2, seed=3)
    unseen, _ = _patients(n_patients=30, per=2, seed=4)
    rng = np.random.default_rng(5)
    copies = Images(tuple(f"copy{i}" for i in range(40)),
                    np.clip(training.pixels[rng.choice(len(training), 40)] + rng.normal(0, 2, (40, 16, 16)), 0, 255)
                    .astype(np.uint8))
    memorized = memorization_panel(copies, training, unseen, n_bootstrap=50)
    raw = next(a for a in memorized.attacks if a.attack == "raw_pixels")
    assert raw.share_closer > 0.9 and raw.auc > 0.95 and memorized.worst_case().share_closer >= raw.share_closer
    fresh, _ = _patients(n_patients=20, per=2, seed=6)
    new = memorization_panel(fresh, training, unseen, n_bootstrap=50)
    raw = next(a for a in new.attacks if a.attack == "raw_pixels")
    assert raw.share_closer < 0.25 and abs(raw.auc - 0.5) < 0.2
    assert MemorizationPanel.from_json(new.to_json()) == new


def test_aligned_pixels_find_a_shifted_patient_that_plain_correlation_misses():
    from cxrlib.linkage import aligned_pixels_attack

    rng = np.random.default_rng(7)
    # each patient a fine random texture; the second scan shifted by 2 px (1 px at the attack's 32 px)
    base = rng.uniform(0, 255, (20, 68, 68))
    first = base[:, 2:66, 2:66]
    second = base[:, 4:68, 4:68] + rng.normal(0, 3, (20, 64, 64))
    images = _images(np.clip(np.concatenate([first, second]), 0, 255))
    labels = np.r_[np.arange(20), np.arange(20)]
    panel = linkage_panel([aligned_pixels_attack(images), *descriptor_attacks(images, kinds=("raw_pixels",))],
                          labels, n_bootstrap=20)
    assert panel["raw_pixels_aligned"].precision_at_1 == 1.0
    assert panel["raw_pixels"].precision_at_1 < 0.5
    attack = aligned_pixels_attack(images)
    i, j = np.array([0, 1, 5]), np.array([20, 3, 25])
    np.testing.assert_allclose(attack.scores(i, j), attack.score_matrix()[i, j], rtol=1e-5, atol=1e-6)


def test_gradient_orientations_ignore_brightness_and_contrast_but_see_edges():
    from cxrlib.linkage import gradient_orientation_features

    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(8)
    texture = gaussian_filter(rng.normal(size=(10, 64, 64)), sigma=(0, 3, 3))
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    bright = 30 + 200 * texture
    dull = 90 + 100 * texture  # the same edges, other brightness and half the contrast
    features = gradient_orientation_features(np.concatenate([bright, dull]).round().astype(np.uint8))
    # 8-bit rounding moves a few votes between neighbouring bins: close, not equal
    same = np.linalg.norm(features[:10] - features[10:], axis=1)
    other = np.linalg.norm(features[:10] - np.roll(features[:10], 1, axis=0), axis=1)
    assert same.max() < 0.2 * other.min()
