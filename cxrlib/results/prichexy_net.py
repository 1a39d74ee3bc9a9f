"""Notebook 02's results (``prichexy_net.json``): PriCheXy-Net per mu against the frozen networks of
notebooks 01 and 02, the geometry of its deformation, its training, and the frozen-adversaries diagnostic."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd

from cxrlib.anonymize.flow_field import PriCheXyNet, displacement_bound_pixels
from cxrlib.artifacts import MetricsFile
from cxrlib.config import AnonymizationConfig
from cxrlib.evaluate import CLASSIFIER_AT_LEAST, UTILITY_LOSS_AT_MOST

PROTOCOL = ("frozen siamese network (notebook 01) on test pairs (anonymized img1, real img2); frozen "
            "classifier on anonymized test images; images anonymized once and stored as 8-bit")
GEOMETRY = ("the paper's displacement and smoothing in pixels: at most mu * 255 / 2 px, kernel 9, sigma 2 px, "
            "at every image size")
#: the rows and columns of notebook 02's Jacobian table that the results read
SMALLEST, LOWER_BOUND, WORST_FOUND = "smallest Jacobian determinant", "lower bound, any generator", "worst found by search"
DIAGNOSTIC_ROW = "diagnostic (adversaries frozen)"


def mu_label(mu: float) -> str:
    """How notebook 02's tables and dicts name a mu: ``"mu = 0.01"``."""
    return f"mu = {mu:g}"


