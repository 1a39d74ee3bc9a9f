"""What identifies a patient: the training-free attacks of :mod:`cxrlib.attacks` beside the trained networks
on the same pairs (:func:`identity_cues`), and identity across the years between two scans
(:func:`auc_by_gap`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrlib.attacks import TRAINING_FREE_ATTACKS, attack_features, distance_pair_scores
from cxrlib.data.images import Images
from cxrlib.metrics import retrieval_metrics, verification_metrics
from cxrlib.models.retrieval import RetrievalNetwork
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.reid.retrieval import normalized, retrieval_embeddings
from cxrlib.reid.verification import pair_scores


#: the training-free attacks :func:`identity_cues` runs beside the networks, weakest first
TRAINING_FREE_BASELINES = ("mean_sd", "histogram", "block_means_8", "raw_pixels")


#: the cues of :func:`identity_cues`, in the order tables and figures show them
IDENTITY_CUES = {**{kind: TRAINING_FREE_ATTACKS[kind] for kind in TRAINING_FREE_BASELINES},
                 "siamese": "siamese network", "retrieval": "retrieval network"}


def identity_cues(images: Images, pairs: pd.DataFrame, patient_ids: Sequence[int], *,
                  siamese: SiameseNetwork | None = None, retrieval: RetrievalNetwork | None = None,
                  n_bootstrap: int = 0, seed: int = 0) -> dict[str, dict]:
    """What identifies a patient and what does not, on the same held-out ``pairs`` and ``images``.

    Per cue of :data:`IDENTITY_CUES` (the trained networks only when given): ``verification`` (the
    :func:`~cxrlib.metrics.verification_metrics` of its pair scores, ROC included) and ``retrieval``
    (mAP@R, R-precision, P@1 of every image against all others; None for the siamese network, which
    scores pairs rather than embedding images). The retrieval network verifies a pair by the distance
    of its L2-normalized embeddings, the distance its retrieval metrics rank by.
    """
    ids = np.asarray(patient_ids)
    descriptors = {kind: attack_features(images, kind) for kind in TRAINING_FREE_BASELINES}
    if retrieval is not None:
        descriptors["retrieval"] = normalized(retrieval_embeddings(retrieval, images))
    scores = {kind: distance_pair_scores(features, images, pairs) for kind, features in descriptors.items()}
    if siamese is not None:
        scores["siamese"] = pair_scores(siamese, images, pairs)
    cues = {}
    for kind in IDENTITY_CUES:
        if kind not in scores:
            continue
        cues[kind] = {
            "verification": verification_metrics(pairs["label"], scores[kind], n_bootstrap=n_bootstrap,
                                                 seed=seed),
            # the descriptors are compared as they are (the retrieval embeddings were normalized above)
            "retrieval": (retrieval_metrics(descriptors[kind], ids, normalize=False)
                          if kind in descriptors else None),
        }
    return cues


def pair_gaps(pairs: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with ``age_gap`` (years) and ``followup_gap`` between the two scans."""
    info = meta.set_index("image")[["age", "follow_up"]]
    missing = sorted((set(pairs["img1"]) | set(pairs["img2"])) - set(info.index))
    if missing:
        raise KeyError(f"{len(missing)} paired image(s) are not in the metadata, e.g. {missing[:3]}")
    a, b = info.loc[pairs["img1"]].to_numpy(), info.loc[pairs["img2"]].to_numpy()
    return pairs.assign(age_gap=np.abs(a[:, 0] - b[:, 0]), followup_gap=np.abs(a[:, 1] - b[:, 1]))


AGE_GAP_BINS = (0, 1, 3, 5, 10, math.inf)


def auc_by_gap(pairs: pd.DataFrame, scores: np.ndarray, meta: pd.DataFrame, *, by: str = "age_gap",
               bins: Sequence[float] = AGE_GAP_BINS, n_bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """Verification AUC of the same-patient pairs whose scans lie ``bins`` apart, each bin against all
    different-patient pairs. ``by``: ``age_gap`` (years) or ``followup_gap`` (follow-up numbers).

    Rows: bin (label), low, high, positives, auc, auc_low, auc_high (NaN for a bin without pairs).
    """
    if by not in ("age_gap", "followup_gap"):
        raise ValueError(f"by must be 'age_gap' or 'followup_gap', got {by!r}")
    gaps = pair_gaps(pairs, meta)
    scores = np.asarray(scores)
    positive = gaps["label"].to_numpy() == 1
    negative_scores = scores[~positive]
    if not negative_scores.size or not positive.any():
        raise ValueError("AUC by gap needs both same-patient and different-patient pairs")
    rows = []
    for low, high in zip(bins[:-1], bins[1:]):
        in_bin = positive & (gaps[by].to_numpy() >= low) & (gaps[by].to_numpy() < high)
        label = f"{low:g}-{high:g}" if math.isfinite(high) else f"≥{low:g}"
        row = {"bin": label, "low": low, "high": high, "positives": int(in_bin.sum()),
               "auc": math.nan, "auc_low": math.nan, "auc_high": math.nan}
        if in_bin.any():
            y = np.r_[np.ones(in_bin.sum(), int), np.zeros(len(negative_scores), int)]
            s = np.r_[scores[in_bin], negative_scores]
            m = verification_metrics(y, s, n_bootstrap=n_bootstrap, seed=seed)
            row.update(auc=m["auc"], auc_low=m.get("auc_ci", [math.nan] * 2)[0],
                       auc_high=m.get("auc_ci", [math.nan] * 2)[1])
        rows.append(row)
    return pd.DataFrame(rows)
