"""The synthetic-only gap of notebook 04 decomposed (``cxrlib.synthesis.gap_decomposition``): the real
classifier on real and on reconstructed test images, a classifier trained on reconstructed training
images and the synthetic-only classifier, per finding, over ``--classifier-seeds`` seeds; and how well
each finding is rendered (the real classifier's AUC on the synthetic set against its drawn labels).

It runs on a finished run's trained latent diffusion model and real classifier (``--reference``: the
run's artifacts folder of the profile's phantom, read only; the two are copied into ``--work``, where
the new classifiers are trained and the synthetic set is kept, so that a second run reuses them).
The real classifier of the workspace seed is the reference run's; the other seeds' are trained here
with the same recipe.

What differs from notebook 04: the synthetic set is notebook 04's conditions with its sampling seed,
drawn with ``cxrlib.synthesis.generate`` without the privacy filter. Its first draw is the sampler's,
so the images the filter accepts are notebook 04's; the few it would reject and draw again (4.7 % in
the reference run) are kept as first drawn.

    OMP_NUM_THREADS=1 python benchmarks/bench_gap_decomposition.py [--classifier-seeds 3] \\
        [--json benchmarks/results/gap_decomposition.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cxrlib import synthesis
from cxrlib.artifacts import read_sidecar, tensor_digest
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems
from cxrlib.models.diffusion import LatentDiffusion
from cxrlib.runtime import machine_description
from cxrlib.workspace import Workspace

#: where run_all.sh keeps trained models (ROOT/artifacts), as cxrlib run does
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _copy_reference(reference: Path, ws: Workspace) -> Path:
    """The reference run's latent diffusion folder and real classifier, copied where the workspace
    looks for them (nothing is written to the reference); the copied model's folder."""
    real = ws.classifier_path()
    folders = sorted(p for p in reference.glob(f"ldm-*-seed{ws.seed}") if (p / "unet").is_dir())
    if len(folders) != 1:
        raise SystemExit(f"{reference}: expected one saved latent diffusion model, found {[p.name for p in folders]}")
    ldm = real.parent / folders[0].name
    if not ldm.is_dir():
        shutil.copytree(folders[0], ldm)
    for suffix in (".safetensors", ".json"):
        target = real.with_name(real.name + suffix)
        if not target.is_file():
            shutil.copy2(reference / target.name, target)
    return ldm


def synthetic_set(ws: Workspace, model: LatentDiffusion, ldm: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Notebook 04's synthetic conditions, one image each from its sampling seed (kept in ``--work``)."""
    splits, config = ws.splits, ws.profile.synthesis
    conditions, n_train = synthesis.synthetic_set_conditions(
        splits.train[list(LABELS)].to_numpy(dtype=np.float32), splits.val[list(LABELS)].to_numpy(dtype=np.float32),
        config.synthetic_images, seed=ws.seed)
    path = ldm.parent / f"synthetic-{ldm.name}-{tensor_digest(conditions)}.pt"
    if not path.is_file():
        images = synthesis.generate(model, conditions, steps=config.sampling_steps,
                                    guidance_scale=config.guidance_scale,
                                    generator=torch.Generator().manual_seed(ws.seed + 1), progress=False)
        torch.save({"images": images, "labels": conditions.float()}, path)
    saved = torch.load(path)
    return saved["images"], saved["labels"], n_train


def _fit_record(path: Path) -> dict:
    sidecar = read_sidecar(path)
    history = sidecar.get("history", [])
    return {"epochs": len(history), "best_epoch": sidecar.get("epoch"),
            "seconds": round(sum(h.get("seconds", 0.0) for h in history), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a finished run's artifacts folder of the data (default: the run's under ROOT/artifacts)")
    parser.add_argument("--work", default="/tmp/gap-decomposition", help="artifacts folder for what is trained here")
    parser.add_argument("--classifier-seeds", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/gap_decomposition.json")
    args = parser.parse_args()

    started = time.perf_counter()
    ws = Workspace.open(args.profile, artifacts_dir=args.work, results_dir=Path(args.work) / "results")
    reference = args.reference or Workspace.open(args.profile, artifacts_dir=ARTIFACTS).models_dir
    ldm = _copy_reference(Path(reference), ws)
    model = LatentDiffusion.load(ldm)
    seeds = [ws.seed + i for i in range(args.classifier_seeds)]

    drawn = time.perf_counter()
    images, labels, n_train = synthetic_set(ws, model, ldm)
    drawing_seconds = time.perf_counter() - drawn
    synthetic_key = tensor_digest(images, labels)

    # the workspace seed's real classifier is the reference run's (copied above)
    trained_on = {"real": "", "reconstructed": f"reconstructed-{ldm.name}", "synthetic": f"synthetic-{synthetic_key}"}
    decomposed = time.perf_counter()
    result = ws.gap_decomposition(
        model, model_name=ldm.name, synthetic_train=TensorItems(image=images[:n_train], labels=labels[:n_train]),
        synthetic_val=TensorItems(image=images[n_train:], labels=labels[n_train:]), synthetic_key=synthetic_key,
        seeds=seeds)
    summary = result.summary()

    payload = {
        "machine": machine_description(), "threads": torch.get_num_threads(),
        "profile": args.profile, "data": ws.data_description, "reference": str(args.reference),
        "latent_diffusion": ldm.name,
        "synthetic_set": {"images": len(images), "training": n_train, "validation": len(images) - n_train,
                          "sampling_steps": ws.profile.synthesis.sampling_steps,
                          "guidance_scale": ws.profile.synthesis.guidance_scale, "privacy_filter": False,
                          "sampling_seed": ws.seed + 1},
        # the workspace seed's real classifier was trained in the reference run, on its machine
        "classifiers": {kind: {str(seed): {**_fit_record(ws.classifier_path(trained_on[kind], seed=seed)),
                                           "from_reference": kind == "real" and seed == ws.seed}
                               for seed in seeds}
                        for kind in ("real", "reconstructed", "synthetic")},
        "seconds": {"drawing": round(drawing_seconds, 1),
                    "decomposition": round(time.perf_counter() - decomposed, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "worst_findings": result.worst_findings(),
        "summary": summary,
        "decomposition": result.to_json(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    for part in synthesis.decomposition.PARTS:
        auc = summary["auc"][part]
        print(f"{part:>22}: mean AUC {auc['mean']:.3f} ± {auc['std']:.3f}")
    for name in synthesis.decomposition.GAPS:
        gap = summary["gap_points"][name]
        print(f"{name:>22}: {gap['mean']:.1f} ± {gap['std']:.1f} points")
    print(f"worst findings (synthetic only): {payload['worst_findings']}; wrote {args.json}")


if __name__ == "__main__":
    main()
