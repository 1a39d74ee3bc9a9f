"""The anonymizer interface: input checks, the registry, save and reload."""

from __future__ import annotations

import json

import pytest
import torch

from cxrlib.anonymize import REGISTRY, Anonymizer, FlowFieldAnonymizer, Identity, load_anonymizer, register
from cxrlib.artifacts import ArtifactError


def test_identity_returns_its_input_and_reports_no_params():
    images = torch.rand(3, 1, 16, 16)
    assert torch.equal(Identity()(images), images)
    assert Identity().params() == {}
    assert REGISTRY["identity"] is Identity and REGISTRY["flow_field"] is FlowFieldAnonymizer


@pytest.mark.parametrize("bad, problem", [
    (torch.rand(2, 3, 8, 8), "shape"),
    (torch.rand(1, 8, 8), "shape"),
    (torch.rand(0, 1, 8, 8), "shape"),
    (torch.randint(0, 2, (2, 1, 8, 8)), "float"),
    (torch.rand(2, 1, 8, 8) * 2, "[0, 1]"),
    (torch.rand(2, 1, 8, 8) - 0.5, "[0, 1]"),
    (torch.full((1, 1, 8, 8), float("nan")), "[0, 1]"),
    ([[0.5]], "torch.Tensor"),
])
def test_bad_input_raises_a_clear_error(bad, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Identity()(bad)


def test_saved_identity_reloads(tmp_path):
    path = Identity().save(tmp_path / "identity")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"] == {"anonymizer": "identity", "params": {}}
    assert isinstance(load_anonymizer(path), Identity)


def test_reloaded_flow_field_reproduces_its_output_exactly(tmp_path):
    torch.manual_seed(0)
    anonymizer = FlowFieldAnonymizer(mu=0.05, image_size=16, features=4, poolings=2, smoothing_kernel=3,
                                     smoothing_sigma=0.5)
    anonymizer.train()
    anonymizer(torch.rand(4, 1, 16, 16))  # moves BatchNorm running statistics off their defaults
    anonymizer.eval()
    images = torch.rand(2, 1, 16, 16)
    expected = anonymizer(images)
    loaded = load_anonymizer(anonymizer.save(tmp_path / "ff", metrics={"note": 1}))
    assert isinstance(loaded, FlowFieldAnonymizer) and not loaded.training
    assert loaded.params() == anonymizer.params()
    assert torch.equal(loaded(images), expected)


def test_unknown_anonymizer_in_sidecar_is_refused(tmp_path):
    path = Identity().save(tmp_path / "identity")
    sidecar = path.with_suffix(".json")
    payload = json.loads(sidecar.read_text())
    payload["config"]["anonymizer"] = "no_such_method"
    sidecar.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match="no_such_method"):
        load_anonymizer(path)


def test_parameters_that_do_not_build_the_class_are_refused(tmp_path):
    anonymizer = FlowFieldAnonymizer(mu=0.01, image_size=16, features=4, poolings=2, smoothing_kernel=3,
                                     smoothing_sigma=0.5)
    path = anonymizer.save(tmp_path / "ff")
    sidecar = path.with_suffix(".json")
    payload = json.loads(sidecar.read_text())
    payload["config"]["params"]["image_size"] = 15
    sidecar.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match="do not build"):
        load_anonymizer(path)


def test_unregistered_anonymizers_cannot_be_saved_and_names_are_unique(tmp_path):
    class Unregistered(Anonymizer):
        name = "unregistered_for_test"

        def params(self):
            return {}

        def anonymize(self, images):
            return images

    with pytest.raises(TypeError, match="not registered"):
        Unregistered().save(tmp_path / "x")

    class Clash(Unregistered):
        name = "identity"

    with pytest.raises(ValueError, match="already taken"):
        register(Clash)


def test_an_anonymizer_that_changes_the_shape_is_caught():
    class Cropper(Identity):
        def anonymize(self, images):
            return images[..., 1:, :]

    with pytest.raises(RuntimeError, match="shape"):
        Cropper()(torch.rand(1, 1, 8, 8))


def test_importing_the_package_registers_every_method():
    assert {"identity", "flow_field", "privacy_net", "dp_pix"} <= set(REGISTRY)
