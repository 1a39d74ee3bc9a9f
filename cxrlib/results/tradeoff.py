"""Notebook 03's results (``tradeoff.json``): every anonymizer's evaluation
(:func:`cxrlib.evaluate.evaluate_anonymizers`), what they say about PriCheXy-Net against no anonymization
and the baselines, and Privacy-Net's training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from cxrlib.anonymize.privacy_net import PrivacyNet
from cxrlib.artifacts import MetricsFile
from cxrlib.evaluate import ATTACK_DROP_AT_LEAST, UTILITY_LOSS_AT_MOST, results_table

#: the methods PriCheXy-Net is compared with
BASELINES = ("privacy_net", "dp_pix")


@dataclasses.dataclass(frozen=True)
class TradeoffExpectations:
    """The papers' claims for PriCheXy-Net and the baselines, and whether this run bears them out."""

    prichexy_attack_drop_at_least_15_points: bool
    prichexy_utility_loss_at_most_3_points: bool
    every_attacker_stopped_early: bool
    baselines_lose_more_utility: bool


@dataclasses.dataclass(frozen=True)
class TradeoffSummary:
    """PriCheXy-Net at its largest mu and the baselines, each against no anonymization (drops and losses
    are the identity's figure minus the method's), and the re-trained attackers' stopping."""

    identity_attack_auc: float
    identity_utility_auc: float
    prichexy_largest_mu: float
    prichexy_attack_auc_drop: float
    prichexy_utility_loss: float
    #: by the baseline's label
    baseline_utility_loss: dict[str, float]
    baseline_attack_auc_drop: dict[str, float]
    attackers_stopped_early: int
    attackers: int
    prichexy_worst_case_auc_drop: float
    #: per anonymizer's label: the attack panel's worst case (AUC, P@1 and their attacks, P@1's chance)
    worst_case: dict[str, dict[str, Any]]
    expectations: TradeoffExpectations


def tradeoff_summary(results: Sequence[Mapping[str, Any]]) -> TradeoffSummary:
    """:class:`TradeoffSummary` of :func:`~cxrlib.evaluate.evaluate_anonymizers`' results, which hold no
    anonymization (``identity``), PriCheXy-Net (``flow_field``) at one or more mu, and the baselines."""
    methods = [r["method"] for r in results]
    if "identity" not in methods or "flow_field" not in methods:
        raise ValueError("the tradeoff needs results of no anonymization and of PriCheXy-Net")
    numbers = results_table(results)
    identity = numbers[numbers["method"] == "identity"].iloc[0]
    flow_rows = [i for i, method in enumerate(methods) if method == "flow_field"]
    largest = max(flow_rows, key=lambda i: results[i]["params"]["mu"])
    strongest = numbers.iloc[largest]
    baselines = numbers[numbers["method"].isin(BASELINES)]
    stopped = [run["ended_by"] == "early stopping" for r in results for run in r["privacy"]["attack_runs"]]
    utility_loss = identity["utility_auc"] - strongest["utility_auc"]
    attack_drop = identity["attack_auc"] - strongest["attack_auc"]
    return TradeoffSummary(
        identity_attack_auc=identity["attack_auc"], identity_utility_auc=identity["utility_auc"],
        prichexy_largest_mu=results[largest]["params"]["mu"],
        prichexy_attack_auc_drop=attack_drop, prichexy_utility_loss=utility_loss,
        baseline_utility_loss=dict(zip(baselines["label"], identity["utility_auc"] - baselines["utility_auc"])),
        baseline_attack_auc_drop=dict(zip(baselines["label"], identity["attack_auc"] - baselines["attack_auc"])),
        attackers_stopped_early=int(sum(stopped)), attackers=len(stopped),
        prichexy_worst_case_auc_drop=identity["worst_auc"] - strongest["worst_auc"],
        worst_case={row.label: {"auc": row.worst_auc, "auc_attack": row.worst_auc_attack,
                                "precision_at_1": row.worst_p1, "precision_at_1_attack": row.worst_p1_attack,
                                "chance": row.p1_chance} for row in numbers.itertuples()},
        expectations=TradeoffExpectations(
            prichexy_attack_drop_at_least_15_points=attack_drop >= ATTACK_DROP_AT_LEAST,
            prichexy_utility_loss_at_most_3_points=utility_loss <= UTILITY_LOSS_AT_MOST,
            every_attacker_stopped_early=all(stopped),
            baselines_lose_more_utility=bool((identity["utility_auc"] - baselines["utility_auc"] > utility_loss).all())))


@dataclasses.dataclass(frozen=True)
class TradeoffResults(MetricsFile):
    """``tradeoff.json`` (without its context): the protocol, every anonymizer's evaluation, their summary,
    Privacy-Net's training."""

    protocol: str
    results: list[dict[str, Any]]
    summary: TradeoffSummary
    privacy_net: dict[str, Any]
    wall_time_s: float

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "TradeoffResults":
        """From ``tradeoff.json`` as read (its ``context`` left out)."""
        summary = dict(payload["summary"])
        summary["expectations"] = TradeoffExpectations(**summary["expectations"])
        return cls(protocol=payload["protocol"], results=payload["results"], summary=TradeoffSummary(**summary),
                   privacy_net=payload["privacy_net"], wall_time_s=payload["wall_time_s"])


def tradeoff_results(results: Sequence[Mapping[str, Any]], *, protocol: str, privacy_net: PrivacyNet,
                     wall_time_s: float) -> TradeoffResults:
    """Notebook 03's results: ``results`` of :func:`~cxrlib.evaluate.evaluate_anonymizers` under
    ``protocol`` (:meth:`~cxrlib.evaluate.EvaluationSetup.protocol`), summarised by :func:`tradeoff_summary`,
    with Privacy-Net's pretraining and adversarial training (:func:`~cxrlib.anonymize.privacy_net.train_privacy_net`)."""
    return TradeoffResults(
        protocol=protocol, results=list(results), summary=tradeoff_summary(results),
        privacy_net={"pretraining_mse": privacy_net.pretraining.best_val_loss,
                     "pretraining": privacy_net.pretraining.record(), "training": privacy_net.result.record(),
                     "history": privacy_net.result.history},
        wall_time_s=wall_time_s)
