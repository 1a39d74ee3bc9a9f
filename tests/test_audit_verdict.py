"""The audit's panel of linkage attacks and its verdict: each attack wins the case it must win and loses the
one it must lose; on the real sample a release made with ``none`` or ``dp-pix`` (b = 8) is linkable to its
export, at least as strongly as the plain training-free attacks find; unrelated images are not linkable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlib import reid
from cxrlib.attacks import TRAINING_FREE_ATTACKS, attack_features
from cxrlib.cli import main
from cxrlib.config import load_profile
from cxrlib.linkage import LinkagePanel, p1_chance
from cxrlib.publish import linkage
from cxrlib.publish.audit import Release, audit_release
from tests.test_publish_audit import trained  # noqa: F401  (the fixture: a retrieval network on a phantom)
from tests.test_publish_pixels import SAMPLE, write_sample_release

SIZE, PATIENTS, PER = 32, 30, 3


@pytest.fixture(scope="module")
def network():
    return reid.build_retrieval_network(load_profile("smoke").retrieval).eval()


def _case(kind: str, seed: int = 0) -> np.ndarray:
    """(PATIENTS * PER, SIZE, SIZE) images whose patient identity lives in one cue only."""
    rng = np.random.default_rng(seed)
    n = PATIENTS * PER
    if kind == "pattern_affine":  # a fixed pattern per patient under a random brightness / contrast
        base = rng.uniform(-1, 1, (PATIENTS, SIZE, SIZE)).repeat(PER, 0)
        x = 128 + rng.uniform(10, 60, (n, 1, 1)) * base + rng.uniform(-50, 50, (n, 1, 1))
    elif kind == "mean_sd":  # random noise; the patient sets its mean and sd
        mean = rng.uniform(60, 190, PATIENTS).repeat(PER)[:, None, None]
        sd = rng.uniform(5, 40, PATIENTS).repeat(PER)[:, None, None]
        x = mean + sd * rng.standard_normal((n, SIZE, SIZE))
    elif kind == "histogram_shape":  # one mean and sd for all, the shape of the distribution per patient;
        # pixels in random places, so no spatial cue
        shape = rng.uniform(0.5, 4, PATIENTS).repeat(PER)
        x = np.stack([rng.gamma(k, 1, (SIZE, SIZE)) for k in shape])
        x = 128 + 30 * (x - shape[:, None, None]) / np.sqrt(shape)[:, None, None]
    elif kind == "block_layout":  # the same 64 block values for everyone, arranged per patient, fine noise
        values = np.linspace(40, 215, 64)
        layout = np.stack([rng.permutation(values).reshape(8, 8) for _ in range(PATIENTS)]).repeat(PER, 0)
        x = layout.repeat(SIZE // 8, 1).repeat(SIZE // 8, 2) + rng.normal(0, 25, (n, SIZE, SIZE))
    elif kind == "pattern_shifted":  # a fixed fine pattern per patient, each scan moved by up to 1 px
        base = rng.uniform(20, 235, (PATIENTS, SIZE + 1, SIZE + 1)).repeat(PER, 0)
        offsets = rng.integers(0, 2, (n, 2))
        x = np.stack([b[dy:dy + SIZE, dx:dx + SIZE] for b, (dy, dx) in zip(base, offsets)])
    else:
        raise ValueError(kind)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _panel(network, kind: str) -> dict:
    ids = [f"{p:08d}" for p in range(PATIENTS) for _ in range(PER)]
    names = tuple(f"{pid}_{k:03d}.png" for k, pid in enumerate(ids))
    release = Release(Path(kind), reid.Images(names, _case(kind)), ids, text_found=[0] * len(ids))
    return audit_release(release, network, n_bootstrap=200)


def _passes(result: dict, attack: str) -> bool:
    panel = LinkagePanel.from_json(result["attack_panel"]["internal"])
    return linkage._linkable(panel[attack], panel.chance_precision_at_1)[0]


#: attack -> (a case it must win, a case it must lose)
WINS_AND_LOSSES = {
    "raw_pixels": ("pattern_affine", "histogram_shape"),
    "block_means_8": ("block_layout", "histogram_shape"),
    "block_means_4": ("block_layout", "histogram_shape"),
    "block_means_16": ("block_layout", "histogram_shape"),
    "histogram": ("histogram_shape", "block_layout"),
    "mean_sd": ("mean_sd", "block_layout"),
    "gradient_orientation": ("pattern_affine", "histogram_shape"),
    "raw_pixels_aligned": ("pattern_shifted", "histogram_shape"),
}


@pytest.mark.parametrize("attack", list(WINS_AND_LOSSES))
def test_each_attack_wins_its_case_and_loses_another(network, attack):
    win, lose = WINS_AND_LOSSES[attack]
    won, lost = _panel(network, win), _panel(network, lose)
    assert _passes(won, attack), won["attack_panel"]["internal"]["attacks"][attack]
    assert not _passes(lost, attack), lost["attack_panel"]["internal"]["attacks"][attack]
    # the verdict reads the worst case: a case one attack wins is linkable whatever the others find
    assert won["verdict"]["verdict"] == "linkable"
    assert won["attack_panel"]["internal"]["attacks"][attack]["precision_at_1"] <= \
        won["verdict"]["worst_case"]["internal"]["precision_at_1"]["value"]


def test_all_attacks_of_the_library_are_in_the_panel():
    assert set(TRAINING_FREE_ATTACKS) | {linkage.NETWORK} <= set(linkage.AUDIT_ATTACKS)
    # every attack that needs no training has a case it must win and one it must lose
    assert set(WINS_AND_LOSSES) == set(linkage.AUDIT_ATTACKS) - {linkage.NETWORK}


def test_chance_levels():
    labels = np.array([0, 0, 1, 1, 1, 2])
    # the query's own row left out of the gallery: (n_p - 1) / (N - 1)
    assert p1_chance(np.array([0, 1]), labels, own=np.array([0, 2])) == pytest.approx([1 / 5, 2 / 5])
    # against another set: n_p / N
    assert p1_chance(np.array([0, 1]), labels, own=None) == pytest.approx([2 / 6, 3 / 6])


def _real_release(tmp_path: Path, method: str, count: int = 200) -> tuple[Path, Path, Path]:
    export = write_sample_release(tmp_path / "export", count=count)
    key = tmp_path / "key"
    key.write_bytes(b"v" * 32)
    assert main(["anonymize", str(export), str(tmp_path / method), "--key", str(key), "--method", method,
                 "--no-text-detection", "--quiet"]) == 0
    return export, tmp_path / method, key


def _plain_block_means_p1(release: Path, export: Path, key: Path, size: int) -> float:
    """8 x 8 block means alone, outside the audit: each release image's nearest export image."""
    from cxrlib.publish.audit import read_release

    rel, exp = (read_release(f, size, detect_text=False, progress=False) for f in (release, export))
    theirs = exp.pseudonymized_ids(key.read_bytes())
    both = reid.Images(tuple(f"r{n}" for n in rel.images.names) + tuple(f"e{n}" for n in exp.images.names),
                       np.concatenate([rel.images.pixels, exp.images.pixels]))
    x = attack_features(both, "block_means_8")
    q, g = x[: len(rel.patient_ids)], x[len(rel.patient_ids):]
    nearest = np.linalg.norm(q[:, None] - g[None], axis=2).argmin(axis=1)
    return float(np.mean([rel.patient_ids[i] == theirs[j] for i, j in enumerate(nearest)]))


