"""Verification: a siamese network decides whether two radiographs show the same patient (Packhäuser et al.,
Sci. Rep. 2022): its training (:func:`train_verification`), its pair scores (:func:`pair_scores`), several
seeds (:func:`verification_runs`) and several experiments' runs in one pool (:func:`verification_experiments`);
and the paper's finding that blacking out burned-in text does not help (:func:`text_box_effect`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlib.config import VerificationConfig
from cxrlib.data.images import Images
from cxrlib.metrics import verification_metrics
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.parallel import map_in_processes
from cxrlib.checkpoints import checkpoint_finished
from cxrlib.train import Checkpoint, FitResult, Runtime, Schedule, fit
from cxrlib.reid.retrieval import Anonymizer, embed_images
from cxrlib.runtime import module_device, seed_everything


#: the verification metrics averaged over independent runs
RUN_METRICS = ("auc", "accuracy", "f1", "precision", "recall")


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
