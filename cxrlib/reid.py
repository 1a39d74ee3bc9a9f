"""Re-identification of patients from their chest radiographs (Packhäuser et al., Sci. Rep. 2022).

Two attacks on held-out patients:

* **verification** -- a siamese network decides whether two radiographs show the same patient
  (:func:`train_verification`, :func:`pair_scores`, several seeds with :func:`verification_runs`,
  several experiments' runs in one pool with :func:`verification_experiments`);
* **retrieval** -- an embedding network ranks a gallery by identity (:func:`train_retrieval`,
  :func:`evaluate_retrieval`), trained with a contrastive loss over a cross-batch memory on batches
  grouped by patient (:class:`PatientBlockSampler`).

And what the paper shows with them: blacking out burned-in text does not help
(:func:`black_out_boxes`, :func:`text_box_effect`); a linkage attack returns a query's nearest gallery
images in the retrieval embedding (:func:`linkage_attack`, :func:`linkage_hit_rates`); identity survives
years between scans (:func:`auc_by_gap`); the training-free attacks of :mod:`cxrlib.attacks` (pixel
correlation, block means, the intensity histogram, the image's mean and standard deviation), beside the
trained networks on the same pairs, show what carries identity (:func:`identity_cues`).

Evaluation works on :class:`Images`, the uint8 pixels of a set of named images, so that any anonymizer
(``anonymizer(images) -> images`` on float (B, 1, H, W) in [0, 1]) can be put in front of a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrlib.attacks import TRAINING_FREE_ATTACKS, attack_features, distance_pair_scores
from cxrlib.config import RetrievalConfig, VerificationConfig
from cxrlib.data.images import Images, black_out_boxes  # noqa: F401  (black_out_boxes: part of reid's API)
from cxrlib.metrics import nearest_neighbours, retrieval_metrics, verification_metrics
from cxrlib.models.retrieval import RetrievalNetwork
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.parallel import map_in_processes
from cxrlib.checkpoints import checkpoint_finished
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit
from cxrlib.runtime import map_batches, module_device, seed_everything

Anonymizer = Callable[[torch.Tensor], torch.Tensor]

#: the verification metrics averaged over independent runs
RUN_METRICS = ("auc", "accuracy", "f1", "precision", "recall")


# -- images ----------------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(embed: Callable[[torch.Tensor], torch.Tensor], images: Images, *, batch_size: int = 256,
                 anonymizer: Anonymizer | None = None, device: torch.device | str = "cpu",
                 progress: bool = False) -> torch.Tensor:
    """``embed`` applied to every image (after ``anonymizer``), in batches; (N, D) on the CPU."""
    return map_batches(embed, images, batch_size=batch_size, device=device, before=anonymizer,
                       progress=progress)


# -- verification ----------------------------------------------------------------------------------


def verification_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """BCE-with-logits of a siamese network on a batch of pairs (``image1``, ``image2``, ``same``)."""
    logits = model(batch["image1"], batch["image2"]).float()
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["same"].float())


def train_verification(train: Dataset, val: Dataset, config: VerificationConfig, *, seed: int,
                       checkpoint_path: str | Path, progress: bool | None = None,
                       accelerator=None, initial_weights: Mapping[str, torch.Tensor] | None = None,
                       ) -> tuple[SiameseNetwork, FitResult]:
    """Train (or load, when a finished checkpoint exists) the siamese network on pair datasets.

    ``train``/``val`` yield pairs (``image1``, ``image2``, ``same``: :class:`cxrlib.data.datasets.PairDataset`).
    Adam, BCE-with-logits, early stopping on validation loss, as published. ``initial_weights``: a state
    dict to fine-tune from (the checkpoint's name should say so) instead of the random initialization.
    """
    seed_everything(seed)
    model = SiameseNetwork(config.backbone, config.pretrained, config.features)
    if initial_weights is not None:
        model.load_state_dict(initial_weights)
    train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True,
                              drop_last=len(train) > config.batch_size)
    val_loader = DataLoader(val, batch_size=config.batch_size)
    result = fit(model, verification_loss, train_loader, val_loader,
                 optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                 schedule=Schedule(config.max_epochs, config.patience),
                 checkpoint=Checkpoint(checkpoint_path, dataclasses.asdict(config), seed),
                 runtime=Runtime(accelerator, progress))
    return model, result


@torch.no_grad()
def pair_scores(model: SiameseNetwork, images: Images, pairs: pd.DataFrame, *, batch_size: int = 256,
                anonymizer: Anonymizer | None = None, progress: bool = False) -> np.ndarray:
    """Same-patient probabilities of ``pairs`` (columns img1, img2), whose images are in ``images``.

    Each image is embedded once and the pairs are compared on the embeddings, which equals
    ``model.score`` pair by pair (the network is in eval mode) at a fraction of the cost.
    """
    model.eval()
    first, second = images.rows(pairs["img1"].tolist()), images.rows(pairs["img2"].tolist())
    features = embed_images(model.embed, images, batch_size=batch_size, anonymizer=anonymizer,
                            device=module_device(model), progress=progress).to(module_device(model))
    logits = torch.cat([model.compare(features[first[i:i + batch_size]], features[second[i:i + batch_size]])
                        for i in range(0, len(first), batch_size)])
    return torch.sigmoid(logits).float().cpu().numpy()


def run_checkpoint(checkpoint_path: str | Path, run: int) -> Path:
    """Checkpoint of independent run ``run``; run 0 is the model trained with the base seed itself."""
    path = Path(checkpoint_path)
    return path if run == 0 else path.with_name(f"{path.name}-run{run}")


@dataclasses.dataclass(eq=False)
class VerificationExperiment:
    """What :func:`verification_experiments` trains and tests ``runs`` times (seeds ``seed``, ``seed +
    1``, ...): siamese networks on ``train``/``val`` pair datasets, tested on ``test_pairs`` of
    ``test_images``; run ``i`` checkpoints at ``run_checkpoint(checkpoint_path, i)``."""

    train: Dataset
    val: Dataset
    test_images: Images
    test_pairs: pd.DataFrame
    config: VerificationConfig
    seed: int
    checkpoint_path: Path
    runs: int

    def __post_init__(self):
        if self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")
        self.checkpoint_path = Path(self.checkpoint_path)


def verification_experiments(experiments: Sequence[VerificationExperiment], *, processes: int = 1,
                             progress: bool | None = None) -> list[dict]:
    """Every run of every experiment, in one pool of ``processes`` workers on a CPU
    (:func:`cxrlib.parallel.map_in_processes`), so that a short run never leaves a core idle while a
    long one of the same experiment finishes. Per experiment, ``{"runs": [per-run metrics, seed, best
    epoch, epochs run, epoch cap], "mean": {...}, "std": {...}}`` over :data:`RUN_METRICS` (sample
    standard deviation; 0 for a single run). Trained runs are cached like any checkpoint.
    """
    jobs, owners, finished = [], [], []
    for index, e in enumerate(experiments):
        for run in range(e.runs):
            checkpoint = run_checkpoint(e.checkpoint_path, run)
            jobs.append((e.train, e.val, e.test_images, e.test_pairs, e.config, e.seed + run, checkpoint,
                         progress if processes <= 1 else False))
            owners.append(index)
            finished.append(checkpoint_finished(checkpoint))
    results = map_in_processes(verification_run, jobs, processes=processes, desc="verification runs",
                               progress=progress, inline=finished)
    summaries = []
    for index in range(len(experiments)):
        runs = [result for result, owner in zip(results, owners) if owner == index]
        table = pd.DataFrame(runs)
        summaries.append({
            "runs": runs, "mean": {name: float(table[name].mean()) for name in RUN_METRICS},
            "std": {name: float(table[name].std(ddof=1)) if len(runs) > 1 else 0.0 for name in RUN_METRICS}})
    return summaries


def verification_runs(train: Dataset, val: Dataset, test_images: Images, test_pairs: pd.DataFrame,
                      config: VerificationConfig, *, seed: int, checkpoint_path: str | Path,
                      runs: int | None = None, processes: int = 1, progress: bool | None = None) -> dict:
    """Train ``runs`` (default ``config.runs``) networks with seeds ``seed``, ``seed + 1``, ...; test
    each: one :class:`VerificationExperiment` through :func:`verification_experiments`."""
    experiment = VerificationExperiment(train, val, test_images, test_pairs, config, seed, checkpoint_path,
                                        config.runs if runs is None else runs)
    return verification_experiments([experiment], processes=processes, progress=progress)[0]


def verification_run(train: Dataset, val: Dataset, test_images: Images, test_pairs: pd.DataFrame,
                     config: VerificationConfig, seed: int, checkpoint_path: Path,
                     progress: bool | None = None) -> dict:
    """One run of :func:`verification_runs`: train (or load) with ``seed``, test on ``test_pairs``."""
    model, fitted = train_verification(train, val, config, seed=seed, checkpoint_path=checkpoint_path,
                                       progress=progress)
    metrics = verification_metrics(test_pairs["label"], pair_scores(model, test_images, test_pairs), n_bootstrap=0)
    return {"seed": seed, **fitted.record(), "trained": fitted.trained,
            **{name: metrics[name] for name in RUN_METRICS}}


# -- training-free attacks (cxrlib.attacks) beside the trained networks ------------------------------

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


# -- retrieval -------------------------------------------------------------------------------------


class PatientBlockSampler(Sampler[list[int]]):
    """Batches built from blocks of up to ``images_per_patient`` images of one patient.

    Only patients with at least two images take part (a lone image has no positive to learn from).
    Each patient's images are split into as few near-equal blocks as the limit allows, so a block
    never holds a single image (for ``images_per_patient`` >= 3); blocks are packed whole into batches of at most
    ``batch_size`` images by best-fit decreasing on the block sizes alone, so the number of batches
    is the same every epoch (a batch may hold two blocks of a patient with many images). Which
    images form a block, which blocks share a batch and the batch
    order are drawn from ``seed`` and the epoch (set by :func:`cxrlib.train.fit` through
    :meth:`set_epoch`); with ``shuffle=False`` every epoch gives the batches of epoch 0.
    """

    def __init__(self, patient_ids: Sequence[int], batch_size: int, images_per_patient: int, seed: int,
                 shuffle: bool = True):
        if images_per_patient < 2:
            raise ValueError(f"images_per_patient must be at least 2, got {images_per_patient}")
        if batch_size < images_per_patient:
            raise ValueError(f"batch_size ({batch_size}) must be at least images_per_patient "
                             f"({images_per_patient})")
        ids = np.asarray(patient_ids)
        order = np.argsort(ids, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(ids[order])) + 1) if len(ids) else []
        self.groups = [g for g in groups if len(g) >= 2]
        if not self.groups:
            raise ValueError("no patient has two or more images: nothing to group into batches")
        # not named batch_size: Accelerate's sharding would then drop every batch of another size
        self.max_batch_size, self.images_per_patient = batch_size, images_per_patient
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        sizes = [s for g in self.groups for s in self._block_sizes(len(g))]
        self._length = len(self._pack(sizes))

    def _block_sizes(self, n: int) -> list[int]:
        blocks = math.ceil(n / self.images_per_patient)
        return [n // blocks + (1 if i < n % blocks else 0) for i in range(blocks)]

    def _pack(self, sizes: Sequence[int]) -> list[list[int]]:
        """Best-fit decreasing: block indices per batch; depends on the sizes only."""
        order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        batches: list[list[int]] = []
        by_room: dict[int, list[int]] = {}  # free room -> batches with that room
        for i in order:
            fitting = [room for room in by_room if room >= sizes[i] and by_room[room]]
            if fitting:
                room = min(fitting)
                b = by_room[room].pop()
            else:
                room, b = self.max_batch_size, len(batches)
                batches.append([])
            batches[b].append(i)
            by_room.setdefault(room - sizes[i], []).append(b)
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0])
        blocks = []
        for group in rng.permutation(len(self.groups)):
            images = rng.permutation(self.groups[group])
            sizes = self._block_sizes(len(images))
            blocks += np.split(images, np.cumsum(sizes)[:-1])
        batches = self._pack([len(b) for b in blocks])
        for b in rng.permutation(len(batches)):
            yield np.concatenate([blocks[i] for i in batches[b]]).tolist()


class RetrievalLoss:
    """Contrastive loss over a cross-batch memory while training; without the memory on validation
    batches, so that validation never fills the memory."""

    def __init__(self, embedding_dim: int, memory_size: int):
        from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory

        self.validation = ContrastiveLoss()
        self.training = CrossBatchMemory(ContrastiveLoss(), embedding_dim, memory_size=memory_size)

    def __call__(self, model: torch.nn.Module, batch) -> torch.Tensor:
        patient = batch["patient"]
        embeddings = model(batch["image"]).float()
        if not model.training:
            return self.validation(embeddings, patient)
        return self.training.to(embeddings.device)(embeddings, patient)


def build_retrieval_network(config: RetrievalConfig) -> RetrievalNetwork:
    return RetrievalNetwork(config.backbone, config.pretrained, config.embedding_dim, config.pool_size,
                            config.bottleneck_channels, config.hidden, tuple(config.head_dropout))


def retrieval_augmentation(config: RetrievalConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Brightness and contrast jitter, as in the authors' training (pass as the dataset transform);
    None when the profile sets no jitter."""
    from torchvision.transforms import v2

    if config.color_jitter == 0:
        return None
    return v2.ColorJitter(brightness=config.color_jitter, contrast=config.color_jitter)


def _sgd_without_decay_on_norms_and_biases(model: torch.nn.Module, config: RetrievalConfig):
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            norm = isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm,
                                       torch.nn.LayerNorm))
            (no_decay if norm or name == "bias" else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=config.max_lr, momentum=config.momentum)


