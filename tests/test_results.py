"""The typed results the notebooks save (cxrlib.results, cxrlib.publish.comparison): each reads the committed
metrics files and writes them back unchanged, so the schema the report reads by key stays as it is; and
each builder computes its figures from what the notebook measured."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cxrlib.attacks import IdentityProfile
from cxrlib.config import load_profile
from cxrlib.data.chestxray14 import LABELS
from cxrlib.evaluate import short_label
from cxrlib.linkage import LinkagePanel
from cxrlib.publish.comparison import AuditSummary, PublishingResults, ReleaseUtility
from cxrlib.report import results_section
from cxrlib.results.data import DataResults, data_results
from cxrlib.results.prichexy_net import (DIAGNOSTIC_ROW, LOWER_BOUND, SMALLEST, WORST_FOUND, PriCheXyNetResults,
                                         mu_label, prichexy_net_results)
from cxrlib.results.reidentification import ReidentificationResults, reidentification_results
from cxrlib.results.synthesis import SynthesisResults, synthesis_results
from cxrlib.results.tradeoff import BASELINES, TradeoffResults, tradeoff_results, tradeoff_summary
from cxrlib.synthesis.decomposition import GapDecomposition, SeedAUCs
from cxrlib.synthesis.privacy_filter import Thresholds

ROOT = Path(__file__).resolve().parents[1]
#: the committed results folders, which the report and the README read
COMMITTED = [ROOT / "results" / "cpu", ROOT / "results" / "cpu-chestxray14-sample"]
#: each metrics file and the type that writes it
TYPES = {"data.json": DataResults, "reidentification.json": ReidentificationResults, "prichexy_net.json": PriCheXyNetResults,
         "tradeoff.json": TradeoffResults, "synthesis.json": SynthesisResults, "publishing.json": PublishingResults}


def canonical(payload: Any) -> str:
    """JSON as the results files write it (sorted keys; tuples as lists; NaN and infinity as JSON5 does)."""
    return json.dumps(payload, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else list(v))


def committed(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / name).read_text())


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: f.name)
@pytest.mark.parametrize("name", sorted(TYPES))
def test_committed_results_are_read_and_written_back_unchanged(folder, name):
    payload = committed(folder, name)
    context = payload.pop("context")
    results = TYPES[name].from_json(payload)
    assert canonical(results.to_json()) == canonical(payload)
    # to_json is its keys and nothing else: the context is save's
    assert "context" not in results.to_json()
    assert canonical({"context": context, **results.to_json()}) == canonical(committed(folder, name))


def test_the_report_reads_the_results_written_by_the_types(tmp_path):
    # both folders: the report of the cpu run reads the real sample's beside it
    for folder in COMMITTED:
        shutil.copytree(folder, tmp_path / folder.name, 
                        ignore=shutil.ignore_patterns("notebooks", "05_audits"))
    source, copy = COMMITTED[0], tmp_path / COMMITTED[0].name
    for name, kind in TYPES.items():
        payload = committed(source, name)
        context = payload.pop("context")
        (copy / name).unlink()
        kind.from_json(payload).save(copy / name, context=context)
        assert canonical(json.loads((copy / name).read_text())) == canonical(committed(source, name))
    assert results_section(copy, link_root=tmp_path) == results_section(source, link_root=source.parent)


# -- notebook 00 -----------------------------------------------------------------------------------


def test_data_results_from_what_notebook_00_measured():
    payload = committed(COMMITTED[0], "data.json")
    meta = pd.DataFrame({"image": [f"{i}.png" for i in range(6)], "patient_id": [1, 1, 1, 2, 2, 3],
                         "follow_up": [0, 1, 2, 0, 1, 0], "age": [40, 41, 43, 50, 50, 60], "sex": list("MMMFFF"),
                         "view": ["PA"] * 6, "finding_labels": ["No Finding"] * 6, **{label: 0 for label in LABELS}})
    split_table = pd.DataFrame({"train": {"images": 4, "patients": 2}, "test": {"images": 2, "patients": 1}}).T
    comparison = pd.DataFrame({"area": {"real q2.5": 0.1, "phantom share outside": 0.2}}).T
    profiles = [IdentityProfile.from_json(p) for p in payload["identity_profiles"]]
    results = data_results(real_metadata={"images": 112120}, working_metadata=meta, splits_source="patients",
                           split_table=split_table, real_mask_count=10, real_masks_with_two_lungs=9,
                           lung_comparison=comparison, outside_real_range={"area": "20 %"}, identity_profiles=profiles,
                           phantom_cues_inside_real_ci={"raw_pixels": True})
    written = results.to_json()
    assert written["splits"] == {"source": "patients", "train": {"images": 4, "patients": 2},
                                 "test": {"images": 2, "patients": 1}}
    assert written["working_data"]["images"] == 6 and written["working_data"]["patients"] == 3
    assert written["lung_fields"] == {"real_masks": 10, "real_masks_with_two_lungs": 9,
                                      "comparison": {"area": {"real q2.5": 0.1, "phantom share outside": 0.2}},
                                      "outside_real_range": {"area": "20 %"}}
    assert canonical(written["identity_profiles"]) == canonical(payload["identity_profiles"])
    assert set(written) == set(payload) - {"context"}
    # real data: no lung comparison, no phantom cues
    real = data_results(real_metadata={}, working_metadata=meta, splits_source="official lists", split_table=split_table,
                        real_mask_count=10, real_masks_with_two_lungs=9, lung_comparison=None,
                        outside_real_range=None, identity_profiles=profiles[:1], phantom_cues_inside_real_ci=None)
    assert real.to_json()["lung_fields"]["comparison"] is None and real.phantom_cues_inside_real_ci is None


# -- notebook 03 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: f.name)
def test_tradeoff_summary_is_the_one_notebook_03_computed(folder):
    payload = committed(folder, "tradeoff.json")
    assert canonical(dataclasses.asdict(tradeoff_summary(payload["results"]))) == canonical(payload["summary"])


def test_tradeoff_summary_needs_no_anonymization_and_prichexy_net():
    results = [r for r in committed(COMMITTED[0], "tradeoff.json")["results"] if r["method"] != "flow_field"]
    with pytest.raises(ValueError, match="PriCheXy-Net"):
        tradeoff_summary(results)


def test_tradeoff_summary_drops_and_expectations():
    results = committed(COMMITTED[0], "tradeoff.json")["results"]
    summary = tradeoff_summary(results)
    identity = next(r for r in results if r["method"] == "identity")
    strongest = max((r for r in results if r["method"] == "flow_field"), key=lambda r: r["params"]["mu"])
    assert summary.prichexy_largest_mu == strongest["params"]["mu"]
    assert summary.prichexy_attack_auc_drop == pytest.approx(
        identity["privacy"]["attack_auc_mean"] - strongest["privacy"]["attack_auc_mean"])
    assert summary.prichexy_utility_loss == pytest.approx(
        identity["utility"]["mean_auc"] - strongest["utility"]["mean_auc"])
    runs = [run for r in results for run in r["privacy"]["attack_runs"]]
    assert summary.attackers == len(runs)
    assert summary.attackers_stopped_early == sum(run["ended_by"] == "early stopping" for run in runs)
    assert summary.expectations.every_attacker_stopped_early == (summary.attackers_stopped_early == len(runs))
    baselines = {short_label(r) for r in results if r["method"] in BASELINES}
    assert baselines and set(summary.baseline_utility_loss) == set(summary.baseline_attack_auc_drop) == baselines


@dataclass
class Training:
    """What the results read of a FitResult or AdversarialResult (cxrlib.train, cxrlib.anonymize.adversarial)."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float = 0.0
    best_val_total: float = 0.0
    trained: bool = True
    checkpoint_path: Path = Path("artifacts/model.safetensors")
    recorded: dict[str, Any] = field(default_factory=lambda: {"ended_by": "the epoch cap", "epochs": 2})

    def record(self) -> dict[str, Any]:
        return self.recorded

    def epoch_of_lowest_frozen_auc(self) -> int:
        return min((row["val_frozen_auc"], row["epoch"]) for row in self.history)[1]


