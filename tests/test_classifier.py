"""The abnormality classifier: shapes, resizing, training through the shared loop, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlib.anonymize import FlowFieldAnonymizer, Identity
from cxrlib.classify import build_classifier, evaluate_classifier, predict, train_classifier
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems
from cxrlib.models.classifier import Classifier


def labelled_images(n: int, size: int = 16, seed: int = 0) -> TensorItems:
    """Images whose bright left half marks finding 0 and bright right half finding 1; others random."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, len(LABELS), generator=g) < 0.5).float()
    images = torch.rand(n, 1, size, size, generator=g) * 0.3
    images[:, :, :, : size // 2] += 0.6 * labels[:, 0, None, None, None]
    images[:, :, : size // 2, :] += 0.6 * labels[:, 1, None, None, None]
    return TensorItems(image=images.clamp(0, 1), labels=labels)


def test_classifier_returns_14_logits_and_resizes_to_its_input_size():
    torch.manual_seed(0)
    model = Classifier("convnet", pretrained=False, input_size=16).eval()
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, len(LABELS))
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, len(LABELS))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 16, 16))


def test_training_learns_the_findings_and_evaluation_reports_aucs(tmp_path):
    config = load_profile("smoke", **{"classifier.input_size": 16, "classifier.max_epochs": 4,
                                      "classifier.patience": 4, "classifier.lr": 0.05}).classifier
    model, result = train_classifier(labelled_images(96), labelled_images(32, seed=1), config,
                                     checkpoint_path=tmp_path / "classifier", seed=0)
    assert result.trained and len(result.history) >= 1
    metrics, probabilities = evaluate_classifier(model, labelled_images(64, seed=2), bootstrap_samples=50, seed=0)
    per_class = metrics["per_class"]
    assert set(per_class) == set(LABELS)
    assert per_class[LABELS[0]] > 0.8 and per_class[LABELS[1]] > 0.8
    assert metrics["mean_auc"] == pytest.approx(np.nanmean(list(per_class.values())))
    low, high = metrics["ci"]
    assert low <= metrics["mean_auc"] <= high
    assert probabilities.shape == (64, len(LABELS)) and ((probabilities >= 0) & (probabilities <= 1)).all()

    # the finished checkpoint is reused, not retrained
    again, reused = train_classifier(labelled_images(96), labelled_images(32, seed=1), config,
                                     checkpoint_path=tmp_path / "classifier", seed=0)
    assert not reused.trained
    test = labelled_images(8, seed=3)
    np.testing.assert_array_equal(predict(again, test)[0], predict(model, test)[0])


def test_predict_applies_the_anonymizer_first():
    torch.manual_seed(0)
    model = Classifier("convnet", pretrained=False, input_size=16)
    data = labelled_images(6)
    plain, labels = predict(model, data)
    np.testing.assert_array_equal(predict(model, data, anonymizer=Identity())[0], plain)
    deforming = FlowFieldAnonymizer(mu=0.5, image_size=16, features=4, poolings=2, smoothing_kernel=3,
                                    smoothing_sigma=0.5)
    assert not np.array_equal(predict(model, data, anonymizer=deforming)[0], plain)
    assert plain.shape == labels.shape == (6, len(LABELS))
    assert ((plain >= 0) & (plain <= 1)).all()


def test_unknown_optimizer_is_refused(tmp_path):
    import dataclasses

    config = dataclasses.replace(load_profile("smoke").classifier, optimizer="rmsprop")
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(labelled_images(8), labelled_images(8), config, checkpoint_path=tmp_path / "c", seed=0)


def test_roc_figure_has_a_panel_per_finding_and_marks_one_class_findings():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrlib.plots.anonymize import plot_roc_curves

    rng = np.random.default_rng(0)
    labels = (rng.random((20, len(LABELS))) < 0.4).astype(float)
    labels[:, -1] = 0  # a finding absent from the test set
    fig = plot_roc_curves({"original": (labels, rng.random(labels.shape)),
                           "anonymized": (labels, rng.random(labels.shape))})
    assert sum(ax.has_data() for ax in fig.axes) == len(LABELS)
    assert any("one class" in t.get_text() for t in fig.axes[len(LABELS) - 1].texts)
    plt.close("all")


def test_spatial_head_trains_when_the_last_batch_would_hold_one_image(tmp_path):
    # its batch norm sees a 1 x 1 map: one image per batch would raise, so training drops that batch
    config = load_profile("smoke", **{"classifier.backbone": "convnet_spatial", "classifier.input_size": 16,
                                      "classifier.max_epochs": 1, "classifier.batch_size": 16}).classifier
    _, result = train_classifier(labelled_images(33), labelled_images(17, seed=1), config,
                                 checkpoint_path=tmp_path / "classifier", seed=0)
    assert result.trained and len(result.history) == 1


def test_model_initialization_follows_the_seed_argument(tmp_path):
    config = load_profile("smoke", **{"classifier.input_size": 16, "classifier.max_epochs": 1}).classifier

    def train(seed, global_seed, name):
        torch.manual_seed(global_seed)  # what a notebook might have set: must not matter
        return train_classifier(labelled_images(8), labelled_images(8), config, checkpoint_path=tmp_path / name,
                                seed=seed)

    model, result = train(0, 123, "new")
    again, again_result = train(0, 7, "again")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in again_result.history]
    other, _ = train(1, 0, "other")
    assert not all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
