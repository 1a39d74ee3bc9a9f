"""How the latent diffusion model is trained, measured by what it costs and by the synthetic-only gap:
the profile's recipe against a U-Net trained to a fixed budget with a cosine learning-rate schedule
and batches balanced by finding, the same at a larger width in the same CPU time, and an autoencoder
with an edge term (the profile's U-Net recipe on top).

Every recipe (``--recipes``) trains its autoencoder and U-Net (``cxrlib.synthesis.train_latent_diffusion``
through a workspace whose profile differs only in its synthesis section, so the real classifier and
every part a recipe shares with another are trained once), then is judged as notebook 04 judges it,
over ``--classifier-seeds`` classifier seeds (default one; a recipe judged before keeps what it
trained): ``Workspace.gap_decomposition`` on notebook 04's synthetic set (its label vectors and
sampling seed, drawn without the privacy filter: ``bench_gap_decomposition.synthetic_set``), and the
Fréchet distance of the synthetic training images to the real test images in the real classifier's
features. The classifier trained on reconstructions depends on the autoencoder only, and is shared by
the recipes that share it.

* ``profile``: the profile's own recipe (constant learning rate, early stopping on the validation loss);
* ``cosine-balanced``: a cosine schedule over a fixed budget (the reference run's U-Net epochs, read
  from ``--reference-results``) and class-balanced batches (inverse prevalence);
* ``cosine``: the same schedule and budget with uniform batches, and ``cosine-sqrt-balanced`` with
  batches drawn by the square root of the inverse prevalence: which of the two changes does what;
* ``wider-cosine-balanced``: the same at one step wider (``--wider``), its epochs cut so that it costs
  about the CPU time of the budget (from a timed probe of both U-Nets' training steps);
* ``edges``: the autoencoder with an edge term (``--edge-weight``) under the profile's U-Net recipe.

Several processes may run side by side on the same ``--work`` folder (``--recipes`` split between them):
a lock per trained part makes one of them train it and the others wait and load it.

    OMP_NUM_THREADS=1 python benchmarks/bench_ldm_recipe.py --recipes profile wider-cosine-balanced \\
        --json benchmarks/results/ldm_recipe.json &
    OMP_NUM_THREADS=1 python benchmarks/bench_ldm_recipe.py --recipes edges cosine-balanced \\
        --json benchmarks/results/ldm_recipe.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from bench_gap_decomposition import synthetic_set
from cxrlib import synthesis
from cxrlib.artifacts import tensor_digest
from cxrlib.classify import train_classifier
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems
from cxrlib.data.images import Images
from cxrlib.metrics import PenultimateFeatures, frechet_distance
from cxrlib.models.diffusion import build_noise_scheduler, build_unet, downsampling_factor
from cxrlib.runtime import machine_description
from cxrlib.synthesis.training import artifact_names, diffusion_loss
from cxrlib.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
#: the recipes on the cosine schedule at the profile's widths, by the power of their batches' balance
COSINE_BALANCE = {"cosine-balanced": 1.0, "cosine": 0.0, "cosine-sqrt-balanced": 0.5}
RECIPES = ("profile", *COSINE_BALANCE, "wider-cosine-balanced", "edges")


def reference_unet_epochs(results: Path) -> int:
    """The epochs the reference run's U-Net trained (``synthesis.json``): the fixed budget."""
    return int(json.loads((results / "synthesis.json").read_text())["unet"]["training"]["epochs"])


def seconds_per_step(config, image_size: int, latent_shape: tuple[int, ...], steps: int = 20) -> float:
    """CPU seconds of one U-Net training step (forward, backward, AdamW) at the config's batch size."""
    torch.manual_seed(0)
    unet, scheduler = build_unet(config, image_size), build_noise_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr)
    batch = {"mean": torch.randn(config.batch_size, *latent_shape), "std": torch.full((config.batch_size, *latent_shape), 0.1),
             "labels": (torch.rand(config.batch_size, len(LABELS)) < 0.1).float()}
    for step in range(steps + 3):
        if step == 3:  # the first steps allocate
            began = time.process_time()
        loss = diffusion_loss(unet, batch, scheduler=scheduler, scaling_factor=1.0,
                              condition_dropout=config.condition_dropout, min_snr_gamma=config.min_snr_gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.process_time() - began) / steps


