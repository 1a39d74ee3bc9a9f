"""Time of ``cxrlib audit`` with the whole panel of linkage attacks on the cpu phantom.

Reads the folder (no burned-in text detection, which is timed by bench_publish.py), then times
:func:`cxrlib.publish.audit.audit_release` -- embedding with the retrieval network, the internal linkage,
and the panel (every attack of :data:`cxrlib.publish.linkage.AUDIT_ATTACKS`: nearest-neighbour search,
P@1 / mAP@R / R-precision, AUC with a patient-bootstrap CI) -- once internally and once ``--against``
the folder itself (the worst case for the search: a gallery as large as the release). The network is the
cpu profile's architecture, untrained unless ``--model`` is given; speed does not depend on the weights.

    python benchmarks/bench_audit.py [--data data/phantom/cpu_2000p_64px_8f_seed42_v4]
                                     [--model PATH.safetensors] [--bootstrap 200] [--json PATH]

Runs with every core (as ``cxrlib audit`` does) unless OMP_NUM_THREADS says otherwise, and writes its
figures to ``benchmarks/results/audit.json``, which the README's audit sentence is generated from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch

from cxrlib import reid
from cxrlib.config import load_profile
from cxrlib.publish.audit import audit_release, load_retrieval_network, read_release
from cxrlib.publish.linkage import AUDIT_ATTACKS
from cxrlib.runtime import machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/phantom/cpu_2000p_64px_8f_seed42_v4"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--skip-against", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/audit.json"))
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    machine = machine_description()
    profile = load_profile("cpu")
    model = load_retrieval_network(args.model) if args.model else \
        reid.build_retrieval_network(profile.retrieval).eval()
    started = time.perf_counter()
    release = read_release(args.data / "images" if (args.data / "images").is_dir() else args.data,
                           profile.data.image_size, detect_text=False, progress=False)
    read_s = time.perf_counter() - started
    print(f"{machine['cpu']}, {torch.get_num_threads()} torch thread(s); {len(release.patient_ids)} images at "
          f"{profile.data.image_size} px; panel: {', '.join(AUDIT_ATTACKS)}; {args.bootstrap} bootstrap resamples")
    print(f"read: {read_s:.1f} s")
    # the same audit on the first half of the images: how each part grows with the release's size
    half = len(release.patient_ids) // 2
    small = dataclasses.replace(release, images=reid.Images(release.images.names[:half], release.images.pixels[:half]),
                                patient_ids=release.patient_ids[:half], text_found=release.text_found[:half],
                                headers=release.headers[:half])
    small_result = audit_release(small, model, n_bootstrap=args.bootstrap)
    result = audit_release(release, model, n_bootstrap=args.bootstrap)
    print(f"audit (internal): {result['seconds']:.1f} s, of which the panel {result['panel_seconds']:.1f} s; "
          f"verdict: {result['verdict']['text']}")
    release_estimate = _extrapolate(small_result, result, half, len(release.patient_ids))
    figures = {"profile": profile.name, "machine": machine, "threads": torch.get_num_threads(),
               "images": len(release.patient_ids), "attacks": list(AUDIT_ATTACKS), "bootstrap": args.bootstrap,
               "read_seconds": read_s, "internal_seconds": result["seconds"],
               "internal_panel_seconds": result["panel_seconds"], "release_images": RELEASE_IMAGES,
               "release_estimate": release_estimate}
    if not args.skip_against:
        result = audit_release(release, model, against=release, n_bootstrap=args.bootstrap)
        print(f"audit (internal + against itself): {result['seconds']:.1f} s, of which the panel "
              f"{result['panel_seconds']:.1f} s")
        figures["against_seconds"] = result["seconds"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures written to {args.json}")


#: the images of the whole ChestX-ray14 release
RELEASE_IMAGES = 112_120


def _extrapolate(small: dict, large: dict, n_small: int, n_large: int) -> dict:
    """Each part's time at two sizes, its growth exponent p (t ~ N^p) from them, and the time it would take
    on the whole release at that exponent (the exhaustive searches grow as N^2; a measurement, not a model)."""
    scale = RELEASE_IMAGES / n_large
    small_attacks = small["attack_panel"]["internal"]["attacks"]
    large_attacks = large["attack_panel"]["internal"]["attacks"]
    # (name, seconds at half the images, at all of them)
    parts = [(figures["label"], small_attacks[kind]["seconds"], figures["seconds"])
             for kind, figures in large_attacks.items()]
    parts.append(("embedding, descriptors, clusters",
                  small["seconds"] - sum(f["seconds"] for f in small_attacks.values()),
                  large["seconds"] - sum(f["seconds"] for f in large_attacks.values())))
    print(f"growth from {n_small} to {n_large} images, extrapolated to the release ({RELEASE_IMAGES:,} images, "
          "growth exponent at least 1):")
    estimates = []  # (seconds on the release, name, exponent)
    for name, t_small, t_large in parts:
        p = math.log(max(t_large, 1e-6) / max(t_small, 1e-6)) / math.log(n_large / n_small)
        estimates.append((t_large * scale ** max(p, 1.0), name, p))
        print(f"  {name:40s} {t_small:7.2f} s -> {t_large:7.2f} s (p = {p:4.2f}); "
              f"{RELEASE_IMAGES:,} images: about {estimates[-1][0] / 60:6.1f} min")
    total = sum(estimate for estimate, _, _ in estimates)
    print(f"  the whole internal audit of the release: about {total / 3600:.1f} h on this machine")
    slowest = max(estimates)
    return {"total_seconds": total, "slowest_part": slowest[1], "slowest_part_seconds": slowest[0],
            "slowest_part_growth_exponent": slowest[2]}

if __name__ == "__main__":
    main()