def train_retrieval(train: Dataset, val: Dataset, config: RetrievalConfig, *, seed: int,
                    checkpoint_path: str | Path, progress: bool | None = None,
                    accelerator=None, initial_weights: Mapping[str, torch.Tensor] | None = None,
                    ) -> tuple[RetrievalNetwork, list[FitResult]]:
    """Train (or load) the retrieval network: ``frozen_epochs`` on the head, then ``unfrozen_epochs``.

    ``train``/``val`` yield items with ``image`` and ``patient`` and have a ``patient_ids`` array (e.g.
    :class:`cxrlib.data.datasets.ImageDataset`; give the training set
    :func:`retrieval_augmentation` as transform). Each phase: SGD with momentum, weight decay except
    on biases and norm layers, a OneCycle schedule run to its end, as published (the validation loss
    is recorded, not used to stop). Returns the network and one :class:`FitResult` per phase that ran.
    ``initial_weights``: a state dict to fine-tune from instead of the random initialization.
    """
    seed_everything(seed)
    model = build_retrieval_network(config)
    if initial_weights is not None:
        model.load_state_dict(initial_weights)
    train_loader = DataLoader(train, batch_sampler=PatientBlockSampler(
        train.patient_ids, config.batch_size, config.images_per_patient, seed))
    val_loader = DataLoader(val, batch_sampler=PatientBlockSampler(
        val.patient_ids, config.batch_size, config.images_per_patient, seed, shuffle=False))
    path = Path(checkpoint_path)
    phases = [("frozen", config.frozen_epochs, path.with_name(path.name + "-frozen")),
              ("unfrozen", config.unfrozen_epochs, path)]
    results = []
    for phase, epochs, phase_path in phases:
        if epochs == 0:
            continue
        model.freeze_backbone(phase == "frozen")
        optimizer = _sgd_without_decay_on_norms_and_biases(model, config)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.max_lr, total_steps=epochs * len(train_loader) + 1, pct_start=0.3,
            base_momentum=0.85, max_momentum=0.95, div_factor=25.0, final_div_factor=1e4)
        loss = RetrievalLoss(config.embedding_dim, config.memory_size)
        results.append(fit(model, loss, train_loader, val_loader, optimizer=optimizer, scheduler=scheduler,
                           schedule=Schedule(epochs, keep="last"),
                           checkpoint=Checkpoint(phase_path, {**dataclasses.asdict(config), "phase": phase}, seed),
                           runtime=Runtime(accelerator, progress)))
    if not results:
        raise ValueError("frozen_epochs and unfrozen_epochs are both 0: nothing to train")
    model.freeze_backbone(False)
    return model, results