def recipe_config(name: str, base, budget: int, wider: tuple[int, ...], edge_weight: float, image_size: int,
                  latent_shape: tuple[int, ...], wider_epochs: int | None = None) -> tuple[object, dict]:
    """The synthesis section of a recipe and what was decided for it. The wider U-Net's epochs come from
    a timed probe, which moves with the machine's load: ``wider_epochs`` fixes them instead."""
    scheduled = dict(unet_lr_schedule="cosine", unet_epochs=budget, unet_class_balance=1.0,
                     unet_warmup_steps=200)
    if name == "profile":
        return base, {}
    if name in COSINE_BALANCE:
        return (dataclasses.replace(base, **{**scheduled, "unet_class_balance": COSINE_BALANCE[name]}),
                {"budget_epochs": budget})
    if name == "wider-cosine-balanced":
        wide_config = dataclasses.replace(base, **scheduled, unet_channels=wider)
        if wider_epochs:  # an earlier probe's choice: the same model, judged again
            return dataclasses.replace(wide_config, unet_epochs=wider_epochs), {"budget_epochs": budget}
        narrow = seconds_per_step(dataclasses.replace(base, **scheduled), image_size, latent_shape)
        wide = seconds_per_step(wide_config, image_size, latent_shape)
        epochs = max(1, round(budget * narrow / wide))
        return dataclasses.replace(wide_config, unet_epochs=epochs), {
            "budget_epochs": budget, "seconds_per_step": {"narrow": narrow, "wider": wide}}
    if name == "edges":
        return dataclasses.replace(base, autoencoder_edge_weight=edge_weight), {}
    raise ValueError(f"unknown recipe {name!r}; known: {RECIPES}")


