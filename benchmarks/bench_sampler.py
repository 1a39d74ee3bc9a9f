"""The latent diffusion model's sampler: DDIM against DPM-Solver++, guidance scale by step count, and
guidance rescaling, measured on the trained model of a run (nothing is trained here).

Every setting draws images for the same label vectors from the same initial noise (one seed), with
``cxrlib.synthesis.generate`` and without the privacy filter, and is judged by the run's classifier
trained on real images:

* Fréchet distance in that classifier's penultimate features to the real test images
  (``cxrlib.metrics.frechet_distance``, as notebook 04 measures it);
* rendering: the classifier's AUC on the synthetic images against the labels they were drawn for,
  per finding and their mean (``cxrlib.metrics.multilabel_auc``): does a finding asked for show?
* seconds per image on one thread.

The label vectors are the training split's (notebook 04 draws its synthetic set from them), the
rarest findings first until each has ``--min-positives`` positives where the split has as many, then a
seeded draw of the rest. The rare findings are thus over-represented; the real training images of the
same label vectors, measured the same way, are the reference (their Fréchet distance is the floor
under that label mix; their AUC is optimistic, the classifier having trained on them; its AUC on the
real test images is recorded beside it).
``--images`` (default: as many as ``--budget-minutes`` allows, from a timed probe) caps the count.

After the sweep (``--samplers`` x ``--scales`` x ``--steps``), guidance rescale ``--rescale`` at the
profile's setting and at the best one (the lowest sum of its Fréchet and rendering ranks); then the
profile's setting from ``--spread-seeds`` other seeds, how far the figures move by the draw alone;
last, each sampler at each step count timed side by side (``--timing-repeats`` rounds; ``--only-timing``
adds them to an earlier run's JSON), since on a shared machine the sweep's own times drift with the load.

    python benchmarks/bench_sampler.py [--artifacts DIR] [--data-dir DIR] [--json benchmarks/results/sampler_sweep.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from cxrlib.artifacts import exists, load_weights
from cxrlib.classify import build_classifier, predict
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.images import Images
from cxrlib.data.datasets import TensorItems
from cxrlib.metrics import PenultimateFeatures, frechet_distance, multilabel_auc
from cxrlib.models.diffusion import SAMPLERS, LatentDiffusion
from cxrlib.synthesis import generate
from cxrlib.runtime import machine_description
from cxrlib.workspace import Workspace

#: where run_all.sh keeps trained models (ROOT/artifacts), as cxrlib run does
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CPU = torch.device("cpu")


def label_vectors_with_positives(labels: np.ndarray, min_positives: int, seed: int) -> np.ndarray:
    """Row indices of ``labels`` (N, 14): first, rarest finding first, seeded draws of rows positive for
    each finding until it has ``min_positives`` positives among the chosen rows (or all the rows it has);
    then every other row in a seeded order. Any prefix of the result is a valid smaller choice, the
    rare findings' rows leading."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(len(labels), dtype=bool)
    for finding in np.argsort(labels.sum(0), kind="stable"):
        missing = max(min_positives - int(labels[chosen, finding].sum()), 0)
        picked = rng.permutation(np.flatnonzero((labels[:, finding] > 0) & ~taken))[:missing]
        chosen.extend(picked.tolist())
        taken[picked] = True
    chosen.extend(rng.permutation(np.flatnonzero(~taken)).tolist())
    return np.asarray(chosen)


def load_classifier(workspace: Workspace, path: Path) -> torch.nn.Module:
    """The classifier trained on real images, from its saved weights (checked against the profile)."""
    model = build_classifier(workspace.profile.classifier)
    load_weights(model, path, config={"classifier": dataclasses.asdict(workspace.profile.classifier)})
    return model.eval()


def judge(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor, classifier: torch.nn.Module,
          features: PenultimateFeatures) -> dict:
    """Fréchet distance of ``images`` to the test images, and the classifier's AUC against ``labels``."""
    probabilities, _ = predict(classifier, TensorItems(image=images, labels=labels), progress=False)
    auc = multilabel_auc(labels.numpy(), probabilities, n_bootstrap=0)
    return {"frechet_distance": frechet_distance(test_images, images, features, device=CPU),
            "rendering_auc": auc["mean_auc"], "rendering_auc_per_finding": auc["per_class"],
            "findings_without_auc": auc["excluded"]}


def best_by_ranks(runs: list[dict]) -> dict:
    """The run with the lowest sum of its Fréchet-distance rank and its rendering-AUC rank (the faster
    on a tie): neither criterion alone, since a strong guidance can render findings at the cost of
    realism."""
    def ranks(values: list[float]) -> np.ndarray:  # how many runs do better; equal values share a rank
        values = np.asarray(values)
        return (values[None, :] < values[:, None]).sum(1)

    rank_sums = ranks([run["frechet_distance"] for run in runs]) + ranks([-run["rendering_auc"] for run in runs])
    return runs[min(range(len(runs)), key=lambda i: (rank_sums[i], runs[i]["seconds_per_image"]))]


