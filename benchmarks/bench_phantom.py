"""Phantom speed on one core, and how well raw pixels identify its patients.

Prints rendering throughput at ``--size`` (render only, and render + PNG encoding), generation time
and size on disk of the smoke and cpu profiles' phantoms, and the raw-pixel nearest-neighbour
precision@1 of the cpu phantom (z-normalized pixels after loading with the ChestX-ray14 loader,
every image queried against all others, only patients with several images as queries; the
phantom's target is <= 0.5).

    OMP_NUM_THREADS=1 python benchmarks/bench_phantom.py [--size 256] [--images 300]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cxrlib.config import load_profile  # noqa: E402
from cxrlib.data import phantom  # noqa: E402
from cxrlib.data.chestxray14 import ImageLocator, find_metadata_file, load_image, read_metadata  # noqa: E402
from cxrlib.metrics import retrieval_metrics  # noqa: E402
from cxrlib.attacks import attack_features  # noqa: E402
from cxrlib.reid import Images  # noqa: E402


def render_rate(size: int, n_images: int, seed: int = 0) -> dict[str, float]:
    """Images per second rendering scans of varied patients, views and findings; CPU time of this
    process (robust on a shared machine) and wall time."""
    meta = phantom.sample_metadata(max(1, n_images // 2), 8, size, seed)
    jobs = [job[2:] for job in phantom.draw_scans(meta, seed)][:n_images]
    textures = phantom.Textures(size, seed)
    phantom.render(*jobs[0], size, textures)
    timings = {}
    for encode in (False, True):
        cpu, wall = time.process_time(), time.perf_counter()
        for anatomy, scan, findings in jobs:
            image, _, _ = phantom.render(anatomy, scan, findings, size, textures)
            if encode:
                Image.fromarray(image).save(io.BytesIO(), format="PNG", compress_level=phantom.PNG_COMPRESS_LEVEL)
        key = "render+png" if encode else "render"
        timings[f"{key} (cpu time)"] = len(jobs) / (time.process_time() - cpu)
        timings[f"{key} (wall time)"] = len(jobs) / (time.perf_counter() - wall)
    return timings


def profile_phantom(name: str, folder: Path) -> tuple[Path, float, int]:
    data = load_profile(name).data
    phantom.writing._real_scans()  # the real metadata is read once per process; not part of generation
    start = time.perf_counter()
    out = phantom.generate_phantom(folder / name, n_patients=data.phantom_patients, size=data.image_size,
                                   seed=42, max_followups=data.phantom_max_followups, progress=False)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return out, seconds, size


def pixel_precision_at_1(folder: Path, size: int) -> tuple[float, int]:
    meta = read_metadata(find_metadata_file(folder))
    locate = ImageLocator(folder)
    pixels = np.stack([load_image(locate(name), size) for name in meta["image"]])
    metrics = retrieval_metrics(attack_features(Images(tuple(meta["image"]), pixels), "raw_pixels"), meta["patient_id"])
    queries = int((meta.groupby("patient_id")["image"].transform("size") > 1).sum())
    return metrics["precision_at_1"], queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    print(f"rendering at {args.size} px, {args.images} scans, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    for key, rate in render_rate(args.size, args.images).items():
        print(f"  {key:24s} {rate:8.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("smoke", "cpu"):
            out, seconds, size = profile_phantom(name, Path(tmp))
            meta = read_metadata(find_metadata_file(out))
            print(f"{name} phantom: {meta['patient_id'].nunique()} patients, {len(meta)} images at "
                  f"{meta['width'].iloc[0]} px: {seconds:.1f} s, {size / 2**20:.2f} MiB on disk")
            if name == "cpu":
                precision, queries = pixel_precision_at_1(out, load_profile(name).data.image_size)
                print(f"cpu phantom raw-pixel nearest-neighbour precision@1: {precision:.3f} "
                      f"({queries} queries; target <= 0.5)")


if __name__ == "__main__":
    main()
