"""GPU check of the ``paper`` path, in one command: throughput of the shared loop against an official-style one.

    python benchmarks/gpu_check.py                      # on a CUDA machine: a few hundred steps each
    python benchmarks/gpu_check.py --data-dir CHESTXRAY14_DIR
    python benchmarks/gpu_check.py --profile cpu        # on a CPU: the cpu profile's networks and sizes
    python benchmarks/gpu_check.py --tiny               # on a CPU: the paper's code paths in seconds

Trains, for ``--steps`` steps each, the profile's siamese network and classifier (``paper``: ResNet-50 at
256 px, batch 32, and DenseNet-121 at 224, batch 16; ``cpu``: its own small networks at 64 px and batches):

* through the project's shared loop (:func:`cxrlib.train.fit`: Accelerate, bf16 on a GPU that has it,
  channels_last weights where the GPU has tensor cores), images from the uint8 cache;
* through an official-style loop: fp32, one PNG decoded and resized with PIL per item in DataLoader
  workers, as the papers' datasets do.

With ``--json benchmarks/results/loop_ratio_cpu.json`` after ``--profile cpu`` the README's sentence on
the loop's speed-up is generated from its figures. It prints images/s of both and their ratio, and fails when any cxrlib source calls ``.cuda()``
(devices come from Accelerate, so the same code runs on CPU, one GPU or several). Without
``--data-dir`` it writes a small phantom at the release's 1024 px to decode from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlib.classify import build_classifier  # noqa: E402
from cxrlib.config import load_profile  # noqa: E402
from cxrlib.data.cache import prepare_cache  # noqa: E402
from cxrlib.data.chestxray14 import (LABELS, ImageLocator, find_metadata_file, load_image,  # noqa: E402
                                     read_metadata, to_release_layout)
from cxrlib.data.datasets import ImageDataset, PairDataset  # noqa: E402
from cxrlib.models.siamese import SiameseNetwork  # noqa: E402
from cxrlib.reid import verification_loss  # noqa: E402
from cxrlib.train import Checkpoint, Runtime, Schedule, fit
from cxrlib.runtime import make_accelerator  # noqa: E402

CUDA_CALL = re.compile(r"\.cuda\(")


def hard_coded_cuda(package: Path = ROOT / "cxrlib") -> list[str]:
    """``file:line`` of every ``.cuda(`` call in the package sources."""
    return [f"{path.relative_to(package.parent)}:{number}"
            for path in sorted(package.rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), start=1) if CUDA_CALL.search(line)]


def random_pairs(meta: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """``count`` pairs, half of them same-patient, drawn with replacement (throughput only needs batches)."""
    rng = np.random.default_rng(seed)
    groups = [g for g in meta.groupby("patient_id")["image"].apply(list) if len(g) >= 2]
    if not groups:
        raise ValueError("the data has no patient with two images")
    images = meta["image"].to_numpy()
    rows = []
    for i in range(count):
        if i % 2 == 0:
            a, b = rng.choice(groups[rng.integers(len(groups))], size=2, replace=False)
        else:
            a, b = rng.choice(images, size=2, replace=False)
        rows.append((a, b, int(a[:8] == b[:8])))
    return pd.DataFrame(rows, columns=["img1", "img2", "label"])


class DecodedPerItem(Dataset):
    """The official datasets' way: open, decode and resize one PNG with PIL per item, in fp32 (items in the
    project's dict form, so that both loops run the same loss)."""

    def __init__(self, data_dir: Path, pairs: pd.DataFrame | None, meta: pd.DataFrame, size: int):
        self.locate, self.size = ImageLocator(data_dir), size
        self.pairs, self.meta = pairs, meta

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.meta)

    def _image(self, name: str) -> torch.Tensor:
        return torch.from_numpy(load_image(self.locate(name), self.size).astype(np.float32) / 255).unsqueeze(0)

    def __getitem__(self, i: int):
        if self.pairs is not None:
            a, b, label = self.pairs.iloc[i]
            return {"image1": self._image(a), "image2": self._image(b), "same": torch.tensor(float(label))}
        row = self.meta.iloc[i]
        return {"image": self._image(row["image"]),
                "labels": torch.from_numpy(row[list(LABELS)].to_numpy(dtype=np.float32))}


def official_style_rate(model: torch.nn.Module, loss_fn, loader: DataLoader, device: torch.device,
                        images_per_item: int) -> float:
    """Images per second of a plain fp32 loop (the first batch, with its warm-up, not timed)."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, started = 0, None
    for step, batch in enumerate(loader):
        batch = {key: t.to(device) for key, t in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()
        if step == 0:
            _synchronize(device)
            started = time.perf_counter()
        else:
            images += next(iter(batch.values())).shape[0] * images_per_item
    _synchronize(device)
    return images / (time.perf_counter() - started)


def shared_loop_rate(model: torch.nn.Module, loss_fn, train: Dataset, val: Dataset, batch_size: int,
                     checkpoint: Path, images_per_item: int, channels_last: bool) -> float:
    """Images per second of one epoch of :func:`cxrlib.train.fit` (bf16 where the GPU has it)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = fit(model, loss_fn, DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
                 DataLoader(val, batch_size=batch_size), optimizer=torch.optim.Adam(model.parameters(), lr=1e-4),
                 schedule=Schedule(1), checkpoint=Checkpoint(checkpoint, {"gpu_check": checkpoint.name}, 0),
                 runtime=Runtime(progress=False))
    return len(train) // batch_size * batch_size * images_per_item / result.history[0]["train_seconds"]