def interleaved_seconds_per_image(draw, samplers: list[str], steps: list[int], guidance_scale: float,
                                  labels: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per image of each sampler at each step count: the fastest of ``repeats`` rounds that each
    draw every setting in turn. On a machine shared with other jobs the sweep's own times drift with
    their load; the least disturbed round comes closest to what the sampler itself costs."""
    fastest: dict[tuple[str, int], float] = {}
    for _ in range(repeats):
        for sampler in samplers:
            for count in steps:
                _, seconds = draw({"sampler": sampler, "guidance_scale": guidance_scale, "steps": count}, labels)
                fastest[sampler, count] = min(fastest.get((sampler, count), float("inf")), seconds / len(labels))
    return {sampler: {str(count): fastest[sampler, count] for count in steps} for sampler in samplers}


def trained_latent_diffusion(ws: Workspace) -> Path:
    """The one latent diffusion model of the run (its profile, data and seed) in the workspace's
    artifacts (its autoencoder's and U-Net's checkpoints lie beside it)."""
    folder = ws.models_dir
    found = [p for p in folder.glob(f"ldm-*-seed{ws.seed}") if (p / "unet").is_dir()]
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one trained latent diffusion model of seed {ws.seed}, found "
                         f"{[p.name for p in found]}; run ./run_all.sh first or pass its path")
    return found[0]


def trained_classifier(ws: Workspace) -> Path:
    """The run's classifier trained on real images (``Workspace.classifier_path``; its weights and
    sidecar, as :func:`cxrlib.artifacts.exists` checks them)."""
    path = ws.classifier_path()
    if not exists(path):
        raise SystemExit(f"{path}: no trained classifier; run ./run_all.sh first or pass its path")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", default="", help="a ChestX-ray14 folder (default: the profile's phantom)")
    parser.add_argument("--seed", type=int, default=42, help="the run's seed (its splits, the draws)")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS,
                        help="where the run keeps its trained models (default ROOT/artifacts, as run_all.sh)")
    parser.add_argument("--ldm", type=Path, default=None,
                        help="the saved latent diffusion model's folder (default: the run's, from --artifacts)")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="the real-image classifier's weights (default: the run's, from --artifacts)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--scales", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 15, 25])
    parser.add_argument("--rescale", type=float, default=0.7, help="the guidance rescale tried (0: none)")
    parser.add_argument("--min-positives", type=int, default=20)
    parser.add_argument("--spread-seeds", type=int, default=3,
                        help="other seeds the profile's setting is drawn from, to show the draw's own spread")
    parser.add_argument("--images", type=int, default=None, help="label vectors drawn for (default: the budget's)")
    parser.add_argument("--budget-minutes", type=float, default=25.0)
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="rounds of the side-by-side timing of the samplers (0: none)")
    parser.add_argument("--timing-images", type=int, default=32)
    parser.add_argument("--only-timing", action="store_true",
                        help="only the side-by-side timing, added to the figures already in --json")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    ws = Workspace.open(args.profile, args.data_dir, seed=args.seed, artifacts_dir=args.artifacts)
    config = ws.profile.synthesis
    model = LatentDiffusion.load(args.ldm or trained_latent_diffusion(ws))
    classifier = load_classifier(ws, args.classifier or trained_classifier(ws))
    features = PenultimateFeatures(classifier)
    test_images = Images.from_cache(ws.cache, ws.splits.test["image"]).tensor()
    train = ws.splits.train
    order = label_vectors_with_positives(train[list(LABELS)].to_numpy(dtype=np.float32), args.min_positives, ws.seed)
    current = {"sampler": "ddim", "guidance_scale": config.guidance_scale, "steps": config.sampling_steps}
    grid = [{"sampler": sampler, "guidance_scale": scale, "steps": steps}
            for sampler in args.samplers for scale in args.scales for steps in args.steps]

    def draw(setting: dict, labels: torch.Tensor, guidance_rescale: float = 0.0,
             seed: int = ws.seed) -> tuple[torch.Tensor, float]:
        began = time.perf_counter()
        images = generate(model, labels, steps=setting["steps"], guidance_scale=setting["guidance_scale"],
                          sampler=setting["sampler"], guidance_rescale=guidance_rescale,
                          generator=torch.Generator().manual_seed(seed), device=CPU, progress=False)
        return images, time.perf_counter() - began

    def timing() -> dict:
        labels = torch.from_numpy(train[list(LABELS)].to_numpy(dtype=np.float32)[order[:args.timing_images]])
        print(f"timing the samplers side by side, {args.timing_repeats} rounds of {len(labels)} images", flush=True)
        return {"images": len(labels), "repeats": args.timing_repeats, "guidance_scale": current["guidance_scale"],
                "seconds_per_image": interleaved_seconds_per_image(
                    draw, args.samplers, args.steps, current["guidance_scale"], labels, args.timing_repeats)}

    if args.only_timing:
        if args.json is None or not args.json.is_file():
            parser.error("--only-timing adds to the figures of an earlier run: give their --json")
        figures = json.loads(args.json.read_text())
        figures["timing"] = timing()
        args.json.write_text(json.dumps(figures, indent=1))
        print(figures["timing"])
        return

    images_count = args.images
    if images_count is None:
        # the U-Net's steps dominate: a probe at the profile's setting times one image-step
        probe = torch.from_numpy(train[list(LABELS)].to_numpy(dtype=np.float32)[order[:32]])
        _, seconds = draw(current, probe)
        per_image_step = seconds / (len(probe) * current["steps"])
        # the grid, the two rescaled settings, the profile's setting from the other seeds
        image_steps = sum(s["steps"] for s in grid) + current["steps"] + max(args.steps) \
            + args.spread_seeds * current["steps"]
        judging = 0.15  # Fréchet distance and AUC, a share of the time, from a first run
        images_count = int(args.budget_minutes * 60 * (1 - judging) / (per_image_step * image_steps))
        print(f"probe: {per_image_step * 1000:.1f} ms per image and step; {image_steps} image-steps per image "
              f"in the sweep -> {images_count} images for {args.budget_minutes:g} min", flush=True)
    rows = order[:min(images_count, len(order))]
    labels = torch.from_numpy(train[list(LABELS)].to_numpy(dtype=np.float32)[rows])
    positives = dict(zip(LABELS, labels.sum(0).int().tolist()))
    print(f"{len(rows)} label vectors of the training split; positives per finding: {positives}", flush=True)

    real = Images.from_cache(ws.cache, train["image"].iloc[rows]).tensor()
    reference = judge(real, labels, test_images, classifier, features)
    test_labels = torch.from_numpy(ws.splits.test[list(LABELS)].to_numpy(dtype=np.float32))
    on_test = multilabel_auc(test_labels.numpy(), predict(classifier, TensorItems(image=test_images, labels=test_labels),
                                                          progress=False)[0], n_bootstrap=0)
    print(f"real training images of these labels: Fréchet distance {reference['frechet_distance']:.2f}, "
          f"rendering AUC {reference['rendering_auc']:.3f} (seen in training); the classifier's test AUC "
          f"{on_test['mean_auc']:.3f}", flush=True)

    def measure(setting: dict, guidance_rescale: float = 0.0, seed: int = ws.seed) -> dict:
        images, seconds = draw(setting, labels, guidance_rescale, seed)
        run = {**setting, "guidance_rescale": guidance_rescale, "seed": seed, "seconds": seconds,
               "seconds_per_image": seconds / len(labels), **judge(images, labels, test_images, classifier, features)}
        print(f"[{time.perf_counter() - started:5.0f} s] {run['sampler']:4} scale {run['guidance_scale']:g} "
              f"steps {run['steps']:2d} rescale {guidance_rescale:g} seed {seed}: Fréchet {run['frechet_distance']:7.2f}, "
              f"rendering AUC {run['rendering_auc']:.3f}, {run['seconds_per_image']:.3f} s/image", flush=True)
        return run

    runs = [measure(setting) for setting in grid]
    best = best_by_ranks(runs)
    best_setting = {key: best[key] for key in ("sampler", "guidance_scale", "steps")}
    rescaled = [measure(setting, args.rescale) for setting in
                ([current] if best_setting == current else [current, best_setting])] if args.rescale else []
    # the same setting from other seeds: how far the figures move by the draw alone
    again = [measure(current, seed=ws.seed + 1 + k) for k in range(args.spread_seeds)]
    at_current = [run for run in runs if {key: run[key] for key in current} == current] + again
    spread = {"setting": current, "seeds": [run["seed"] for run in at_current],
              "frechet_distance": [run["frechet_distance"] for run in at_current],
              "rendering_auc": [run["rendering_auc"] for run in at_current]}
    side_by_side = {"timing": timing()} if args.timing_repeats else {}
    figures = {"profile": args.profile, "seed": ws.seed, "machine": machine_description(),
               "threads": torch.get_num_threads(), "ldm": args.ldm, "classifier": args.classifier,
               "label_source": "training split", "images": len(rows), "test_images": len(test_images),
               "min_positives": args.min_positives, "positives": positives,
               "profile_setting": current, "best_by_ranks": best_setting,
               "real_training_images": reference,
               "real_test_images": {"auc": on_test["mean_auc"], "auc_per_finding": on_test["per_class"],
                                    "findings_without_auc": on_test["excluded"]},
               "runs": runs + rescaled, "seed_spread": spread, **side_by_side,
               "wall_seconds": time.perf_counter() - started}
    print(f"best by the sum of ranks: {best_setting}; the sweep took {figures['wall_seconds'] / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
