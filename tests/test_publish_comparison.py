"""Notebook 05's steps from cxrlib.publish.comparison on a small phantom export: anonymize it, audit the raw
export and the release against it, put the release's images back in the raw order, measure its utility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrlib import reid
from cxrlib.classify import build_classifier
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import find_metadata_file, label_matrix, read_metadata
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.comparison import (AuditSummary, anonymize_export, audit_folder, release_images,
                                       release_utility)
from cxrlib.publish.phantom_dicom import write_synthetic_phi_dicom
from cxrlib.publish.pipeline import pixel_method

SIZE = 32


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A phantom's images as a DICOM export with synthetic PHI, and an untrained retrieval network: the
    steps, not the figures, are under test."""
    root = tmp_path_factory.mktemp("comparison")
    phantom = generate_phantom(root / "phantom", n_patients=6, size=SIZE, seed=5, max_followups=3, progress=False)
    raw = write_synthetic_phi_dicom(phantom, root / "raw", seed=5, progress=False) / "images"
    torch.manual_seed(0)
    network = reid.build_retrieval_network(load_profile("smoke").retrieval).eval()
    return {"root": root, "phantom": phantom, "raw": raw, "network": network}


def test_a_release_is_anonymized_audited_and_put_back_in_the_raw_order(export):
    root, raw, network = export["root"], export["raw"], export["network"]
    key = bytes(range(32))
    raw_audited = audit_folder(raw, network, size=SIZE, report_dir=root / "audits" / "raw", model_name="net.safetensors")
    raw_names = raw_audited.release.images.names
    assert raw_audited.result["model"] == "net.safetensors" and "against" not in raw_audited.result
    assert json.loads((root / "audits" / "raw" / "audit.json").read_text())["images"] == len(raw_names)
    assert (root / "audits" / "raw" / "audit.html").is_file()

    release = anonymize_export(raw, root / "release", key, pixel_method("none"), raw_names)
    assert release.describe() == f"release: {len(raw_names)} written, 0 already done, 0 failed"
    assert len(release.files) == len(set(release.files)) == len(raw_names)
    # anonymized anew: a second run rewrites every file rather than resuming
    assert anonymize_export(raw, root / "release", key, pixel_method("none"), raw_names).batch.done == len(raw_names)

    audited = audit_folder(release.folder, network, size=SIZE, report_dir=root / "audits" / "release",
                           model_name="net.safetensors", against=raw, key=key)
    summary = AuditSummary.of(audited.result)
    assert summary.images == len(raw_names) and summary.audited_against_raw
    assert summary.table_e1_1_attributes == 0 and summary.files_with_private_tags == 0
    assert AuditSummary.of(raw_audited.result).files_with_private_tags == len(raw_names)

    # "none" leaves the pixels but for blacked-out text: each released image is closest to its own raw image
    raw_pixels = release_images(raw_audited.release).flatten(1)
    released = release_images(audited.release, release.files).flatten(1)
    assert torch.equal(torch.cdist(released, raw_pixels).argmin(dim=1), torch.arange(len(raw_names)))
    # without the files, the release's own order, which is not the raw export's
    assert not torch.equal(release_images(audited.release).flatten(1), released)


def test_release_utility_of_the_raw_export_itself(export):
    raw_release = audit_folder(export["raw"], export["network"], size=SIZE,
                               report_dir=export["root"] / "audits" / "utility", model_name="net").release
    names = [name.split("/")[-1].replace(".dcm", ".png") for name in raw_release.images.names]
    labels = label_matrix(read_metadata(find_metadata_file(export["phantom"])).set_index("image").loc[names]
                          .reset_index())
    images = release_images(raw_release)
    torch.manual_seed(0)
    classifier = build_classifier(load_profile("smoke").classifier).eval()
    utility = release_utility(classifier, images, images, labels, bootstrap_samples=20, seed=0)
    low, high = utility.ci
    assert low <= utility.mean_auc <= high or np.isnan(utility.mean_auc)
    assert utility.ssim == pytest.approx(1.0) and utility.psnr is None  # no pixel moved
    with pytest.raises(ValueError, match="bootstrap"):
        release_utility(classifier, images, images, labels, bootstrap_samples=0, seed=0)
    assert set(utility.row()) == {"classifier mean AUC", "95 % CI", "SSIM", "PSNR dB"}
