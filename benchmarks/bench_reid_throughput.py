"""Training throughput (pairs/s) of a profile's siamese network through the shared training loop.

One epoch of :func:`cxrlib.train.fit` over random image pairs of the profile's size (the data cost is
nil, so this is the network's speed), after a short warm-up. Prints wall-clock pairs/s and the
process CPU time per pair, which says what an unloaded machine would do when others share the cores.

    python benchmarks/bench_reid_throughput.py [--profile cpu] [--backbone resnet18] [--pairs 640]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cxrlib.config import load_profile
from cxrlib.data.datasets import TensorItems
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.reid import verification_loss
from cxrlib.train import Checkpoint, Runtime, Schedule, fit
from cxrlib.runtime import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--backbone", default=None, help="override the profile's backbone")
    parser.add_argument("--pairs", type=int, default=640)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    config = profile.verification
    if args.backbone:
        config = dataclasses.replace(config, backbone=args.backbone)
    size = profile.image_size
    seed_everything(0)
    x = torch.rand(args.pairs, 2, 1, size, size)
    pairs = TensorItems(image1=x[:, 0], image2=x[:, 1], same=(torch.rand(args.pairs) < 0.5).float())
    model = SiameseNetwork(config.backbone, False, config.features)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    warmup = TensorItems(**{k: t[: 2 * config.batch_size] for k, t in pairs.tensors.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("warmup", warmup), ("timed", pairs)):
            loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True)
            val = DataLoader(warmup, batch_size=config.batch_size)
            wall, cpu = time.perf_counter(), time.process_time()
            fit(model, verification_loss, loader, val, optimizer=optimizer, schedule=Schedule(1),
                checkpoint=Checkpoint(Path(tmp) / name, {"bench": name}, 0), runtime=Runtime(progress=False))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trained = len(loader) * config.batch_size + len(warmup)  # the epoch plus its validation pass
    print(f"profile {profile.name}, backbone {config.backbone}, {size} px, batch {config.batch_size}, "
          f"{args.threads} thread(s)")
    print(f"{trained / wall:.1f} pairs/s wall clock; {1000 * cpu / trained:.1f} ms CPU time per pair")


if __name__ == "__main__":
    main()
