"""Time of ``cxrlib audit`` with the whole panel of linkage attacks on the cpu phantom.

Reads the folder (no burned-in text detection, which is timed by bench_publish.py), then times
:func:`cxrlib.publish.audit.audit_release` -- embedding with the retrieval network, the internal linkage,
and the panel (every attack of :data:`cxrlib.publish.linkage.AUDIT_ATTACKS`: nearest-neighbour search,
P@1 / mAP@R / R-precision, AUC with a patient-bootstrap CI) -- once internally and once ``--against``
the folder itself (the worst case for the search: a gallery as large as the release). The network is the
cpu profile's architecture, untrained unless ``--model`` is given; speed does not depend on the weights.

    OMP_NUM_THREADS=1 python benchmarks/bench_audit.py [--data data/phantom/cpu_2000p_64px_8f_seed42_v4]
                                                       [--model PATH.safetensors] [--bootstrap 200]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cxrlib import reid  # noqa: E402
from cxrlib.config import load_profile  # noqa: E402
from cxrlib.publish.audit import audit_release, load_retrieval_network, read_release  # noqa: E402
from cxrlib.publish.linkage import AUDIT_ATTACKS  # noqa: E402


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/phantom/cpu_2000p_64px_8f_seed42_v4"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--skip-against", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    profile = load_profile("cpu")
    model = load_retrieval_network(args.model) if args.model else \
        reid.build_retrieval_network(profile.retrieval).eval()
    started = time.perf_counter()
    release = read_release(args.data / "images" if (args.data / "images").is_dir() else args.data,
                           profile.data.image_size, detect_text=False, progress=False)
    read_s = time.perf_counter() - started
    print(f"{_cpu()}, {torch.get_num_threads()} torch thread(s); {len(release.patient_ids)} images at "
          f"{profile.data.image_size} px; panel: {', '.join(AUDIT_ATTACKS)}; {args.bootstrap} bootstrap resamples")
    print(f"read: {read_s:.1f} s")
    result = audit_release(release, model, n_bootstrap=args.bootstrap)
    print(f"audit (internal): {result['seconds']:.1f} s, of which the panel {result['panel_seconds']:.1f} s; "
          f"verdict: {result['verdict']['text']}")
    if not args.skip_against:
        result = audit_release(release, model, against=release, n_bootstrap=args.bootstrap)
        print(f"audit (internal + against itself): {result['seconds']:.1f} s, of which the panel "
              f"{result['panel_seconds']:.1f} s")


if __name__ == "__main__":
    main()
