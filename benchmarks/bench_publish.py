"""Speed of the publisher's commands on this CPU.

Prints the throughput (images/s) of ``cxrlib anonymize`` per pixel method on phantom DICOM files of
256 and 1024 px (the whole per-file work: read, hash, header de-identification, burned-in text
detection, the method, write, manifest), and the time of ``cxrlib audit`` on a phantom folder
(default: the ``cpu`` profile's phantom, generated if missing). The learned methods run at the size
of the ``cpu`` profile's networks (64 px) with its architectures, untrained unless ``--artifacts``
holds trained ones; speed does not depend on the weights.

With ``--processes N`` each method also runs as a user would spread it over N cores, ``torchrun
--nproc_per_node N -m cxrlib anonymize`` (one thread per process; the wall time includes the
processes' start-up).

    OMP_NUM_THREADS=1 python benchmarks/bench_publish.py [--images 40] [--sizes 256 1024] [--processes 2]
                                                         [--skip-audit]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cxrlib import reid  # noqa: E402
from cxrlib.anonymize.dp_pix import DPPix  # noqa: E402
from cxrlib.anonymize.flow_field import FlowFieldAnonymizer  # noqa: E402
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer  # noqa: E402
from cxrlib.artifacts import save_weights  # noqa: E402
from cxrlib.config import load_profile  # noqa: E402
from cxrlib.data.phantom import generate_phantom  # noqa: E402
from cxrlib.publish.audit import audit_release, find_retrieval_network, load_retrieval_network, read_release  # noqa: E402
from cxrlib.publish.batch import run_batch  # noqa: E402
from cxrlib.publish.phantom_dicom import write_phantom_dicom  # noqa: E402
from cxrlib.publish.pipeline import PixelMethod, ReleasePipeline  # noqa: E402
from cxrlib.workspace import ensure_phantom  # noqa: E402


def methods(profile) -> dict[str, PixelMethod]:
    a, size = profile.anonymization, profile.data.image_size
    flow = FlowFieldAnonymizer(mu=a.mu_values[-1], image_size=size, features=a.generator_features,
                               poolings=a.generator_poolings, smoothing_kernel=a.smoothing_kernel,
                               smoothing_sigma=a.smoothing_sigma).eval()
    privacy = PrivacyNetAnonymizer(features=a.privacy_net_features, poolings=a.privacy_net_poolings).eval()
    return {"none": PixelMethod("none"), "dp-pix": PixelMethod("dp-pix", DPPix(8, 0.1, 1.0)),
            "prichexy": PixelMethod("prichexy", flow, size), "privacy-net": PixelMethod("privacy-net", privacy, size)}


def cli_method_arguments(name: str, method: PixelMethod, work: Path) -> list[str]:
    """``cxrlib anonymize`` options for ``method``, its network saved under ``work`` when it has one."""
    arguments = ["--method", name]
    if name in ("prichexy", "privacy-net"):
        path = save_weights(method.anonymizer, work / f"model-{name}", config=method.anonymizer.config())
        arguments += ["--model", str(path), "--size", str(method.size)]
    return arguments


def bench_anonymize(size: int, images: int, work: Path, profile, processes: int = 0) -> None:
    patients = max(2, images // 2)
    png = generate_phantom(work / f"png{size}", n_patients=patients, size=size, seed=1, max_followups=2,
                           progress=False)
    dicom = write_phantom_dicom(png, work / f"dicom{size}", progress=False)
    files = len(list((dicom / "images").glob("*.dcm")))
    for name, method in methods(profile).items():
        pipeline = ReleasePipeline(b"b" * 32, method)
        out = work / f"out{size}-{name}"
        start = time.perf_counter()
        summary = run_batch(dicom / "images", out, pipeline, settings=pipeline.settings(), progress=False)
        seconds = time.perf_counter() - start
        assert summary.done == files and summary.ok
        print(f"anonymize {size:5d} px  {name:12s} {files / seconds:7.1f} images/s  ({files} files, {seconds:.1f} s)",
              flush=True)
        if processes:
            key = work / "key"
            key.write_bytes(b"b" * 32)
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                      str(processes), "-m", "cxrlib", "anonymize", str(dicom / "images"), str(out) + "-launched",
                      "--key", str(key), *cli_method_arguments(name, method, work)]
            start = time.perf_counter()
            subprocess.run(launch, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            seconds = time.perf_counter() - start
            print(f"anonymize {size:5d} px  {name:12s} {files / seconds:7.1f} images/s  with {processes} processes "
                  f"(torchrun, start-up included: {seconds:.1f} s)", flush=True)


def bench_audit(profile_name: str, artifacts: Path) -> None:
    profile = load_profile(profile_name)
    folder = ensure_phantom(profile, progress=False)
    try:
        path = find_retrieval_network(artifacts, profile_name)
        model, source = load_retrieval_network(path), str(path)
    except ValueError:
        config = profile.retrieval
        model = reid.build_retrieval_network(config).eval()
        path = Path(tempfile.mkdtemp()) / "retrieval"
        save_weights(model, path, config=dataclasses.asdict(config))
        source = "untrained (no trained network under artifacts/)"
    start = time.perf_counter()
    release = read_release(folder / "images", profile.data.image_size, progress=False)
    read = time.perf_counter() - start
    result = audit_release(release, model)
    total = time.perf_counter() - start
    print(f"audit of the {profile_name} phantom ({result['images']} images, {profile.data.image_size} px, model "
          f"{source}): {total:.1f} s (reading and text detection {read:.1f} s, embedding + k-NN + findings "
          f"{result['seconds']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40, help="about how many images per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--profile", default="cpu", help="profile of the networks and the audited phantom")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--processes", type=int, default=0,
                        help="also run each method through torchrun with this many processes (0: skip)")
    parser.add_argument("--skip-audit", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"torch threads: {torch.get_num_threads()}")
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            bench_anonymize(size, args.images, Path(work), profile, args.processes)
    if not args.skip_audit:
        bench_audit(args.profile, args.artifacts)


if __name__ == "__main__":
    main()