def evaluate_retrieval(model: RetrievalNetwork, images: Images, patient_ids: Sequence[int], *,
                       anonymizer: Anonymizer | None = None, progress: bool = False) -> dict:
    """mAP@R, R-precision, P@1: every image queried against all the others."""
    embeddings = retrieval_embeddings(model, images, anonymizer=anonymizer, progress=progress)
    return retrieval_metrics(embeddings, np.asarray(patient_ids))


# -- what the paper shows --------------------------------------------------------------------------


def text_box_effect(model: SiameseNetwork, images: Images, pairs: pd.DataFrame,
                    boxes: Sequence[Sequence[Sequence[int]]], *,
                    source_size: int | Sequence[int] | None = None,
                    n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Verification AUC (with CI) on the original images and with their burned-in text blacked out."""
    result = {"images_with_text": int(sum(bool(b) for b in boxes)), "images": len(images.names)}
    for name, version in (("original", images),
                          ("text_blacked_out", images.with_boxes_blacked_out(boxes, source_size))):
        metrics = verification_metrics(pairs["label"], pair_scores(model, version, pairs),
                                       n_bootstrap=n_bootstrap, seed=seed)
        result[name] = {"auc": metrics["auc"], "auc_ci": metrics.get("auc_ci"),
                        "accuracy": metrics["accuracy"]}
    result["auc_change"] = result["text_blacked_out"]["auc"] - result["original"]["auc"]
    return result


def retrieval_embeddings(model: RetrievalNetwork, images: Images, *, anonymizer: Anonymizer | None = None,
                         progress: bool = False) -> torch.Tensor:
    """The retrieval network's (N, D) embeddings of ``images`` (after ``anonymizer``), on the CPU."""
    model.eval()
    return embed_images(model, images, anonymizer=anonymizer, device=module_device(model), progress=progress)


def normalized(embeddings) -> np.ndarray:
    """Rows scaled to unit length: Euclidean distance then ranks like cosine similarity, as
    :func:`cxrlib.metrics.retrieval_metrics` ranks."""
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_matches(embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by distance of the L2-normalized embeddings (the ranking
    :func:`cxrlib.metrics.retrieval_metrics` scores, with the same k-NN): (indices, distances), both
    (N, k), nearest first; every other row when there are fewer than ``k`` (a dry run's few images)."""
    x = normalized(embeddings)
    if k < 1 or len(x) < 2:
        raise ValueError(f"need k >= 1 and a gallery of at least 2 images, got k = {k} and {len(x)} images")
    distances, indices = nearest_neighbours(x, k=k)
    return indices, distances


def linkage_queries(patient_ids: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows drawn at random (without replacement) among those whose patient has another row."""
    ids = np.asarray(patient_ids)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse] >= 2)
    if len(candidates) == 0:
        raise ValueError("no image has another image of the same patient among these images")
    return np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))


def linkage_attack(embeddings, images: Images, patient_ids: Sequence[int], queries: Sequence[str],
                   k: int = 5) -> pd.DataFrame:
    """For each query image, the ``k`` gallery images (all other images) nearest in ``embeddings``
    (rows follow ``images.names``, e.g. :func:`retrieval_embeddings`): the paper's retrieval attack.

    Rows: query, rank (1..k), match (gallery image), distance (of the L2-normalized embeddings),
    same_patient.
    """
    ids = np.asarray(patient_ids)
    indices, distances = nearest_matches(embeddings, k)
    rows = []
    for query, q in zip(queries, images.rows(list(queries))):
        for rank, (g, distance) in enumerate(zip(indices[q], distances[q]), start=1):
            rows.append({"query": query, "rank": rank, "match": images.names[g], "distance": float(distance),
                         "same_patient": bool(ids[g] == ids[q])})
    return pd.DataFrame(rows)


def linkage_hit_rates(embeddings, patient_ids: Sequence[int], ranks: Sequence[int] = (1, 5)) -> dict:
    """Share of queries (every image whose patient has another image) with a right match within the
    first ``r`` gallery images, per ``r`` in ``ranks``: ``{"queries": n, "rank_1": ..., "rank_5": ...}``.
    The rank-1 share is the retrieval P@1."""
    ids = np.asarray(patient_ids)
    indices, _ = nearest_matches(embeddings, max(ranks))
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    queries = counts[inverse] >= 2
    if not queries.any():
        raise ValueError("no image has another image of the same patient among these images")
    same = ids[indices] == ids[:, None]
    return {"queries": int(queries.sum()),
            **{f"rank_{r}": float(same[queries, :r].any(axis=1).mean()) for r in ranks}}


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