@dataclasses.dataclass(frozen=True)
class MuResult:
    """One mu: its geometry, its anonymizer against the frozen siamese network and classifier, its training."""

    mu: float
    max_displacement_px: float
    max_displacement_sigma: float
    min_jacobian_determinant: float
    jacobian_lower_bound: float
    worst_case_jacobian_found: float
    frozen_snn_auc: float
    frozen_snn_auc_ci: Any
    classifier_mean_auc: float
    classifier_ci: Any
    classifier_per_class: dict[str, Any]
    #: anonymized minus original
    classifier_auc_change: float
    snn_auc_change: float
    #: :meth:`AdversarialResult.record`
    training: dict[str, Any]
    steps_per_epoch: int
    steps_run: int
    steps_kept: int
    best_val_total: float
    history: list[dict[str, Any]]
    epoch_of_lowest_frozen_val_auc: int
    frozen_val_auc_kept: float
    frozen_val_auc_lowest: float


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What notebook 02 expects of the largest mu, and whether this run bears it out."""

    no_field_folds: bool
    no_generator_can_fold: bool
    snn_auc_drop_at_largest_mu: float
    classifier_within_3_points_at_largest_mu: bool
    classifier_original_at_least_0_80: bool


@dataclasses.dataclass(frozen=True)
class PriCheXyNetResults(MetricsFile):
    """``prichexy_net.json`` (without its context); the fields are its keys."""

    image_size: int
    smoothing: dict[str, Any]
    siamese: dict[str, Any]
    classifier: dict[str, Any]
    pretraining: dict[str, Any]
    per_mu: list[MuResult]
    counts: dict[str, int]
    protocol: str
    geometry: str
    schedule: dict[str, Any]
    frozen_val_auc_original: float
    diagnostic_frozen_adversaries: dict[str, Any]
    expectations: Expectations
    wall_time_s: float

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "PriCheXyNetResults":
        """From ``prichexy_net.json`` as read (its ``context`` left out)."""
        values = {f.name: payload[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "per_mu": [MuResult(**row) for row in payload["per_mu"]],
                      "expectations": Expectations(**payload["expectations"])})


def prichexy_net_results(prichexy: PriCheXyNet, config: AnonymizationConfig, *, image_size: int,
                         jacobian: pd.DataFrame, privacy: Mapping[str, Mapping[str, Any]],
                         utility: Mapping[str, Mapping[str, Any]], steps_per_epoch: int, siamese_fit: Any,
                         classifier_fit: Any, counts: Mapping[str, int], frozen_val_auc_original: float,
                         wall_time_s: float) -> PriCheXyNetResults:
    """Notebook 02's results from what it measured.

    ``prichexy`` is :func:`~cxrlib.anonymize.flow_field.train_prichexy_net`'s outcome, with its
    frozen-adversaries diagnostic. ``jacobian`` is the notebook's table: a row per :func:`mu_label` and
    :data:`DIAGNOSTIC_ROW`, columns :data:`SMALLEST`, :data:`LOWER_BOUND`, :data:`WORST_FOUND`.
    ``privacy`` holds :func:`~cxrlib.evaluate.frozen_linkage`'s figures and ``utility``
    :func:`~cxrlib.evaluate.classifier_utility`'s, each by ``"original"``, by :func:`mu_label` and (privacy)
    by the diagnostic's label. ``siamese_fit`` and ``classifier_fit`` are the judges' trainings
    (:class:`cxrlib.train.FitResult`); ``counts`` the test pairs, test images, training and validation pairs.
    """
    if prichexy.frozen_adversaries is None:
        raise ValueError("notebook 02's results need the frozen-adversaries diagnostic "
                         "(train_prichexy_net(..., frozen_adversaries_diagnostic=True))")
    original_utility, original_privacy = utility["original"], privacy["original"]
    per_mu = []
    for mu in prichexy.anonymizers:
        key, result = mu_label(mu), prichexy.results[mu]
        per_mu.append(MuResult(
            mu=mu, max_displacement_px=displacement_bound_pixels(mu),
            max_displacement_sigma=displacement_bound_pixels(mu) / config.smoothing_sigma,
            min_jacobian_determinant=float(jacobian.loc[key, SMALLEST]),
            jacobian_lower_bound=float(jacobian.loc[key, LOWER_BOUND]),
            worst_case_jacobian_found=float(jacobian.loc[key, WORST_FOUND]),
            frozen_snn_auc=privacy[key]["auc"], frozen_snn_auc_ci=privacy[key]["auc_ci"],
            classifier_mean_auc=utility[key]["mean_auc"], classifier_ci=utility[key]["ci"],
            classifier_per_class=utility[key]["per_class"],
            classifier_auc_change=utility[key]["mean_auc"] - original_utility["mean_auc"],
            snn_auc_change=privacy[key]["auc"] - original_privacy["auc"],
            training=result.record(), steps_per_epoch=steps_per_epoch,
            steps_run=len(result.history) * steps_per_epoch, steps_kept=result.best_epoch * steps_per_epoch,
            best_val_total=result.best_val_total, history=result.history,
            epoch_of_lowest_frozen_val_auc=result.epoch_of_lowest_frozen_auc(),
            frozen_val_auc_kept=result.history[result.best_epoch - 1]["val_frozen_auc"],
            frozen_val_auc_lowest=min(row["val_frozen_auc"] for row in result.history)))
    strongest = max(per_mu, key=lambda row: row.mu)
    largest_mu = max(config.mu_values)
    diagnostic_label = f"{mu_label(largest_mu)}, adversaries frozen"
    diagnostic = prichexy.frozen_adversaries[1]
    return PriCheXyNetResults(
        image_size=image_size, smoothing={"kernel": config.smoothing_kernel, "sigma": config.smoothing_sigma},
        siamese={"checkpoint": siamese_fit.checkpoint_path.name, "auc_original": original_privacy["auc"],
                 "auc_original_ci": original_privacy["auc_ci"]},
        classifier={"checkpoint": classifier_fit.checkpoint_path.name, "mean_auc": original_utility["mean_auc"],
                    "ci": original_utility["ci"], "per_class": original_utility["per_class"],
                    "excluded": original_utility["excluded"], "training": classifier_fit.record(),
                    "history": classifier_fit.history},
        pretraining={"training": prichexy.pretraining.record(), "best_val_mse": prichexy.pretraining.best_val_loss},
        per_mu=per_mu, counts=dict(counts), protocol=PROTOCOL, geometry=GEOMETRY,
        schedule={"epochs": config.adversarial_epochs, "patience": config.adversarial_patience,
                  "pairs_per_epoch": config.pairs_per_epoch, "train_pairs": counts["train_pairs"],
                  "steps_per_epoch": steps_per_epoch, "generator_lr": config.lr, "siamese_lr": config.siamese_lr,
                  "classifier_lr": config.classifier_lr, "selection": "lowest validation total (official)"},
        frozen_val_auc_original=frozen_val_auc_original,
        diagnostic_frozen_adversaries={
            "mu": largest_mu, "history": diagnostic.history, "kept_epoch": diagnostic.best_epoch,
            "frozen_val_auc_kept": diagnostic.history[diagnostic.best_epoch - 1]["val_frozen_auc"],
            "frozen_val_auc_lowest": min(row["val_frozen_auc"] for row in diagnostic.history),
            "frozen_snn_auc": privacy[diagnostic_label]["auc"],
            "frozen_snn_auc_ci": privacy[diagnostic_label]["auc_ci"],
            "min_jacobian_determinant": float(jacobian.loc[DIAGNOSTIC_ROW, SMALLEST])},
        expectations=Expectations(
            no_field_folds=all(row.min_jacobian_determinant > 0 for row in per_mu)
            and float(jacobian[SMALLEST].min()) > 0,
            no_generator_can_fold=all(row.jacobian_lower_bound > 0 for row in per_mu),
            snn_auc_drop_at_largest_mu=-strongest.snn_auc_change,
            classifier_within_3_points_at_largest_mu=abs(strongest.classifier_auc_change) <= UTILITY_LOSS_AT_MOST,
            classifier_original_at_least_0_80=original_utility["mean_auc"] >= CLASSIFIER_AT_LEAST),
        wall_time_s=wall_time_s)
