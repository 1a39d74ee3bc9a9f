"""Retrieval: an embedding network ranks a gallery by identity (:func:`train_retrieval`,
:func:`evaluate_retrieval`), trained with a contrastive loss over a cross-batch memory on batches grouped
by patient (:class:`PatientBlockSampler`); the linkage attack returns a query's nearest gallery images in
its embedding (:func:`linkage_attack`, :func:`linkage_hit_rates`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrlib.config import RetrievalConfig
from cxrlib.data.images import Images
from cxrlib.metrics import nearest_neighbours, retrieval_metrics
from cxrlib.models.retrieval import RetrievalNetwork
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit
from cxrlib.runtime import map_batches, module_device, seed_everything

Anonymizer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def embed_images(embed: Callable[[torch.Tensor], torch.Tensor], images: Images, *, batch_size: int = 256,
                 anonymizer: Anonymizer | None = None, device: torch.device | str = "cpu",
                 progress: bool = False) -> torch.Tensor:
    """``embed`` applied to every image (after ``anonymizer``), in batches; (N, D) on the CPU."""
    return map_batches(embed, images, batch_size=batch_size, device=device, before=anonymizer,
                       progress=progress)


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
