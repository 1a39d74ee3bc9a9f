"""Prepare throughput of the image cache next to a decode-only loop over the same files.

Both run in this process, on the same files, with the same number of worker processes; the ratio is
what caching costs on top of decoding and resizing (target: prepare >= 80 % of decode-only).

    python benchmarks/bench_cache.py [--patients 300] [--size 256] [--cache-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

from cxrlib.data.cache import prepare_cache
from cxrlib.data.chestxray14 import ImageLocator, find_metadata_file, load_image, read_metadata
from cxrlib.data.phantom import generate_phantom


def _decode(task: tuple[str, int]) -> int:
    path, size = task
    return int(load_image(path, size).sum() >= 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--size", type=int, default=256, help="size of the PNGs on disk")
    parser.add_argument("--cache-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_phantom(Path(tmp) / "phantom", n_patients=args.patients, size=args.size, seed=0,
                                progress=False)
        names = read_metadata(find_metadata_file(data))["image"].tolist()
        locate = ImageLocator(data)
        tasks = [(str(locate(name)), args.cache_size) for name in names]
        _decode(tasks[0])  # warm the page cache for both loops alike
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            list(pool.imap_unordered(_decode, tasks, chunksize=64))
        decode_rate = len(tasks) / (time.perf_counter() - start)
        start = time.perf_counter()
        cache = prepare_cache(data, args.cache_size, workers=args.workers, progress=False)
        prepare_rate = len(tasks) / (time.perf_counter() - start)
        shutil.rmtree(cache.directory)
    print(f"images: {len(tasks)} PNGs of {args.size} px -> cache at {args.cache_size} px, {args.workers} workers")
    print(f"decode-only:  {decode_rate:8.1f} images/s")
    print(f"prepare:      {prepare_rate:8.1f} images/s")
    print(f"ratio prepare / decode-only: {prepare_rate / decode_rate:.2f}")


if __name__ == "__main__":
    main()
