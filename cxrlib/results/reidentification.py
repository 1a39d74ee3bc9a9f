"""Notebook 01's results (``reidentification.json``): how well the siamese network, the retrieval network and
the training-free cues recognise a patient, the attack panel's worst case, and the linkage attack."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cxrlib.artifacts import MetricsFile
from cxrlib.linkage import LinkagePanel

#: how the linkage attack ranks the gallery
RANKED_BY = "retrieval embedding (L2-normalized, Euclidean)"


@dataclasses.dataclass(frozen=True)
class ReidentificationResults(MetricsFile):
    """``reidentification.json`` (without its context); the fields are its keys."""

    #: :func:`cxrlib.metrics.verification_metrics` of the siamese network on the test pairs
    verification: dict[str, Any]
    verification_ci: Any
    #: :func:`cxrlib.reid.verification_runs`: the siamese network trained with several seeds
    verification_runs: dict[str, Any]
    retrieval: dict[str, Any]
    retrieval_training: list[dict[str, Any]]
    #: every cue on the same pairs and images, without its ROC curve (the figure shows it)
    identity_cues: dict[str, Any]
    attack_panel: dict[str, Any]
    #: the siamese network with the test images' burned-in text blacked out; None without text boxes
    text_boxes: dict[str, Any] | None
    linkage_attack: dict[str, Any]
    auc_by_age_gap: list[dict[str, Any]]
    auc_by_followup_gap: list[dict[str, Any]]
    published: dict[str, Any]
    #: None when the siamese network was loaded, not trained
    siamese_training_pairs_per_second: float | None
    wall_seconds: float



def reidentification_results(*, verification: Mapping[str, Any], verification_runs: Mapping[str, Any],
                             retrieval: Mapping[str, Any], retrieval_fits: Sequence[Any],
                             cues: Mapping[str, Mapping[str, Any]], panel: LinkagePanel,
                             text_boxes: Mapping[str, Any] | None, linkage_hits: Mapping[str, Any],
                             shown_queries: Sequence[str], auc_by_age_gap: pd.DataFrame,
                             auc_by_followup_gap: pd.DataFrame, published: Mapping[str, Any], siamese_fit: Any,
                             siamese_training_pairs: int, wall_seconds: float) -> ReidentificationResults:
    """Notebook 01's results from what it measured: the siamese network's ``verification`` figures and
    its runs over seeds, the retrieval network's figures and trainings (``retrieval_fits``), every identity
    cue (:func:`cxrlib.reid.identity_cues`), the attack ``panel``, the effect of blacking out burned-in text,
    the linkage attack's hit rates (:func:`cxrlib.reid.linkage_hit_rates`) and the queries shown, the AUC by
    age and follow-up gap (:func:`cxrlib.reid.auc_by_gap`), the published figures, and the siamese network's
    training (``siamese_fit``, a :class:`cxrlib.train.FitResult`, on ``siamese_training_pairs`` pairs)."""
    trained_seconds = sum(h["train_seconds"] for h in siamese_fit.history) if siamese_fit.trained else None
    epochs = len(siamese_fit.history)
    return ReidentificationResults(
        verification=dict(verification), verification_ci=verification["auc_ci"],
        verification_runs=dict(verification_runs), retrieval=dict(retrieval),
        retrieval_training=[fit.record() for fit in retrieval_fits],
        identity_cues={kind: {"verification": {k: v for k, v in cue["verification"].items() if k != "roc"},
                              "retrieval": cue["retrieval"]} for kind, cue in cues.items()},
        attack_panel=panel.to_json(),
        text_boxes=None if text_boxes is None else dict(text_boxes),
        linkage_attack={"ranked_by": RANKED_BY, **linkage_hits, "shown_queries": list(shown_queries)},
        auc_by_age_gap=auc_by_age_gap.to_dict("records"),
        auc_by_followup_gap=auc_by_followup_gap.to_dict("records"),
        published=dict(published),
        siamese_training_pairs_per_second=(siamese_training_pairs * epochs / trained_seconds) if trained_seconds else None,
        wall_seconds=wall_seconds)