def test_tradeoff_results_hold_privacy_nets_training():
    payload = committed(COMMITTED[0], "tradeoff.json")
    pretraining = Training([{"epoch": 1}], 1, best_val_loss=0.002)
    adversarial = Training([{"epoch": 1}, {"epoch": 2}], 2, recorded={"ended_by": "early stopping"})
    tradeoff = tradeoff_results(payload["results"], protocol="the protocol",
                                privacy_net=SimpleNamespace(pretraining=pretraining, result=adversarial),
                                wall_time_s=12.5)
    written = tradeoff.to_json()
    assert written["privacy_net"] == {"pretraining_mse": 0.002, "pretraining": pretraining.recorded,
                                      "training": {"ended_by": "early stopping"}, "history": adversarial.history}
    assert written["protocol"] == "the protocol" and written["wall_time_s"] == 12.5
    assert set(written) == set(payload) - {"context"}


# -- notebook 02 -----------------------------------------------------------------------------------


def _adversarial(frozen_aucs: list[float], best_epoch: int) -> Training:
    history = [{"epoch": i + 1, "val_frozen_auc": auc} for i, auc in enumerate(frozen_aucs)]
    return Training(history, best_epoch, best_val_total=0.5 + best_epoch)


def test_prichexy_net_results_per_mu_and_expectations():
    config = load_profile("smoke").anonymization
    mus = [0.005, 0.01]
    runs = {0.005: _adversarial([0.9, 0.8, 0.85], 3), 0.01: _adversarial([0.9, 0.7, 0.75], 1)}
    diagnostic = _adversarial([0.8, 0.6], 2)
    prichexy = SimpleNamespace(anonymizers={mu: None for mu in mus}, results=runs,
                               pretraining=Training([{"epoch": 1}], 1, best_val_loss=1e-4),
                               frozen_adversaries=(None, diagnostic))
    jacobian = pd.DataFrame({mu_label(mu): {SMALLEST: 0.9 - mu, LOWER_BOUND: 0.5, WORST_FOUND: 0.7} for mu in mus}).T
    jacobian.loc[DIAGNOSTIC_ROW] = {SMALLEST: -0.1, LOWER_BOUND: 0.5, WORST_FOUND: 0.7}
    privacy = {"original": {"auc": 0.95, "auc_ci": (0.9, 0.99)}, mu_label(0.005): {"auc": 0.9, "auc_ci": (0.8, 0.95)},
               mu_label(0.01): {"auc": 0.7, "auc_ci": (0.6, 0.8)},
               f"{mu_label(max(config.mu_values))}, adversaries frozen": {"auc": 0.6, "auc_ci": (0.5, 0.7)}}
    utility = {label: {"mean_auc": auc, "ci": (auc - 0.05, auc + 0.05), "per_class": {"Mass": auc}, "excluded": []}
               for label, auc in (("original", 0.85), (mu_label(0.005), 0.84), (mu_label(0.01), 0.80))}
    counts = {"test_pairs": 40, "test_images": 30, "train_pairs": 100, "val_pairs": 20}
    results = prichexy_net_results(
        prichexy, config, image_size=32, jacobian=jacobian, privacy=privacy, utility=utility, steps_per_epoch=4,
        siamese_fit=Training([], 1), classifier_fit=Training([{"epoch": 1}], 1), counts=counts,
        frozen_val_auc_original=0.92, wall_time_s=3.0)
    first, largest = results.per_mu
    assert (first.mu, largest.mu) == (0.005, 0.01)
    assert (first.steps_run, first.steps_kept) == (12, 12) and (largest.steps_run, largest.steps_kept) == (12, 4)
    assert largest.frozen_val_auc_kept == 0.9 and largest.frozen_val_auc_lowest == 0.7
    assert largest.epoch_of_lowest_frozen_val_auc == 2
    assert largest.snn_auc_change == pytest.approx(-0.25)
    assert largest.classifier_auc_change == pytest.approx(-0.05)
    assert largest.max_displacement_sigma == pytest.approx(largest.max_displacement_px / config.smoothing_sigma)
    assert largest.min_jacobian_determinant == pytest.approx(0.89)
    expectations = results.expectations
    # the diagnostic's field folds (-0.1): that counts against "no field folds", not the per-mu rows
    assert not expectations.no_field_folds and expectations.no_generator_can_fold
    assert expectations.snn_auc_drop_at_largest_mu == pytest.approx(0.25)
    assert not expectations.classifier_within_3_points_at_largest_mu
    assert expectations.classifier_original_at_least_0_80
    written = results.to_json()
    assert written["diagnostic_frozen_adversaries"]["min_jacobian_determinant"] == -0.1
    assert written["diagnostic_frozen_adversaries"]["frozen_snn_auc"] == 0.6
    assert written["schedule"]["train_pairs"] == 100 and written["counts"] == counts
    assert canonical(PriCheXyNetResults.from_json(json.loads(canonical(written))).to_json()) == canonical(written)
    committed_keys = set(committed(COMMITTED[0], "prichexy_net.json")) - {"context"}
    assert set(written) == committed_keys
    assert set(written["per_mu"][0]) == set(committed(COMMITTED[0], "prichexy_net.json")["per_mu"][0])

    prichexy.frozen_adversaries = None
    with pytest.raises(ValueError, match="diagnostic"):
        prichexy_net_results(prichexy, config, image_size=32, jacobian=jacobian, privacy=privacy, utility=utility,
                             steps_per_epoch=4, siamese_fit=Training([], 1), classifier_fit=Training([], 1),
                             counts=counts, frozen_val_auc_original=0.92, wall_time_s=3.0)


