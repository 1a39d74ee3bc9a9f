"""What the ``paper`` run costs at ChestX-ray14 scale, measured here and extrapolated.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py [--images 16] [--json FILE]

Each figure is measured in its own fresh process (so its peak resident memory is its own):

* metadata + official splits + verification pairs at the paper's counts (792,294 / 50,000 /
  100,000) on the real metadata and the official lists: seconds and peak memory;
* ``cxrlib prepare``: decode + resize of 1024 px PNGs (a phantom at the release's size) into the
  256 px cache with one worker; images/s, extrapolated to the 112,120 images on N cores (decoding
  scales with processes); cache size at 256 px and at the native 1024 px;
* retrieval evaluation (mAP@R, R-precision, P@1) of 25,596 test embeddings (128-d) against each other
  with the project's k-NN (faiss exact search, cxrlib.metrics.nearest_neighbours), patient ids as in the
  official test list: seconds and peak memory;
* training activations of ResNet-50 per image at 256 and 1024 px (sum of the outputs autograd keeps,
  from forward hooks): what the retrieval image size choice costs in GPU memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlib.report.benchmarks import RELEASE_IMAGES, scale_table  # noqa: E402
LISTS = ROOT / "tests" / "data" / "chestxray14"
TEST_IMAGES = 25_596


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _official_dir(folder: Path) -> Path:
    for name in ("train_val_list.txt", "test_list.txt"):
        (folder / name).write_bytes(gzip.decompress((LISTS / f"{name}.gz").read_bytes()))
    return folder


def metadata_splits_pairs() -> dict:
    from cxrlib.config import load_profile
    from cxrlib.data.chestxray14 import make_splits, read_metadata, real_metadata_path
    from cxrlib.data.pairs import make_pairs

    paper = load_profile("paper")
    v = paper.verification
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        meta = read_metadata(real_metadata_path())
        metadata_s = time.perf_counter() - started
        splits = make_splits(meta, _official_dir(Path(tmp)), seed=0,
                             official_train_count=paper.data.official_train_count)
        splits_s = time.perf_counter() - started - metadata_s
    seconds = {}
    for split, count in (("train", v.train_pairs), ("val", v.val_pairs), ("test", v.test_pairs)):
        started = time.perf_counter()
        pairs = make_pairs(splits[split], count, seed=0)
        seconds[split] = time.perf_counter() - started
        assert len(pairs) == count
    return {"metadata_s": metadata_s, "splits_s": splits_s, "pairs_s": seconds,
            "pair_counts": [v.train_pairs, v.val_pairs, v.test_pairs], "peak_mib": _peak_mib()}


def prepare_throughput(images: int) -> dict:
    from cxrlib.data.cache import prepare_cache
    from cxrlib.data.chestxray14 import to_release_layout
    from cxrlib.data.phantom import generate_phantom

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_phantom(Path(tmp) / "release", n_patients=images // 2, size=1024, seed=0,
                                max_followups=3, progress=False)
        to_release_layout(data)
        pngs = sorted(data.glob("images_*/images/*.png"))
        png_mib = sum(p.stat().st_size for p in pngs) / len(pngs) / 2**20
        started = time.perf_counter()
        cache = prepare_cache(data, 256, cache_dir=Path(tmp) / "cache", workers=1, progress=False)
        seconds = time.perf_counter() - started
    rate = len(cache.names) / seconds
    return {"images": len(cache.names), "png_mib_each": png_mib, "images_per_s_one_core": rate,
            "hours_for_release": {cores: RELEASE_IMAGES / (rate * cores) / 3600 for cores in (1, 2, 8, 16)},
            "cache_gib": {"256": RELEASE_IMAGES * 256**2 / 2**30, "1024": RELEASE_IMAGES * 1024**2 / 2**30},
            "peak_mib": _peak_mib()}


def retrieval_evaluation() -> dict:
    import numpy as np

    from cxrlib.data.chestxray14 import read_metadata, read_split_list, real_metadata_path
    from cxrlib.metrics import retrieval_metrics

    with tempfile.TemporaryDirectory() as tmp:
        meta = read_metadata(real_metadata_path())
        names = read_split_list(_official_dir(Path(tmp)) / "test_list.txt", meta)
    patients = meta.set_index("image").loc[names, "patient_id"].to_numpy()
    rng = np.random.default_rng(0)
    # each patient's images near one point: retrieval then has real neighbours to rank
    centres = rng.standard_normal((patients.max() + 1, 128)).astype(np.float32)
    embeddings = centres[patients] + 0.5 * rng.standard_normal((len(patients), 128)).astype(np.float32)
    before = _peak_mib()
    started = time.perf_counter()
    metrics = retrieval_metrics(embeddings, patients)
    return {"embeddings": len(patients), "dim": 128, "seconds": time.perf_counter() - started,
            "peak_mib": _peak_mib(), "peak_mib_before": before, "map_at_r": metrics["map_at_r"]}


def activation_memory() -> dict:
    import torch

    from cxrlib.models.backbones import build_backbone

    model = build_backbone("resnet50", False, 128).train()
    result = {}
    for size in (256, 1024):
        total = 0

        def count(_module, _inputs, output):
            nonlocal total
            if isinstance(output, torch.Tensor) and output.requires_grad:
                total += output.numel() * output.element_size()

        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        model(torch.rand(1, 1, size, size)).sum().backward()
        for hook in hooks:
            hook.remove()
        result[str(size)] = {"mib_per_image_fp32": total / 2**20, "gib_batch_32_fp32": 32 * total / 2**30}
    return result


def _measure(name: str, *args):
    return globals()[name](*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="1024 px PNGs to time prepare on (default 16)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--markdown", type=Path, metavar="JSON",
                        help="print the README table of a saved report instead of measuring")
    args = parser.parse_args(argv)
    if args.markdown:
        print(scale_table(json.loads(args.markdown.read_text())))
        return 0
    context = multiprocessing.get_context("spawn")
    report = {"machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores, "
                         f"{platform.python_version()}"}
    started = time.perf_counter()
    for name, extra in (("metadata_splits_pairs", ()), ("prepare_throughput", (args.images,)),
                        ("retrieval_evaluation", ()), ("activation_memory", ())):
        with context.Pool(1) as pool:
            report[name] = pool.apply(_measure, (name, *extra))
    report["bench_seconds"] = time.perf_counter() - started

    m, p, r, a = (report[k] for k in ("metadata_splits_pairs", "prepare_throughput", "retrieval_evaluation",
                                      "activation_memory"))
    print(f"machine: {report['machine']}")
    print(f"metadata {m['metadata_s']:.1f} s, official splits {m['splits_s']:.1f} s, pairs "
          + ", ".join(f"{n:,} in {s:.1f} s" for n, s in zip(m["pair_counts"], m["pairs_s"].values()))
          + f"; peak memory {m['peak_mib']:.0f} MiB")
    print(f"prepare: {p['images_per_s_one_core']:.2f} images/s per core on 1024 px PNGs "
          f"({p['png_mib_each']:.2f} MiB each, {p['images']} timed); the release's {RELEASE_IMAGES:,} images: "
          + ", ".join(f"{h:.1f} h on {c} cores" for c, h in p["hours_for_release"].items())
          + f"; cache {p['cache_gib']['256']:.1f} GiB at 256 px, {p['cache_gib']['1024']:.0f} GiB at 1024 px")
    print(f"retrieval evaluation of {r['embeddings']:,} test embeddings ({r['dim']}-d), faiss k-NN: "
          f"{r['seconds']:.1f} s, peak memory {r['peak_mib']:.0f} MiB")
    print("ResNet-50 training activations per image (fp32): "
          + ", ".join(f"{s} px {v['mib_per_image_fp32']:.0f} MiB ({v['gib_batch_32_fp32']:.1f} GiB at batch 32)"
                      for s, v in a.items()))
    print(f"(bench took {report['bench_seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