@pytest.mark.parametrize("method", ["none", "dp-pix"])
def test_real_sample_release_is_linkable_to_its_export(trained, tmp_path, method, capsys):  # noqa: F811
    export, release, key = _real_release(tmp_path, method)
    out = tmp_path / "report"
    assert main(["audit", str(release), "--against", str(export), "--key", str(key), "--model",
                 str(trained["model"]), "--profile", "smoke", "--out", str(out), "--no-text-detection",
                 "--quiet"]) == 0
    result = json.loads((out / "audit.json").read_text())
    assert next(iter(result)) == "verdict"  # the verdict comes first
    verdict = result["verdict"]
    worst = verdict["worst_case"]["against"]["precision_at_1"]
    assert verdict["verdict"] == "linkable"
    # the first 200 images of the sample hold few patients, so chance is high here (about 16 %)
    assert worst["value"] >= 0.5 and worst["value"] >= 4 * worst["chance"]
    assert worst["ci"][0] > worst["chance"] + 0.2
    plain = _plain_block_means_p1(release, export, key, result["image_size"])
    assert worst["value"] >= plain - 1e-9, (worst, plain)
    page = (out / "audit.html").read_text()
    assert "Verdict: linkable" in page and "low" not in page.split("Read this first")[1][:300]
    assert verdict["text"].split(":")[0] in capsys.readouterr().out
    with capsys.disabled():  # the figures, for the record (pytest -s)
        print(f"\n{method}: {verdict['text']}")
        for kind, f in result["attack_panel"]["against"]["attacks"].items():
            print(f"  against {kind}: P@1 {f['precision_at_1']:.3f} {f['precision_at_1_ci']}, AUC {f.get('auc')}")
    assert result["most_linked_pairs"]["against"]["pairs"]