# -- notebook 04 -----------------------------------------------------------------------------------


def test_synthesis_results_totals_and_quantiles():
    unet = SimpleNamespace(config=SimpleNamespace(latent_channels=4, sample_size=8))
    ldm = SimpleNamespace(model=SimpleNamespace(unet=unet, scaling_factor=0.7),
                          autoencoder_fit=Training([], 3, best_val_loss=0.1), unet_fit=Training([], 5, best_val_loss=0.2))
    panel = SimpleNamespace(to_json=lambda: {"worst_case": "w"})
    scores = np.linspace(0, 1, 101)
    aucs = {"real": 0.9, "real_on_reconstructed": 0.85, "reconstructed": 0.8, "synthetic": 0.6}
    decomposition = GapDecomposition(("Mass", "Nodule"), (SeedAUCs(0, {part: {"Mass": auc, "Nodule": auc - 0.1}
                                                                      for part, auc in aucs.items()},
                                                               {"Mass": 0.7, "Nodule": 0.5}),),
                                     test_images=10, real_training_images=50, synthetic_training_images=25,
                                     rendered_images=30)
    results = synthesis_results(
        ldm, reconstruction={"l1": 0.05}, thresholds=Thresholds(siamese=0.9, pixels=0.8, fpr=0.02),
        planted={"copies": {"caught": 1.0}}, sampler={"grid": {"drawn": 10, "rejected": 1},
                                                      "set": {"drawn": 30, "rejected": 3}},
        utility={"real": {"mean_auc": 0.8}}, synthetic_fit=Training([], 2), synthetic_training_images=25,
        real_training_images=50, frechet={"real": 1.5}, diversity={"real": {"Mass": 0.2, "Nodule": 0.4}},
        memorization={"synthetic": (scores, 1 - scores)}, memorization_panel=panel,
        gap_decomposition=decomposition, wall_seconds=7.0)
    written = results.to_json()
    assert written["latent_shape"] == [4, 8, 8] and written["scaling_factor"] == 0.7
    assert written["sampler"]["drawn"] == 40 and written["sampler"]["rejected"] == 4
    assert written["sampler"]["rejection_rate"] == pytest.approx(0.1)
    assert written["thresholds"] == {"siamese": 0.9, "pixels": 0.8, "fpr": 0.02}
    assert written["diversity_ms_ssim"]["mean"] == {"real": pytest.approx(0.3)}
    assert written["memorization"]["synthetic"]["siamese_score"] == pytest.approx({"q5": 0.05, "q50": 0.5, "q95": 0.95})
    assert written["memorization_panel"] == {"worst_case": "w"}
    assert written["synthetic_classifier"] == {"training": Training([], 2).recorded, "training_images": 25}
    gaps = written["gap_decomposition"]["summary"]["gap_points"]
    assert gaps["autoencoder_in_training"]["mean"] == pytest.approx(10) and gaps["generator"]["mean"] == pytest.approx(20)
    assert GapDecomposition.from_json(written["gap_decomposition"]["decomposition"]) == decomposition
    assert set(written) == set(committed(COMMITTED[0], "synthesis.json")) - {"context"}


