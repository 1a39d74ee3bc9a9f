import dataclasses

import pytest

from cxrlib.config import PROFILE_NAMES, load_profile

# Published hyper-parameters (docs/papers.md); the paper profile must hold exactly these.
PUBLISHED = {
    "data.image_size": 256,
    "verification.backbone": "resnet50",
    "verification.pretrained": True,
    "verification.features": 128,
    "verification.batch_size": 32,
    "verification.lr": 1e-4,
    "verification.max_epochs": 100,
    "verification.patience": 5,
    "verification.runs": 10,
    "retrieval.backbone": "resnet50",
    "retrieval.embedding_dim": 128,
    "retrieval.memory_size": 128,
    "retrieval.batch_size": 32,
    "retrieval.images_per_patient": 8,
    "retrieval.max_lr": 0.158489,
    "retrieval.momentum": 0.9,
    "retrieval.weight_decay": 1e-5,
    "retrieval.frozen_epochs": 30,
    "retrieval.unfrozen_epochs": 50,
    "retrieval.color_jitter": 0.4,
    "classifier.backbone": "densenet121",
    "classifier.pretrained": True,
    "classifier.input_size": 224,
    "classifier.batch_size": 16,
    "classifier.lr": 0.01,
    "classifier.momentum": 0.9,
    "classifier.weight_decay": 1e-4,
    "classifier.max_epochs": 100,
    "classifier.patience": 3,
    "anonymization.mu_values": (0.001, 0.005, 0.01),
    "anonymization.generator_features": 32,
    "anonymization.generator_poolings": 4,
    "anonymization.smoothing_kernel": 9,
    "anonymization.smoothing_sigma": 2.0,
    "anonymization.pretrain_epochs": 200,
    "anonymization.pretrain_lr": 1e-4,
    "anonymization.batch_size": 64,
    "anonymization.adversarial_epochs": 250,
    "anonymization.lr": 1e-4,
    "anonymization.classifier_lr": 1e-4,
    "anonymization.w_ac": 1.0,
    "anonymization.w_ver": 1.0,
    "anonymization.update_adversaries": True,
    "anonymization.train_pairs": 10_000,
    "anonymization.val_pairs": 2_000,
    "anonymization.test_pairs": 5_000,
    "anonymization.privacy_net_features": 16,
    "anonymization.privacy_net_poolings": 3,
    "anonymization.dp_pix_eps": 0.1,
    "anonymization.dp_pix_m": 1.0,
    "evaluation.attack_runs": 10,
    "evaluation.bootstrap_samples": 1000,
    "seed": 42,
}


def _get(profile, dotted):
    value = profile
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_paper_profile_matches_published_values():
    paper = load_profile("paper")
    rows = [(key, expected, _get(paper, key)) for key, expected in PUBLISHED.items()]
    print("\n".join(f"{k:40s} published={e!r:12} profile={a!r}" for k, e, a in rows))
    drift = [(k, e, a) for k, e, a in rows if e != a]
    assert not drift, f"paper profile drifted from the published values: {drift}"


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profiles_load_and_fingerprint(name):
    profile = load_profile(name)
    assert profile.name == name
    assert len(profile.fingerprint()) == 10
    assert profile.fingerprint("verification") != profile.fingerprint("classifier")


def test_overrides_plain_and_dotted():
    profile = load_profile("cpu", image_size=32, **{"verification.max_epochs": 2, "seed": 7})
    assert profile.data.image_size == 32
    assert profile.verification.max_epochs == 2
    assert profile.seed == 7
    assert load_profile("cpu").data.image_size == 64  # defaults untouched
    assert dataclasses.is_dataclass(profile)


@pytest.mark.parametrize("bad", [{"nonsense": 1}, {"verification.nonsense": 1}, {"nosection.lr": 1}])
def test_unknown_override_is_an_error(bad):
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("cpu", **bad)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        load_profile("gpu")
