"""Is the phantom's anatomy like real anatomy? A transfer test on real radiographs.

The profile's siamese network, retrieval network and 14-finding classifier are trained on the real
ChestX-ray14 sample (``data/chestxray14-sample``: 1,000 radiographs of 264 patients) in two ways on every
fold: **scratch**, from random weights, and **phantom**, starting from the weights the same network learnt
on the phantom (notebook 01's models, ``cxrlib train classifier``), fine-tuned with the same recipe and the
same budget. What a network learnt on the phantom carries over to real patients only as far as the
phantom's anatomy (and acquisition) resembles real ones: the phantom start beating the scratch start on
held-out real patients says it does; no gain, or a loss, says it does not (or that the sample is too small
to tell, which the confidence intervals show).

The protocol (:func:`transfer_test`):

* ``k`` folds by patient over the whole sample (:func:`patient_folds`; seeded, as equal in images as whole
  patients allow), since the official test part holds only 15 patients. Each fold's training patients give
  a validation part (the profile's ``val_fraction``, patients with and without several images alike) for
  early stopping; its held-out patients are tested.
* Every network keeps its profile section's recipe (:func:`cxrlib.reid.train_verification`,
  :func:`cxrlib.reid.train_retrieval`, :func:`cxrlib.classify.train_classifier`, all through
  :func:`cxrlib.train.fit`); the profile's ``transfer`` section caps epochs (and the siamese network's
  training pairs) so that the whole test fits its budget. Both starts of a fold use the same seed, data
  and pairs: the comparison is paired.
* Figures on held-out patients: verification AUC on balanced same/different-patient pairs among them
  (:func:`cxrlib.data.pairs.make_pairs`); retrieval precision at 1 and mAP@R, every held-out image queried
  against the fold's other held-out images, beside what a random ranking scores (chance); the classifier's
  mean AUC over the findings present in the fold (:func:`cxrlib.metrics.multilabel_auc`).
* Pooled figures with bootstrap 95 % CIs over **patients** (:mod:`cxrlib.metrics`'s patient bootstraps):
  a retrieval query's precision is a rank within its own fold's gallery, comparable across folds, so the
  queries of all folds are pooled and resampled by patient (the galleries fixed). AUCs are not pooled: the
  scores of different folds come from different networks, whose scales need not agree, so the pooled
  AUC is the mean of the folds' AUCs, and the bootstrap resamples each fold's patients and averages the
  folds' resampled AUCs. The gain of the phantom start (phantom minus scratch) gets its CI from the same
  resamples.

The phantom start hands its weights to the training functions (``initial_weights``), which fine-tune
them with their own recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrlib import classify, reid
from cxrlib.artifacts import tensor_digest, write_json
from cxrlib.config import DRY_RUN_BATCH, Profile
from cxrlib.data.cache import prepare_cache
from cxrlib.data.chestxray14 import find_metadata_file, read_metadata, split_patients
from cxrlib.data.datasets import ImageDataset, PairDataset
from cxrlib.data.images import Images
from cxrlib.data.pairs import make_pairs, max_positive_pairs
from cxrlib.metrics import (multilabel_auc, patient_bootstrap_auc, patient_bootstrap_mean,
                            patient_bootstrap_mean_auc, percentile_ci, retrieval_metrics, verification_metrics)

#: the networks tested, in the order tables and figures show them
NETWORKS = ("verification", "retrieval", "classifier")
#: the two starts: random weights, and the weights the network learnt on the phantom
STARTS = ("scratch", "phantom")
#: each network's pooled figures (the chance levels are a random ranking's, for retrieval)
METRICS = {"verification": ("auc",),
           "retrieval": ("precision_at_1", "map_at_r", "chance_precision_at_1", "chance_map_at_r"),
           "classifier": ("mean_auc",)}
#: how tables and figures name them
LABELS = {"verification": "siamese network", "retrieval": "retrieval network", "classifier": "classifier",
          "auc": "verification AUC", "precision_at_1": "retrieval P@1", "map_at_r": "retrieval mAP@R",
          "chance_precision_at_1": "P@1 of a random ranking", "chance_map_at_r": "mAP@R of a random ranking",
          "mean_auc": "mean AUC over findings", "scratch": "from scratch", "phantom": "phantom-pretrained",
          "test_pairs": "test pairs", "queries": "queries", "findings": "findings present"}

#: the profile section of each network
_SECTIONS = {"verification": "verification", "retrieval": "retrieval", "classifier": "classifier"}


# -- folds -----------------------------------------------------------------------------------------


def patient_folds(meta: pd.DataFrame, k: int, seed: int) -> list[np.ndarray]:
    """``k`` patient-disjoint folds (sorted patient ids) that together hold every patient of ``meta``,
    as equal in images as whole patients allow: patients in a seeded random order, those with the most
    images first, each to the fold with the fewest images so far (then the fewest patients)."""
    counts = meta.groupby("patient_id").size()
    if k < 2:
        raise ValueError(f"a k-fold test needs k >= 2, got {k}")
    if len(counts) < k:
        raise ValueError(f"{len(counts)} patients cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(counts))
    ids, sizes = counts.index.to_numpy()[order], counts.to_numpy()[order]
    images, members = [0] * k, [[] for _ in range(k)]
    for i in np.argsort(-sizes, kind="stable"):
        fold = min(range(k), key=lambda j: (images[j], len(members[j]), j))
        members[fold].append(int(ids[i]))
        images[fold] += int(sizes[i])
    return [np.sort(np.asarray(m, dtype=np.int64)) for m in members]


@dataclasses.dataclass(frozen=True)
class FoldSplit:
    """One fold: its training and validation patients (from the other folds) and its held-out ones."""

    fold: int
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def fold_splits(meta: pd.DataFrame, k: int, seed: int, val_fraction: float, max_images: int = 0) -> list[FoldSplit]:
    """The ``k`` folds of :func:`patient_folds`, each with a validation part of ``val_fraction`` of its
    training patients, drawn (seeded) separately among patients with several images and those with one,
    so that validation always has same-patient pairs. ``max_images`` (a dry run's cap, 0: none) keeps
    about that many images per part: whole patients, those with the fewest images but two first."""
    splits = []
    for fold, held in enumerate(patient_folds(meta, k, seed)):
        test = meta[meta["patient_id"].isin(held)]
        rest = meta[~meta["patient_id"].isin(held)]
        counts = rest.groupby("patient_id").size()
        val_patients = []
        for group in (counts.index[counts >= 2], counts.index[counts < 2]):
            if len(group) >= 2:
                val_patients.append(split_patients(group.to_numpy(), val_fraction, seed + 1 + fold)[1])
        val_ids = np.concatenate(val_patients) if val_patients else np.empty(0, np.int64)
        parts = [rest[~rest["patient_id"].isin(val_ids)], rest[rest["patient_id"].isin(val_ids)], test]
        if max_images:
            parts = [_fewest_images_but_two_first(part, max_images) for part in parts]
        splits.append(FoldSplit(fold, *(part.reset_index(drop=True) for part in parts)))
    return splits


def _fewest_images_but_two_first(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Whole patients up to ``limit`` images (at least two patients), those with two or more images
    first (pairs and retrieval need them), the fewest images first (so the cap holds)."""
    sizes = frame.groupby("patient_id").size()
    sizes = sizes.iloc[np.lexsort((sizes.index.to_numpy(), sizes.to_numpy(), sizes.to_numpy() < 2))]
    kept = sizes.index[: max(2, int((sizes.cumsum() <= limit).sum()))]
    return frame[frame["patient_id"].isin(kept)]


# -- starting from pretrained weights --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainedModels:
    """The networks the phantom start begins from (any may be None: that network's phantom start is
    skipped), and where they were trained (e.g. the phantom workspace's data description)."""

    verification: nn.Module | None = None
    retrieval: nn.Module | None = None
    classifier: nn.Module | None = None
    source: str = ""

    def weights(self, network: str) -> dict[str, torch.Tensor] | None:
        model = getattr(self, network)
        if model is None:
            return None
        return {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """Short hash of a state dict (names, dtypes, shapes, values): keys what a fine-tuned model began from."""
    digest = hashlib.sha256(json.dumps(sorted(weights)).encode())
    digest.update(tensor_digest(*(weights[name] for name in sorted(weights))).encode())
    return digest.hexdigest()[:10]



# -- results ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A figure and its bootstrap 95 % CI (None without a bootstrap)."""

    value: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def from_resamples(cls, value: float, resampled: np.ndarray) -> "Estimate":
        if len(resampled) == 0:
            return cls(float(value))
        low, high = percentile_ci(resampled)
        return cls(float(value), low, high)


@dataclasses.dataclass
class FoldResult:
    """One network, one start, one fold: its figures on the fold's held-out patients and its training."""

    fold: int
    train_patients: int
    val_patients: int
    test_patients: int
    test_images: int
    metrics: dict[str, float]
    best_epoch: int
    epochs: int
    #: False when finished checkpoints were loaded instead of training
    trained: bool
    #: training and evaluation, wall-clock and CPU time of this process
    seconds: float
    cpu_seconds: float


@dataclasses.dataclass
class NetworkResult:
    """One network from one start over all folds: pooled figures with patient-bootstrap CIs, and for
    the phantom start its gain over the scratch start (phantom minus scratch, paired resamples)."""

    network: str
    start: str
    #: what the network began from: "random" or the pretrained weights' source and digest
    initial_weights: str
    pooled: dict[str, Estimate]
    folds: list[FoldResult]
    gain: dict[str, Estimate] | None = None


@dataclasses.dataclass
class TransferResult:
    """What :func:`transfer_test` measured; ``to_dict``/``from_dict`` round-trip it through JSON."""

    data_dir: str
    profile: str
    seed: int
    #: held-out patients of each fold
    fold_patients: list[list[int]]
    #: what each network trained with on every fold: its epoch cap (and pairs per epoch)
    budgets: dict[str, dict[str, int]]
    bootstrap_samples: int
    #: where the phantom start's weights came from; None when no network had any
    pretrained_from: str | None
    networks: list[NetworkResult]
    seconds: float
    cpu_seconds: float

    @property
    def folds(self) -> int:
        return len(self.fold_patients)

    def get(self, network: str, start: str) -> NetworkResult | None:
        return next((r for r in self.networks if r.network == network and r.start == start), None)

    def table(self) -> pd.DataFrame:
        """One row per network, start and pooled figure: value, 95 % CI, and the phantom start's gain (a
        random ranking's retrieval figures once, on the scratch rows: both starts rank the same galleries)."""
        rows = []
        for result in self.networks:
            for metric, estimate in result.pooled.items():
                if metric.startswith("chance") and result.start != "scratch":
                    continue  # the same galleries: the scratch rows give it
                gain = (result.gain or {}).get(metric)
                rows.append({"network": LABELS[result.network], "start": LABELS[result.start],
                             "figure": LABELS.get(metric, metric), "value": estimate.value,
                             "CI low": estimate.low, "CI high": estimate.high,
                             "gain over scratch": gain.value if gain else None,
                             "gain CI low": gain.low if gain else None, "gain CI high": gain.high if gain else None})
        return pd.DataFrame(rows)

    def fold_table(self) -> pd.DataFrame:
        """One row per network, start and fold: the fold's patients, its figures and its training."""
        rows = []
        for result in self.networks:
            for fold in result.folds:
                rows.append({"network": LABELS[result.network], "start": LABELS[result.start], "fold": fold.fold + 1,
                             "test patients": fold.test_patients, "test images": fold.test_images,
                             **{LABELS.get(m, m): v for m, v in fold.metrics.items()},
                             "epochs": fold.epochs, "best epoch": fold.best_epoch, "trained": fold.trained,
                             "CPU seconds": fold.cpu_seconds})
        return pd.DataFrame(rows)

    def verdicts(self) -> list[str]:
        """One sentence per network and figure: does the phantom start beat scratch on real patients?"""
        sentences = []
        for network in NETWORKS:
            scratch, phantom = self.get(network, "scratch"), self.get(network, "phantom")
            if scratch is None:
                continue
            if phantom is None:
                sentences.append(f"{LABELS[network]}: no phantom model, so from scratch only.")
                continue
            for metric, gain in (phantom.gain or {}).items():
                said = (f"{LABELS[network]}, {LABELS[metric]}: {scratch.pooled[metric].value:.3f} from scratch, "
                        f"{phantom.pooled[metric].value:.3f} phantom-pretrained, gain {gain.value:+.3f}")
                if gain.low is None:
                    sentences.append(said + " (no bootstrap, no CI).")
                    continue
                said += f" [{gain.low:+.3f}, {gain.high:+.3f}]"
                if gain.low > 0:
                    verdict = "the phantom's weights help on real patients"
                elif gain.high < 0:
                    verdict = "the phantom's weights hurt on real patients"
                else:
                    verdict = "no difference the sample can resolve"
                sentences.append(f"{said}: {verdict}.")
        return sentences

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "TransferResult":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in payload.items() if key in fields}
        values["networks"] = [
            NetworkResult(**{**n, "pooled": {m: Estimate(**e) for m, e in n["pooled"].items()},
                             "folds": [FoldResult(**f) for f in n["folds"]],
                             "gain": None if n.get("gain") is None else {m: Estimate(**e) for m, e in n["gain"].items()}})
            for n in payload["networks"]]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TransferResult":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path, context: Mapping[str, Any] | None = None) -> Path:
        """Write the result as JSON (with ``context``, e.g. ``Workspace.context()``, beside it)."""
        return write_json(path, {**({"context": dict(context)} if context else {}), **self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> "TransferResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- retrieval by patient, and chance --------------------------------------------------------------


def random_ranking_retrieval(relevant: int, gallery: int) -> tuple[float, float]:
    """Expected precision at 1 and mAP@R of a query with ``relevant`` images of its patient among
    ``gallery`` other images, when the gallery is ranked at random: ``R / M`` and
    ``(1/R) sum_i (R/M + (i-1) R(R-1) / (M(M-1))) / i`` over the first ``R`` ranks."""
    r, m = relevant, gallery
    if not 1 <= r <= m:
        raise ValueError(f"need 1 <= relevant <= gallery, got {relevant} and {gallery}")
    both = r * (r - 1) / (m * (m - 1)) if m > 1 else 0.0
    average_precision = sum((r / m + (i - 1) * both) / i for i in range(1, r + 1)) / r
    return r / m, average_precision


def retrieval_by_patient(embeddings, patient_ids: Sequence[int]) -> pd.DataFrame:
    """Per patient with several images: its queries (its images), their mean precision at 1 and mAP@R,
    each query against all other images, and a random ranking's (``chance_*``). The mean over queries
    (weighted by ``queries``) is :func:`cxrlib.metrics.retrieval_metrics` of the whole set; each patient's
    figures are that function's with every other image made an identity of its own (the ranking is the
    same, and only the patient's own queries count)."""
    ids = np.asarray(patient_ids)
    unique, counts = np.unique(ids, return_counts=True)
    rows = []
    for patient, n in zip(unique, counts):
        if n < 2:
            continue
        labels = np.arange(len(ids))
        labels[ids == patient] = len(ids)
        figures = retrieval_metrics(embeddings, labels)
        chance = random_ranking_retrieval(int(n) - 1, len(ids) - 1)
        rows.append({"patient_id": int(patient), "queries": int(n), "precision_at_1": figures["precision_at_1"],
                     "map_at_r": figures["map_at_r"], "chance_precision_at_1": chance[0], "chance_map_at_r": chance[1]})
    if not rows:
        raise ValueError("no patient has two images: retrieval needs several images per patient")
    return pd.DataFrame(rows)


# -- the test --------------------------------------------------------------------------------------


def network_configs(profile: Profile) -> dict[str, Any]:
    """Each network's profile section with the ``transfer`` section's caps applied."""
    t, v, r, c = profile.transfer, profile.verification, profile.retrieval, profile.classifier

    def cap(value, own):
        return own if value is None else value

    return {"verification": dataclasses.replace(v, max_epochs=cap(t.verification_epochs, v.max_epochs),
                                                train_pairs=cap(t.verification_pairs, v.train_pairs)),
            "retrieval": dataclasses.replace(r, unfrozen_epochs=cap(t.retrieval_epochs, r.unfrozen_epochs)),
            "classifier": dataclasses.replace(c, max_epochs=cap(t.classifier_epochs, c.max_epochs))}


def _budget(network: str, config) -> dict[str, int]:
    if network == "verification":
        return {"max_epochs": config.max_epochs, "train_pairs": config.train_pairs, "patience": config.patience}
    if network == "retrieval":
        return {"frozen_epochs": config.frozen_epochs, "unfrozen_epochs": config.unfrozen_epochs}
    return {"max_epochs": config.max_epochs, "patience": config.patience}


def _pairs(frame: pd.DataFrame, wanted: int, seed: int, limit: int) -> pd.DataFrame:
    n = min(wanted, 2 * max_positive_pairs(frame), *([limit] if limit else []))
    if n < 2 or frame["patient_id"].nunique() < 2:
        raise ValueError(f"{frame['patient_id'].nunique()} patients with {len(frame)} images allow no balanced pairs")
    return make_pairs(frame, n, seed)


@dataclasses.dataclass
class _Outcome:
    """One network, start and fold: its predictions on the held-out patients, and its fold figures."""

    fold: FoldResult
    #: verification: label, score and the pair's first and second patient; retrieval:
    #: retrieval_by_patient's rows; classifier: labels (N, 14), scores (N, 14), patients (N,)
    predictions: Any


def _data_key(folder: Path, meta: pd.DataFrame) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    digest.update("\n".join(meta["image"]).encode())
    return "data-" + digest.hexdigest()[:8]


def transfer_test(data_dir: str | Path, profile: Profile, *, seed: int, artifacts_dir: str | Path,
                  pretrained: PretrainedModels | None = None, networks: Sequence[str] = NETWORKS,
                  bootstrap_samples: int | None = None, progress: bool | None = None) -> TransferResult:
    """Train and test ``networks`` on ``data_dir`` (the real sample) from scratch and, where
    ``pretrained`` holds the network, from the phantom's weights, in the profile's ``transfer.folds``
    folds by patient (see the module's description). Checkpoints go to
    ``artifacts_dir/<profile>/transfer/``; finished ones are loaded, so a rerun costs the evaluation
    only. ``bootstrap_samples``: patient resamples for the CIs (default: the profile's
    ``evaluation.bootstrap_samples``; 0: none). One progress bar counts the trainings (``progress``
    None: only on a terminal)."""
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; choose from {', '.join(NETWORKS)}")
    started, started_cpu = time.perf_counter(), time.process_time()
    folder = Path(data_dir)
    meta = read_metadata(find_metadata_file(folder))
    cache = prepare_cache(folder, profile.image_size, workers=profile.data.workers, progress=progress)
    limit = profile.data.max_steps * DRY_RUN_BATCH
    k = profile.transfer.folds
    splits = fold_splits(meta, k, seed, profile.data.val_fraction, max_images=limit)
    configs = network_configs(profile)
    pretrained = pretrained or PretrainedModels()
    bootstrap = profile.evaluation.bootstrap_samples if bootstrap_samples is None else bootstrap_samples
    folder_key = _data_key(folder, meta)

    plan = [(network, start) for network in networks for start in STARTS
            if start == "scratch" or getattr(pretrained, network) is not None]
    results, sources, resamples = [], {}, {}
    bar = tqdm(total=len(plan) * len(splits), desc="transfer", unit="fit", leave=False,
               disable=None if progress is None else not progress)
    try:
        for network, start in plan:
            weights = pretrained.weights(network) if start == "phantom" else None
            digest = weights_digest(weights) if weights is not None else None
            if digest:
                sources[network] = f"{pretrained.source or 'pretrained'} (weights {digest})"
            key = profile.fingerprint("data", _SECTIONS[network], "transfer")
            outcomes = []
            for split in splits:
                bar.set_postfix_str(f"{network}, {start}, fold {split.fold + 1}/{len(splits)}")
                name = f"{network}-{key}-{start}{'-' + digest if digest else ''}-fold{split.fold + 1}of{k}-seed{seed}"
                path = Path(artifacts_dir) / profile.name / "transfer" / folder_key / name
                path.parent.mkdir(parents=True, exist_ok=True)
                outcomes.append(_run_fold(network, split, configs[network], cache, seed, path, limit, weights))
                bar.update(1)
            pooled, resamples[network, start] = _pool(network, outcomes, bootstrap, seed)
            results.append(NetworkResult(network=network, start=start,
                                         initial_weights=sources[network] if start == "phantom" else "random",
                                         pooled=pooled, folds=[o.fold for o in outcomes]))
    finally:
        bar.close()
    for result in results:
        if result.start == "phantom":
            scratch = next(r for r in results if r.network == result.network and r.start == "scratch")
            result.gain = {metric: _gain(result.pooled[metric].value - scratch.pooled[metric].value,
                                         resamples[result.network, "phantom"][metric],
                                         resamples[result.network, "scratch"][metric])
                           for metric in METRICS[result.network] if not metric.startswith("chance")}
    return TransferResult(
        data_dir=str(folder), profile=profile.name, seed=seed,
        fold_patients=[sorted(int(p) for p in s.test["patient_id"].unique()) for s in splits],
        budgets={network: _budget(network, configs[network]) for network in networks},
        bootstrap_samples=bootstrap, pretrained_from=(pretrained.source or "pretrained") if sources else None,
        networks=results, seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)


def _gain(value: float, phantom: np.ndarray, scratch: np.ndarray) -> Estimate:
    """Phantom minus scratch, its CI from the paired resamples (the same patients drawn for both)."""
    if len(phantom) != len(scratch):
        raise ValueError(f"unpaired resamples ({len(phantom)} and {len(scratch)}): the starts saw other patients")
    return Estimate.from_resamples(value, phantom - scratch)


def _run_fold(network: str, split: FoldSplit, config, cache, seed: int, path: Path, limit: int,
              weights: Mapping[str, torch.Tensor] | None) -> _Outcome:
    started, started_cpu = time.perf_counter(), time.process_time()
    fold_seed = seed + split.fold
    test_images = Images.from_cache(cache, split.test["image"])
    test_ids = split.test.set_index("image").loc[list(test_images.names), "patient_id"].to_numpy()
    if network == "verification":
        pairs = {part: _pairs(getattr(split, part), wanted, zlib.crc32(f"{seed}/transfer/{split.fold}/{part}".encode()), limit)
                 for part, wanted in (("train", config.train_pairs), ("val", config.val_pairs),
                                      ("test", config.test_pairs))}
        model, fit = reid.train_verification(PairDataset(cache, pairs["train"]), PairDataset(cache, pairs["val"]),
                                             config, seed=fold_seed, checkpoint_path=path, progress=False,
                                             initial_weights=weights)
        fits = [fit]
        scores = reid.pair_scores(model, test_images, pairs["test"])
        patient = split.test.set_index("image")["patient_id"]
        predictions = {"label": pairs["test"]["label"].to_numpy(), "score": scores,
                       "first": patient.loc[pairs["test"]["img1"]].to_numpy(),
                       "second": patient.loc[pairs["test"]["img2"]].to_numpy()}
        metrics = {"auc": verification_metrics(predictions["label"], scores, n_bootstrap=0)["auc"],
                   "test_pairs": float(len(scores))}
    elif network == "retrieval":
        model, fits = reid.train_retrieval(
            ImageDataset(cache, split.train, transform=reid.retrieval_augmentation(config)),
            ImageDataset(cache, split.val), config, seed=fold_seed, checkpoint_path=path,
            progress=False, initial_weights=weights)
        embeddings = reid.retrieval_embeddings(model, test_images)
        predictions = retrieval_by_patient(embeddings, test_ids)
        weights = predictions["queries"].to_numpy()
        metrics = {name: float(np.average(predictions[name], weights=weights)) for name in METRICS["retrieval"]}
        metrics["queries"] = float(weights.sum())
    else:
        model, fit = classify.train_classifier(ImageDataset(cache, split.train), ImageDataset(cache, split.val),
                                               config, seed=fold_seed, checkpoint_path=path, progress=False,
                                               initial_weights=weights)
        fits = [fit]
        scores, labels = classify.predict(model, ImageDataset(cache, split.test), progress=False)
        predictions = {"labels": labels, "scores": scores, "patients": split.test["patient_id"].to_numpy()}
        metrics = {"mean_auc": multilabel_auc(labels, scores, n_bootstrap=0)["mean_auc"],
                   "findings": float(((labels.sum(axis=0) > 0) & (labels.sum(axis=0) < len(labels))).sum())}
    fold = FoldResult(fold=split.fold, train_patients=int(split.train["patient_id"].nunique()),
                      val_patients=int(split.val["patient_id"].nunique()),
                      test_patients=int(split.test["patient_id"].nunique()), test_images=len(split.test),
                      metrics=metrics, best_epoch=int(fits[-1].best_epoch),
                      epochs=int(sum(len(f.history) for f in fits)), trained=any(f.trained for f in fits),
                      seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)
    return _Outcome(fold, predictions)


def _pool(network: str, outcomes: list[_Outcome], bootstrap: int,
          seed: int) -> tuple[dict[str, Estimate], dict[str, np.ndarray]]:
    """Pooled figures and their patient resamples (see the module's description)."""
    if network == "retrieval":
        rows = pd.concat([o.predictions for o in outcomes], ignore_index=True)
        patients = np.repeat(rows["patient_id"].to_numpy(), rows["queries"].to_numpy())
        pooled, resampled = {}, {}
        for metric in METRICS["retrieval"]:
            per_query = np.repeat(rows[metric].to_numpy(), rows["queries"].to_numpy())
            value, resampled[metric] = patient_bootstrap_mean(per_query, patients, n_samples=bootstrap, seed=seed)
            pooled[metric] = Estimate.from_resamples(value, resampled[metric])
        return pooled, resampled
    per_fold = []
    for fold, outcome in enumerate(outcomes):
        p = outcome.predictions
        if network == "verification":
            per_fold.append(patient_bootstrap_auc(p["label"], p["score"], p["first"], p["second"],
                                                  n_samples=bootstrap, seed=seed + fold))
        else:
            per_fold.append(patient_bootstrap_mean_auc(p["labels"], p["scores"], p["patients"],
                                                       n_samples=bootstrap, seed=seed + fold))
    value = float(np.mean([v for v, _ in per_fold]))
    shortest = min(len(r) for _, r in per_fold)
    # resamples on which a fold's AUC is undefined were left out (it depends on the labels and the
    # patients drawn, never on the scores, so both starts leave out the same ones)
    resampled = np.mean([r[:shortest] for _, r in per_fold], axis=0) if shortest else np.empty(0)
    metric = METRICS[network][0]
    return {metric: Estimate.from_resamples(value, resampled)}, {metric: resampled}


__all__ = ["NETWORKS", "STARTS", "METRICS", "patient_folds", "fold_splits",
           "FoldSplit", "PretrainedModels", "weights_digest", "Estimate", "FoldResult",
           "NetworkResult", "TransferResult", "random_ranking_retrieval", "retrieval_by_patient",
           "network_configs", "transfer_test"]