# -- notebook 01 -----------------------------------------------------------------------------------


def test_reidentification_results_from_what_notebook_01_measured():
    payload = committed(COMMITTED[0], "reidentification.json")
    panel = LinkagePanel.from_json(payload["attack_panel"])
    siamese = Training([{"epoch": 1, "train_seconds": 2.0}, {"epoch": 2, "train_seconds": 3.0}], 2)
    cues = {"raw_pixels": {"verification": {"auc": 0.8, "roc": [[0, 1], [0, 1]]}, "retrieval": {"precision_at_1": 0.5}}}
    gaps = pd.DataFrame({"bin": ["0-1"], "auc": [0.9], "high": [math.inf]})
    arguments = dict(verification={"auc": 0.95, "auc_ci": [0.9, 0.99]}, verification_runs={"runs": []},
                     retrieval={"precision_at_1": 0.9}, retrieval_fits=[Training([], 1), Training([], 2)], cues=cues,
                     panel=panel, text_boxes=None, linkage_hits={"queries": 10, "rank_1": 0.5},
                     shown_queries=("a.png",), auc_by_age_gap=gaps, auc_by_followup_gap=gaps,
                     published={"verification AUC": 0.994}, siamese_fit=siamese, siamese_training_pairs=100,
                     wall_seconds=9.0)
    written = reidentification_results(**arguments).to_json()
    assert written["verification_ci"] == [0.9, 0.99]
    assert written["identity_cues"] == {"raw_pixels": {"verification": {"auc": 0.8},
                                                       "retrieval": {"precision_at_1": 0.5}}}
    assert written["linkage_attack"]["shown_queries"] == ["a.png"] and written["linkage_attack"]["rank_1"] == 0.5
    assert written["auc_by_age_gap"] == [{"bin": "0-1", "auc": 0.9, "high": math.inf}]
    # 100 pairs for 2 epochs in 5 s
    assert written["siamese_training_pairs_per_second"] == pytest.approx(40.0)
    assert canonical(written["attack_panel"]) == canonical(payload["attack_panel"])
    assert set(written) == set(payload) - {"context"}
    # a loaded network: no training speed
    siamese.trained = False
    assert reidentification_results(**arguments).siamese_training_pairs_per_second is None


