"""Is the phantom a fair test of re-identification? One run prints every figure of issue 11's data side.

On a profile's phantom (default ``cpu``; generated fresh with the current renderer) and its held-out
(test-split) patients, as notebook 01 pairs them: the training-free baselines (image mean + sd,
19-quantile histogram, raw pixels: verification AUC on the balanced test pairs, retrieval P@1 every image
against all others), and the siamese network trained as notebook 01 trains it (``--runs`` seeds; AUC per
seed and mean). Targets: mean + sd and histogram AUC <= 0.62, raw-pixel P@1 <= 0.5, siamese AUC >= 0.90.
Also the phantom's generation time. Writes the figures as JSON with ``--json``.

    OMP_NUM_THREADS=1 python benchmarks/fair_test.py [--profile cpu] [--runs 3] [--first-run 0] [--json fair_test.json]

Trained models go to a temporary artifacts folder (every run trains afresh) unless ``--artifacts`` names one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cxrlib import reid  # noqa: E402
from cxrlib.config import load_profile  # noqa: E402
from cxrlib.workspace import Workspace, phantom_dir, project_root  # noqa: E402

TARGETS = {"mean_sd AUC": ("<=", 0.62), "histogram AUC": ("<=", 0.62), "raw_pixels P@1": ("<=", 0.5),
           "siamese AUC (mean)": (">=", 0.90)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3, help="siamese training runs (0: baselines only)")
    parser.add_argument("--first-run", type=int, default=0,
                        help="train runs first-run, first-run + 1, ... (seeds seed + run), so that several "
                             "processes can share the runs; the pairs always come from --seed")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="keep trained models here (a finished one is loaded, not retrained); default: "
                             "a temporary folder, so every run trains afresh")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    profile = load_profile(args.profile)
    folder = phantom_dir(profile, project_root())
    started = time.perf_counter()
    generated = not folder.is_dir()
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = args.artifacts or Path(scratch)
        ws = Workspace.open(profile, "", seed=args.seed, results_dir=Path(scratch) / "results",
                            artifacts_dir=artifacts, progress=False)
        generation_s = time.perf_counter() - started if generated else None
        config = ws.profile.verification
        wanted = {"train": config.train_pairs, "val": config.val_pairs, "test": config.test_pairs}
        pairs = {split: ws.pairs(split, n, "verification") for split, n in wanted.items()}
        test = ws.splits.test
        images = reid.Images.from_cache(ws.cache, test["image"])
        ids = test.set_index("image").loc[list(images.names), "patient_id"].to_numpy()
        baselines = {kind: {"verification_auc": cue["verification"]["auc"], **cue["retrieval"]}
                     for kind, cue in reid.identity_cues(images, pairs["test"], ids).items()}
        figures = {f"{kind} AUC": b["verification_auc"] for kind, b in baselines.items()}
        figures.update({f"{kind} P@1": b["precision_at_1"] for kind, b in baselines.items()})
        siamese = None
        if args.runs:
            train_s = time.perf_counter()
            siamese = reid.verification_runs(ws.pair_dataset(pairs["train"]), ws.pair_dataset(pairs["val"]), images,
                                             pairs["test"], config, seed=ws.seed + args.first_run, runs=args.runs,
                                             checkpoint_path=ws.artifact_path("siamese", "verification"),
                                             progress=False)
            siamese["seconds"] = time.perf_counter() - train_s
            figures["siamese AUC (mean)"] = siamese["mean"]["auc"]
    print(f"{ws.data_description}; test split {test['patient_id'].nunique()} patients, {len(test)} images, "
          f"{len(pairs['test'])} pairs")
    if generation_s is not None:
        print(f"phantom generated in {generation_s:.1f} s (with the loader's first read)")
    for name, value in figures.items():
        op, bound = TARGETS.get(name, (None, None))
        verdict = "" if op is None else (
            f"  target {op} {bound}: {'met' if (value <= bound if op == '<=' else value >= bound) else 'MISSED'}")
        print(f"  {name:22s} {value:.4f}{verdict}")
    if siamese is not None:
        print("  siamese per seed: " + ", ".join(f"seed {r['seed']}: AUC {r['auc']:.4f} (best epoch {r['best_epoch']})"
                                                for r in siamese["runs"]) + f"; {siamese['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "data": ws.data_description,
                                         "generation_s": generation_s, "baselines": baselines,
                                         "siamese": siamese, "figures": figures}, indent=2, default=float))


if __name__ == "__main__":
    main()
