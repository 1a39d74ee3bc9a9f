"""The latent diffusion model's sampling (or training) in fp32 and in bf16, side by side: speed and utility.

The profile's synthetic data set (notebook 04's conditions, one image each, without the privacy filter,
which would only drop a few percent of either set) is drawn twice from one seed, once with the U-Net in
fp32 and once under bf16 autocast (``cxrlib.synthesis.generate``), in two processes at once with half
the threads each (one each on 2 cores, as ``run_all.sh`` runs its jobs). Printed: images/s of each, how
far their pixels differ, and the test mean AUC of the synthetic-only classifier trained on each set with
``--classifier-seeds`` seeds (the same seeds for both, so the two precisions compare seed by seed).

Needs the profile's trained latent diffusion model in ``--artifacts`` (``./run_all.sh`` trains it; here it
is trained when missing, about 20 minutes on one core on the ``cpu`` profile).

With ``--training``, the model itself is trained twice, in fp32 and in bf16 (``cxrlib.runtime.autocast``),
in two processes at once, into ``ARTIFACTS/training-precision/{fp32,bf16}`` (reused when trained before);
each model then samples the synthetic set in bf16, as notebook 04 does, and the synthetic-only
classifiers judge the two sets. Printed: training seconds, best epochs and validation losses of the
autoencoder and the U-Net, and the AUCs.

    python benchmarks/bench_sampling_precision.py [--profile cpu] [--training] [--classifier-seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from cxrlib import synthesis
from cxrlib.classify import predict, train_classifier
from cxrlib.data.datasets import TensorItems
from cxrlib.data.chestxray14 import LABELS
from cxrlib.metrics import multilabel_auc
from cxrlib.parallel import map_in_processes, worker_threads
from cxrlib.runtime import CPU_BF16_VARIABLE, cpu_computes_bf16, machine_description
from cxrlib.workspace import Workspace

PRECISIONS = ("fp32", "bf16")


def _workspace(profile: str, data_dir: str, artifacts_dir: str, seed: int, results_dir: str) -> Workspace:
    return Workspace.open(profile, data_dir, seed=seed, results_dir=results_dir, artifacts_dir=artifacts_dir)


def _conditions(ws: Workspace) -> tuple[torch.Tensor, int]:
    splits = ws.splits
    return synthesis.synthetic_set_conditions(splits.train[list(LABELS)].to_numpy(dtype=np.float32),
                                              splits.val[list(LABELS)].to_numpy(dtype=np.float32),
                                              ws.profile.synthesis.synthetic_images, seed=ws.seed)


def train(workspace: tuple, precision: str) -> dict:
    """The profile's latent diffusion model trained in ``precision`` (a worker's job): each part's
    training record, best validation loss and seconds of training."""
    with mock.patch.dict(os.environ, {CPU_BF16_VARIABLE: "1" if precision == "bf16" else "0"}):
        trained = _workspace(*workspace).latent_diffusion
    return {part: {**fitted.record(), "best_val_loss": fitted.best_val_loss,
                   "seconds": sum(epoch["seconds"] for epoch in fitted.history)}
            for part, fitted in (("autoencoder", trained.autoencoder_fit), ("unet", trained.unet_fit))}


def sample(workspace: tuple, precision: str) -> tuple[torch.Tensor, float]:
    """The synthetic set in ``precision`` (a worker's job) and the seconds its sampling took."""
    ws = _workspace(*workspace)
    config, model = ws.profile.synthesis, ws.latent_diffusion.model
    conditions, _ = _conditions(ws)
    started = time.perf_counter()
    images = synthesis.generate(model, conditions, steps=config.sampling_steps,
                                guidance_scale=config.guidance_scale,
                                generator=torch.Generator().manual_seed(ws.seed + 1),
                                device=torch.device("cpu"), cpu_bf16=precision == "bf16", progress=False)
    return images, time.perf_counter() - started


def classifier_auc(workspace: tuple, images: torch.Tensor, classifier_seed: int, folder: str) -> dict:
    """Test mean AUC of the synthetic-only classifier trained on ``images`` with ``classifier_seed``."""
    ws = _workspace(*workspace)
    conditions, n_train = _conditions(ws)
    classifier, fitted = train_classifier(
        TensorItems(image=images[:n_train], labels=conditions[:n_train]),
        TensorItems(image=images[n_train:], labels=conditions[n_train:]), ws.profile.classifier, seed=classifier_seed, checkpoint_path=Path(folder) / "classifier", progress=False)
    probabilities, labels = predict(classifier, ws.images("test"), progress=False)
    return {"seed": classifier_seed, "mean_auc": multilabel_auc(labels, probabilities, n_bootstrap=0)["mean_auc"],
            **fitted.record()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", default="", help="a ChestX-ray14 folder (default: the profile's phantom)")
    parser.add_argument("--artifacts", default=str(Path(__file__).resolve().parents[1] / "artifacts"))
    parser.add_argument("--seed", type=int, default=42, help="the run's seed (which trained model, which draw)")
    parser.add_argument("--classifier-seeds", type=int, default=3)
    parser.add_argument("--training", action="store_true",
                        help="train the model in each precision, then sample both in bf16")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not cpu_computes_bf16():
        parser.error("this CPU does not compute bf16 in hardware: cxrlib computes in fp32 here, nothing to compare")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import this module by name
    trained = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.training:
            workspaces = {precision: (args.profile, args.data_dir,
                                      str(Path(args.artifacts) / "training-precision" / precision), args.seed, tmp)
                          for precision in PRECISIONS}
            trained = dict(zip(PRECISIONS, map_in_processes(train, [(workspaces[p], p) for p in PRECISIONS],
                                                            processes=2, desc="training")))
            sampling = {precision: "bf16" for precision in PRECISIONS}
        else:
            workspace = (args.profile, args.data_dir, args.artifacts, args.seed, tmp)
            _workspace(*workspace).latent_diffusion  # trained once here, not by both workers at once
            workspaces = {precision: workspace for precision in PRECISIONS}
            sampling = {precision: precision for precision in PRECISIONS}
        drawn = dict(zip(PRECISIONS, map_in_processes(
            sample, [(workspaces[p], sampling[p]) for p in PRECISIONS], processes=2, desc="sampling")))
        images = {precision: drawn[precision][0] for precision in PRECISIONS}
        jobs = [(workspaces[precision], images[precision], args.seed + offset, f"{tmp}/{precision}-{offset}")
                for precision in PRECISIONS for offset in range(args.classifier_seeds)]
        aucs = map_in_processes(classifier_auc, jobs, processes=2, desc="classifiers")
    figures = {"profile": args.profile, "seed": args.seed, "machine": machine_description(),
               "threads": worker_threads(2), "compared": "training" if args.training else "sampling",
               "images": len(images["fp32"]), "precisions": {}}
    if not args.training:  # two models' samples differ by more than precision
        difference = (images["bf16"] - images["fp32"]).abs()
        figures["pixels"] = {"mean_abs_difference": float(difference.mean()),
                             "max_abs_difference": float(difference.max()),
                             "share_off_by_an_8bit_level": float((difference > 0.5 / 255).float().mean())}
    print(f"{figures['images']} images, {figures['machine']['cpu']}, {figures['threads']} thread(s) per precision")
    for index, precision in enumerate(PRECISIONS):
        runs = aucs[index * args.classifier_seeds:(index + 1) * args.classifier_seeds]
        seconds = drawn[precision][1]
        rate = len(images[precision]) / seconds
        mean_auc = float(np.mean([run["mean_auc"] for run in runs]))
        figures["precisions"][precision] = {"sampling_seconds": seconds, "images_per_second": rate,
                                            "classifiers": runs, "mean_auc": mean_auc}
        if args.training:
            figures["precisions"][precision].update(trained[precision])
            for part, record in trained[precision].items():
                print(f"{precision}: {part} trained in {record['seconds']:.0f} s, best epoch {record['best_epoch']} "
                      f"of {record['epochs']}, validation loss {record['best_val_loss']:.4f}")
        print(f"{precision}: sampled in {seconds:.0f} s ({rate:.1f} img/s, U-Net in {sampling[precision]}); "
              f"synthetic-only classifier mean AUC {mean_auc:.4f} "
              f"(seeds {', '.join(format(run['mean_auc'], '.4f') for run in runs)})", flush=True)
    fp32, bf16 = (figures["precisions"][p] for p in PRECISIONS)
    figures["auc_difference"] = bf16["mean_auc"] - fp32["mean_auc"]
    if args.training:
        parts = ("autoencoder", "unet")
        figures["speedup"] = sum(fp32[part]["seconds"] for part in parts) / sum(bf16[part]["seconds"] for part in parts)
        print(f"bf16 trains {figures['speedup']:.2f}x as fast; AUC bf16 - fp32 {figures['auc_difference']:+.4f}")
    else:
        figures["speedup"] = fp32["sampling_seconds"] / bf16["sampling_seconds"]
        print(f"bf16 samples {figures['speedup']:.2f}x as fast; AUC bf16 - fp32 {figures['auc_difference']:+.4f}; "
              f"pixels differ by {figures['pixels']['mean_abs_difference']:.4f} on average "
              f"({figures['pixels']['share_off_by_an_8bit_level']:.1%} by more than half an 8-bit level)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