# -- notebook 05 -----------------------------------------------------------------------------------


def _audit(against: bool) -> dict[str, Any]:
    result = {"images": 12, "retrieval": {"precision_at_1": 0.75, "map_at_r": 0.5}, "patients_relinked": 0.8,
              "roc": {"auc": 0.9}, "headers": {"table_e1_1_present": {"PatientName": 12, "PatientID": 12},
                                               "files_with_private_tags": 12},
              "burned_in_text": {"images_with_text": 3}}
    if against:
        result["against"] = {"top1": 0.95}
    return result


def test_audit_summary_rows_keep_the_table_names():
    published = committed(COMMITTED[0], "publishing.json")["audits"]
    raw, release = AuditSummary.of(_audit(False)).row(), AuditSummary.of(_audit(True)).row()
    assert set(raw) == set(published["raw"]) and set(release) == set(published["prichexy"])
    assert raw["Table E.1-1 attributes present"] == 2 and raw["P@1"] == 0.75
    assert release["linked to the raw export (top-1)"] == 0.95
    assert AuditSummary.from_row(release) == AuditSummary.of(_audit(True))


def test_release_utility_row_gives_its_ci_to_three_decimals():
    utility = ReleaseUtility(0.81234, (0.7612, 0.8543), 0.96, 20.9)
    assert utility.row() == {"classifier mean AUC": 0.81234, "95 % CI": "0.761-0.854", "SSIM": 0.96, "PSNR dB": 20.9}
    assert ReleaseUtility.from_row(utility.row()).row() == utility.row()
    published = committed(COMMITTED[0], "publishing.json")["utility"]
    assert all(set(row) == set(utility.row()) for row in published.values())