def classifier_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    images, labels = batch["image"], batch["labels"]
    return F.binary_cross_entropy_with_logits(model(images).float(), labels.float())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(data_dir: Path, work: Path, *, steps: int, image_size: int, siamese_batch: int,
        classifier_batch: int, workers: int, profile_name: str = "paper") -> dict:
    profile = load_profile(profile_name)
    accelerator = make_accelerator()
    device = accelerator.device
    # tensor cores (compute capability 7+) are what channels_last helps; elsewhere it only costs
    channels_last = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7
    meta = read_metadata(find_metadata_file(data_dir))
    cache = prepare_cache(data_dir, image_size, cache_dir=work / "cache", workers=workers, progress=False)
    v, c = profile.verification, profile.classifier
    report = {"profile": profile_name,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
              "mixed_precision": accelerator.mixed_precision, "channels_last": channels_last,
              "image_size": image_size, "steps": steps, "hard_coded_cuda": hard_coded_cuda()}

    pairs = random_pairs(meta, (steps + 1) * siamese_batch, seed=0)
    val_pairs = random_pairs(meta, siamese_batch, seed=1)
    def compare(build, loss_fn, train: Dataset, val: Dataset, official_items: Dataset, batch: int, name: str,
                images_per_item: int) -> dict:
        """Both loops on fresh networks of one kind: images/s and the shared loop's speed-up."""
        ours = shared_loop_rate(build(), loss_fn, train, val, batch, work / name, images_per_item, channels_last)
        official = official_style_rate(
            build(), loss_fn, DataLoader(official_items, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True), device, images_per_item)
        return {"batch": batch, "shared_loop_images_per_s": ours, "official_style_images_per_s": official,
                "speedup": ours / official}

    pairs = random_pairs(meta, (steps + 1) * siamese_batch, seed=0)
    val_pairs = random_pairs(meta, siamese_batch, seed=1)
    report["siamese"] = {"backbone": v.backbone, **compare(
        lambda: SiameseNetwork(v.backbone, False, v.features),  # ImageNet weights do not change speed
        verification_loss, PairDataset(cache, pairs), PairDataset(cache, val_pairs),
        DecodedPerItem(data_dir, pairs, meta, image_size), siamese_batch, "siamese", 2)}

    rows = meta.sample((steps + 1) * classifier_batch, replace=True, random_state=0).reset_index(drop=True)
    report["classifier"] = {"backbone": c.backbone, "input_size": c.input_size, **compare(
        lambda: build_classifier(dataclasses.replace(c, pretrained=False)), classifier_loss,
        ImageDataset(cache, rows), ImageDataset(cache, meta.head(classifier_batch)),
        DecodedPerItem(data_dir, None, rows, image_size), classifier_batch, "classifier", 1)}
    return report


def _cpu_name() -> str:
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown"
    return f"CPU: {name}, {torch.get_num_threads()} torch thread(s)"


def write_phantom_release(folder: Path, patients: int, size: int) -> Path:
    from cxrlib.data.phantom import generate_phantom

    generate_phantom(folder, n_patients=patients, size=size, seed=0, max_followups=4, progress=False)
    return to_release_layout(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a ChestX-ray14 folder (default: a phantom at 1024 px)")
    parser.add_argument("--profile", choices=("paper", "cpu"), default="paper",
                        help="whose networks, image size and batches (default paper; cpu runs on a CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each loop (default 300 for paper, 40 for cpu)")
    parser.add_argument("--workers", type=int, default=8, help="decoding processes of the official-style loop")
    parser.add_argument("--tiny", action="store_true",
                        help="a CPU-sized check: 2 steps, 64 px, batches of 2, a 128 px phantom")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.profile == "paper" and not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --profile cpu (the cpu profile's networks) or --tiny on a CPU",
              file=sys.stderr)
        return 2
    if args.tiny:
        steps, size, batches = 2, 64, (2, 2)
    elif args.profile == "cpu":
        cpu = load_profile("cpu")
        steps, size = args.steps or 40, cpu.data.image_size
        batches = (cpu.verification.batch_size, cpu.classifier.batch_size)
    else:
        steps, size, batches = args.steps or 300, 256, (32, 16)
    # a CPU has two cores here: decoding workers would take them from the training
    workers = 0 if args.tiny or not torch.cuda.is_available() else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data_dir or write_phantom_release(work / "phantom", 6 if args.tiny else 40,
                                                      128 if args.tiny else 1024)
        report = run(data, work, steps=steps, image_size=size, siamese_batch=batches[0],
                     classifier_batch=batches[1], workers=workers, profile_name="paper" if args.tiny else args.profile)
    print(f"profile {report['profile']}, device {report['device']}, mixed precision {report['mixed_precision']}, "
          f"channels_last {report['channels_last']}, {size} px, {steps} steps per loop")
    for name in ("siamese", "classifier"):
        r = report[name]
        print(f"{name} ({r['backbone']}, batch {r['batch']}): shared loop {r['shared_loop_images_per_s']:.1f} "
              f"images/s, official-style {r['official_style_images_per_s']:.1f} images/s, "
              f"ratio {r['speedup']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["hard_coded_cuda"]:
        print("hard-coded .cuda() calls: " + ", ".join(report["hard_coded_cuda"]), file=sys.stderr)
        return 1
    print("no hard-coded .cuda() in cxrlib")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