@contextlib.contextmanager
def locked(folder: Path, name: str):
    """One process at a time trains ``name``; the others wait, then find it trained."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fit_record(fit) -> dict:
    return {**fit.record(), "best_val_loss": fit.best_val_loss, "trained_here": fit.trained,
            "seconds": round(sum(epoch.get("seconds", 0.0) for epoch in fit.history), 1)}


def write_merged(path: Path, figures: dict) -> None:
    """Write ``figures`` to ``path``, keeping the recipes another process (or an earlier run of the same
    profile, seed and budget) wrote there; each recipe carries the machine that measured it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the lock beside the system's temporary files, not in the results folder
    with locked(Path(tempfile.gettempdir()), f"cxrlib-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"):
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        same = all(earlier.get(key) == figures[key] for key in ("profile", "seed", "budget_epochs"))
        recipes = dict(earlier.get("recipes", {}) if same else {})
        for name, recipe in figures["recipes"].items():
            recipe = json.loads(json.dumps({"machine": figures["machine"], **recipe}))  # tuples as the file has them
            before = recipes.get(name)
            loaded = not (recipe["training"]["autoencoder"]["trained_here"] or recipe["training"]["unet"]["trained_here"])
            if loaded and before is not None and before["settings"] == recipe["settings"]:
                # judged again on a model trained before: what the training cost (and its probe, if any) is the
                # earlier record's
                recipe = {**before, **recipe, "training": before["training"], "machine": before["machine"]}
            recipes[name] = recipe
        merged = {**figures, "recipes": recipes,
                  "wall_seconds": max(figures.get("wall_seconds", 0.0), earlier.get("wall_seconds", 0.0) if same else 0.0)}
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(merged, indent=1) + "\n")
        temporary.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ldm-recipe"),
                        help="artifacts folder for everything trained here (shared by side-by-side processes)")
    parser.add_argument("--reference-results", type=Path, default=ROOT / "results" / "cpu",
                        help="the reference run's results folder: its U-Net's epochs are the fixed budget")
    parser.add_argument("--wider", nargs="+", type=int, default=[48, 96, 96])
    parser.add_argument("--edge-weight", type=float, default=1.0)
    parser.add_argument("--wider-epochs", type=int, default=None,
                        help="the wider U-Net's epochs instead of a timed probe's (to judge a trained one again: its "
                             "settings.unet_epochs in the JSON)")
    parser.add_argument("--classifier-seeds", type=int, default=1,
                        help="classifier seeds of each recipe's decomposition (a recipe judged before keeps its classifiers)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures here, beside the recipes already there (same profile, seed, budget)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="only merge these JSON files of earlier runs into --json")
    args = parser.parse_args(argv)
    if args.merge:
        if args.json is None:
            parser.error("--merge writes into --json")
        for path in args.merge:
            write_merged(args.json, json.loads(path.read_text()))
        return
    torch.set_num_threads(1)
    started = time.perf_counter()

    budget = reference_unet_epochs(args.reference_results)
    locks = args.work / "locks"
    with locked(locks, "data"):  # the phantom and its image cache are written on first use
        base_ws = Workspace.open(args.profile, seed=args.seed, artifacts_dir=args.work,
                                 results_dir=args.work / "results")
        test_images = Images.from_cache(base_ws.cache, base_ws.splits.test["image"]).tensor()
    base, size = base_ws.profile.synthesis, base_ws.profile.image_size
    features = None
    print(f"fixed budget: {budget} epochs (the reference run's U-Net, {args.reference_results})", flush=True)

    figures = {"profile": args.profile, "seed": args.seed, "machine": machine_description(),
               "threads": torch.get_num_threads(), "budget_epochs": budget, "recipes": {}}
    side = size // downsampling_factor(base)
    seeds = [args.seed + offset for offset in range(args.classifier_seeds)]
    for name in args.recipes:
        config, decided = recipe_config(name, base, budget, tuple(args.wider), args.edge_weight, size,
                                        (base.latent_channels, side, side), args.wider_epochs)
        ws = Workspace.open(dataclasses.replace(base_ws.profile, synthesis=config), seed=args.seed,
                            artifacts_dir=args.work, results_dir=args.work / "results")
        names = artifact_names(config, size)
        autoencoder_name = names["autoencoder"]
        began, cpu_began = time.perf_counter(), time.process_time()
        # the autoencoder alone first: recipes that share it wait for its training, not for each other's U-Net
        with locked(locks, autoencoder_name):
            _, autoencoder_fit = synthesis.train_autoencoder(
                ws.images("train"), ws.images("val"), config, size, seed=args.seed,
                checkpoint_path=ws.artifact_path(autoencoder_name), progress=False)
        with locked(locks, names["model"]):
            trained = ws.latent_diffusion
        training = {"wall_seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu_began,
                    "autoencoder": fit_record(autoencoder_fit), "unet": fit_record(trained.unet_fit)}
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: trained in {training['cpu_seconds'] / 60:.1f} "
              f"CPU min (U-Net {training['unet']['epochs']} epochs, best val {training['unet']['best_val_loss']:.4f})",
              flush=True)
        model = trained.model
        images, labels, n_train = synthetic_set(ws, model, trained.folder)
        key = tensor_digest(images, labels)
        if features is None:  # the real classifiers, wanted first here (another process may be training them)
            with locked(locks, "classifier"):
                features = PenultimateFeatures(base_ws.classifier[0])
            for seed in seeds[1:]:
                with locked(locks, f"classifier-seed{seed}"):
                    train_classifier(base_ws.images("train"), base_ws.images("val"), base_ws.profile.classifier,
                                     checkpoint_path=base_ws.classifier_path(seed=seed), seed=seed, progress=False)
        with locked(locks, f"reconstructed-{autoencoder_name}"):
            decomposition = ws.gap_decomposition(
                model, model_name=autoencoder_name,  # the reconstructions depend on the autoencoder alone
                synthetic_train=TensorItems(image=images[:n_train], labels=labels[:n_train]),
                synthetic_val=TensorItems(image=images[n_train:], labels=labels[n_train:]), synthetic_key=key,
                seeds=seeds)
        _, reconstruction = synthesis.reconstruction_quality(
            model, Images.from_cache(ws.cache, ws.splits.val["image"]).tensor())
        summary = decomposition.summary()
        result = {"settings": {field: getattr(config, field) for field in
                               ("unet_channels", "unet_epochs", "unet_lr", "unet_lr_schedule", "unet_warmup_steps",
                                "unet_class_balance", "autoencoder_edge_weight", "patience", "min_improvement")},
                  **decided, "training": training, "validation_reconstruction": reconstruction,
                  "frechet_distance": frechet_distance(test_images, images[:n_train], features),
                  "worst_findings": decomposition.worst_findings(), "summary": summary,
                  "decomposition": decomposition.to_json()}
        figures["recipes"][name] = result
        gaps = summary["gap_points"]
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: synthetic-only gap {gaps['synthetic_only']['mean']:.1f} "
              f"points (autoencoder {gaps['autoencoder_in_training']['mean']:.1f}, generator {gaps['generator']['mean']:.1f}), "
              f"rendering AUC {summary['rendering_auc']['mean']:.3f}, Fréchet {result['frechet_distance']:.2f}, "
              f"PSNR {reconstruction['psnr']:.2f} dB", flush=True)
        if args.json:  # after every recipe, so that a long run leaves what it finished
            figures["wall_seconds"] = time.perf_counter() - started
            write_merged(args.json, figures)


if __name__ == "__main__":
    main()