def test_unrelated_images_are_not_called_linkable(trained, tmp_path):  # noqa: F811
    """Release images of some patients named with ids of other patients of the export: the ids meet, the
    patients do not, so no attack may pass the verdict's scale."""
    export = write_sample_release(tmp_path / "export", count=200)
    files = sorted((export / "images").glob("*.png"))
    patients = sorted({f.name[:8] for f in files})
    half = len(patients) // 2
    theirs, ours = set(patients[:half]), patients[half:]
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    for f in files:
        if f.name[:8] in theirs:
            shutil.copy(f, other / "images" / f.name)
    release = tmp_path / "release"
    release.mkdir()
    targets = sorted(theirs)
    mine = [f for f in files if f.name[:8] in set(ours)][: len(targets)]
    for f, target in zip(mine, targets):  # one image per borrowed id: no internal same-patient pair
        shutil.copy(f, release / f"{target}_900.png")
    out = tmp_path / "report"
    assert main(["audit", str(release), "--against", str(other), "--model", str(trained["model"]), "--profile",
                 "smoke", "--out", str(out), "--no-text-detection", "--quiet"]) == 0
    result = json.loads((out / "audit.json").read_text())
    assert "against" in result["attack_panel"], result["verdict"]
    assert result["verdict"]["verdict"] == "no linkage found", result["verdict"]["text"]
    assert "evidence, not proof" in result["verdict"]["text"]
    assert "internal" in result["verdict"]["not_scored"]
    page = (out / "audit.html").read_text()
    assert "Verdict: no linkage found" in page


def test_thresholds_are_calibrated_on_different_patients_or_said_uncalibrated(network):
    result = _panel(network, "block_layout")
    assert result["suspected_clusters"]["calibrated"] is True
    ids = [None] * (PATIENTS * PER)
    names = tuple(f"scan{k}.png" for k in range(len(ids)))
    unknown = audit_release(Release(Path("u"), reid.Images(names, _case("block_layout")), ids,
                                    text_found=[1] + [0] * (len(ids) - 1)), network, n_bootstrap=50)
    assert unknown["suspected_clusters"]["calibrated"] is False
    assert "UNCALIBRATED" in unknown["suspected_clusters"]["chosen"]
    assert unknown["verdict"]["verdict"] == "not scored"
    assert unknown["burned_in_text"]["files"] == ["scan0.png"]
    assert unknown["most_linked_pairs"]["internal"]["pairs"][0]["same_patient"] is None
