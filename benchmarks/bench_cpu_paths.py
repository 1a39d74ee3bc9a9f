"""The CPU's fast paths for a profile's networks, side by side, and the training loop's overhead.

For every network the profile trains (siamese, classifier, retrieval, PriCheXy-Net's generator,
Privacy-Net, the autoencoder and the latent U-Net), one train step (forward, backward, Adam) at its
training batch size and one inference pass at the batch size cxrlib infers at (the defaults of
``pair_scores``, ``predict``, ``embed_images``, ``anonymize_images``, ``reconstruct`` and ``generate``,
whose U-Net sees the conditional and unconditional halves at once) on random inputs of the profile's
shapes, in four variants: fp32, fp32 with the
weights in ``channels_last``, bf16 autocast, bf16 autocast with ``channels_last``. Prints images per
second and each variant's ratio to fp32, measured in the same run.

With ``--processes N``, the same train step in N single-thread processes at once (each network in the
precision and layout its training uses), their images per second summed, against one process with ``--threads``:
what :mod:`cxrlib.parallel` gains by training independent runs side by side.

Then the overhead of :func:`cxrlib.train.fit`: the siamese network trained for the same epochs on
the same pairs, once through ``fit`` over a :class:`~cxrlib.data.datasets.PairDataset` (per-item
reads from uint8 images, collation, checkpoints, validation) and once by a bare loop over the same
batches already stacked as float tensors; the ratio of their train times is the overhead, the median
of ``--repeats`` rounds of the two (one round alone moves by several points from run to run).

    python benchmarks/bench_cpu_paths.py [--profile cpu] [--threads 2] [--processes 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cxrlib.anonymize.flow_field import FlowFieldAnonymizer
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer
from cxrlib.classify import build_classifier, predict
from cxrlib.config import Profile, load_profile
from cxrlib.data.datasets import PairDataset
from cxrlib.data.images import Images
from cxrlib.models.diffusion import build_autoencoder, build_noise_scheduler, build_unet, downsampling_factor
from cxrlib.models.retrieval import RetrievalNetwork
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.evaluate import anonymize_images
from cxrlib.parallel import map_in_processes
from cxrlib.reid import embed_images, pair_scores, verification_loss
from cxrlib.synthesis.sampling import generate, reconstruct
from cxrlib.synthesis.training import AutoencoderObjective, diffusion_loss
from cxrlib.train import Checkpoint, Runtime, Schedule, fit
from cxrlib.runtime import autocast, machine_description, make_accelerator, use_fast_layout, uses_bf16

VARIANTS = (("fp32", False, False), ("fp32 channels_last", False, True), ("bf16", True, False),
            ("bf16 channels_last", True, True))


def _batch_size(fn: Callable) -> int:
    return inspect.signature(fn).parameters["batch_size"].default


def networks(profile: Profile) -> dict[str, tuple[Callable[[], nn.Module], Callable, int, int]]:
    """name -> (build, loss(model, batch_size) on random inputs, training batch size, inference batch size)."""
    size, v, r, c = profile.image_size, profile.verification, profile.retrieval, profile.classifier
    a, s = profile.anonymization, profile.synthesis
    latent = size // downsampling_factor(s)

    def images(batch, channels=1, side=size):
        return torch.rand(batch, channels, side, side)

    def siamese(model, batch):
        return F.binary_cross_entropy_with_logits(model(images(batch), images(batch)).float(),
                                                  torch.randint(0, 2, (batch,)).float())

    def classifier(model, batch):
        return F.binary_cross_entropy_with_logits(model(images(batch)).float(),
                                                  torch.randint(0, 2, (batch, 14)).float())

    def embedding(model, batch):
        return model(images(batch)).float().square().mean()

    def image_to_image(model, batch):
        x = images(batch)
        return F.l1_loss(model(x).float(), x)

    def objective(model, batch):
        return model(images(batch))

    scheduler = build_noise_scheduler(s)

    def latent_unet(model, batch):
        shape = (batch, s.latent_channels, latent, latent)
        posteriors = torch.randn(shape), torch.rand(shape), torch.randint(0, 2, (batch, 14)).float()
        return diffusion_loss(model, posteriors, scheduler=scheduler, scaling_factor=1.0,
                              condition_dropout=s.condition_dropout, min_snr_gamma=s.min_snr_gamma)

    return {
        # a batch of siamese pairs: pair_scores embeds its batch of images once and compares them in pairs
        "siamese": (lambda: SiameseNetwork(v.backbone, False, v.features), siamese, v.batch_size,
                    _batch_size(pair_scores) // 2),
        "classifier": (lambda: build_classifier(c), classifier, c.batch_size, _batch_size(predict)),
        "retrieval": (lambda: RetrievalNetwork(r.backbone, False, r.embedding_dim, r.pool_size,
                                               r.bottleneck_channels, r.hidden, r.head_dropout),
                      embedding, r.batch_size, _batch_size(embed_images)),
        "prichexy generator": (lambda: FlowFieldAnonymizer(a.mu_values[-1], size, a.generator_features,
                                                           a.generator_poolings, a.smoothing_kernel,
                                                           a.smoothing_sigma),
                               image_to_image, a.batch_size, _batch_size(anonymize_images)),
        "privacy-net": (lambda: PrivacyNetAnonymizer(a.privacy_net_features, a.privacy_net_poolings),
                        image_to_image, a.batch_size, _batch_size(anonymize_images)),
        "autoencoder": (lambda: AutoencoderObjective(build_autoencoder(s, size), s.kl_weight), objective,
                        s.batch_size, _batch_size(reconstruct)),
        "latent unet": (lambda: build_unet(s, size), latent_unet, s.batch_size, 2 * _batch_size(generate)),
    }


def throughput(build, loss_fn, batch: int, inference_batch: int, bf16: bool, channels_last: bool,
               steps: int) -> tuple[float, float]:
    """(train, inference) images per second."""
    torch.manual_seed(0)
    model = build()
    if channels_last:
        use_fast_layout(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()

    model.train()
    train = _rate(step, steps) * batch
    model.eval()
    with torch.no_grad():
        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss_fn(model, inference_batch)
        inference = _rate(forward, steps) * inference_batch
    return train, inference


#: the networks whose training keeps the contiguous layout (channels_last slows them down)
CONTIGUOUS = ("latent unet",)


def train_rate(profile_name: str, name: str, steps: int) -> float:
    """Train images per second of network ``name`` in the precision and layout its training uses,
    with this process's threads (a worker of :func:`process_scaling`)."""
    build, loss_fn, batch, inference_batch = networks(load_profile(profile_name))[name]
    return throughput(build, loss_fn, batch, inference_batch, uses_bf16(), name not in CONTIGUOUS, steps)[0]


def process_scaling(profile: Profile, names: list[str], processes: int, steps: int) -> dict[str, dict]:
    """Per network: train images per second of this process, and summed over ``processes``
    single-thread processes training at the same time."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import this module by name
    figures = {}
    for name in names:
        alone = train_rate(profile.name, name, steps)
        together = sum(map_in_processes(train_rate, [(profile.name, name, steps)] * processes,
                                        processes=processes, progress=False))
        figures[name] = {"one_process": alone, "threads": torch.get_num_threads(), "processes": processes,
                         "together": together, "ratio": together / alone}
        print(f"{name:20s} 1 process x {torch.get_num_threads()} threads {alone:6.0f} img/s; {processes} processes "
              f"x 1 thread {together:6.0f} img/s together: {together / alone:.2f}x", flush=True)
    return figures


def _rate(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - started)


def loop_overhead(profile: Profile, pairs: int, epochs: int, repeats: int) -> dict[str, object]:
    """Train seconds of ``fit`` over a PairDataset against a bare loop over the same float batches.

    One untimed bare epoch first warms the kernels up (else whichever loop runs first pays for it),
    then ``repeats`` rounds of fit and bare loop, one after the other, so that the machine's drift
    during the run touches both alike; the overhead is the median of the rounds' ratios.
    """
    config, size = profile.verification, profile.image_size
    rng = np.random.default_rng(0)
    names = [f"{i:05d}.png" for i in range(2 * pairs)]
    images = Images(names, rng.integers(0, 256, (len(names), size, size), dtype=np.uint8))
    frame = pd.DataFrame({"img1": rng.choice(names, pairs), "img2": rng.choice(names, pairs),
                          "label": rng.integers(0, 2, pairs).astype(float)})
    dataset = PairDataset(images, frame)
    val = PairDataset(images, frame.iloc[: 4 * config.batch_size])
    # the same number of batches of the same shapes, already float tensors in memory
    batches = list(DataLoader(dataset, batch_size=config.batch_size, drop_last=True))
    accelerator = make_accelerator()

    def model_and_optimizer():
        torch.manual_seed(0)
        model = SiameseNetwork(config.backbone, False, config.features)
        return model, torch.optim.Adam(model.parameters(), lr=config.lr)

    def fit_seconds() -> float:
        model, optimizer = model_and_optimizer()
        with tempfile.TemporaryDirectory() as tmp:
            result = fit(model, verification_loss,
                         DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True),
                         DataLoader(val, batch_size=config.batch_size), optimizer=optimizer, schedule=Schedule(epochs),
                         checkpoint=Checkpoint(Path(tmp) / "siamese", {"bench": 1}, 0), runtime=Runtime(progress=False))
        return sum(epoch["train_seconds"] for epoch in result.history)

    def bare_seconds(bare_epochs: int) -> float:
        model, optimizer = model_and_optimizer()
        use_fast_layout(model)  # as fit does
        model.train()
        started = time.perf_counter()
        for _ in range(bare_epochs):
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                with autocast(accelerator):  # the precision fit trains in (bf16 where the CPU computes it)
                    loss = verification_loss(model, batch)
                loss.backward()
                optimizer.step()
        return time.perf_counter() - started

    bare_seconds(1)
    rounds = []
    for _ in range(repeats):
        fitted, bare = fit_seconds(), bare_seconds(epochs)
        rounds.append({"fit_train_seconds": fitted, "bare_loop_seconds": bare, "overhead": fitted / bare - 1})
    middle = sorted(rounds, key=lambda r: r["overhead"])[(repeats - 1) // 2]  # the median round (lower one if even)
    return {**middle, "repeats": repeats, "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per network and variant")
    parser.add_argument("--pairs", type=int, default=960, help="pairs per epoch of the overhead measure")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of fit and bare loop (median reported)")
    parser.add_argument("--networks", nargs="*", default=None, help="only these (default: all)")
    parser.add_argument("--fp32-only", action="store_true",
                        help="skip the bf16 variants (on a CPU without AVX-512 BF16 they are slow to measure)")
    parser.add_argument("--processes", type=int, default=0,
                        help="also train each network in this many single-thread processes at once (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    about = machine_description()
    print(f"profile {profile.name}, {profile.image_size} px, {args.threads} thread(s); {about['cpu']}, "
          f"{about['cores']} cores, PyTorch {about['torch']} ({about['torch_cpu_capability']}), AVX-512: "
          f"{'yes' if about['avx512'] else 'no'}, BF16/AMX flags: {', '.join(about['bf16_flags']) or 'none'}")
    figures: dict[str, dict] = {}
    print(f"{'network':20s} {'variant':20s} {'train img/s':>12s} {'x fp32':>7s} {'infer img/s':>12s} {'x fp32':>7s}")
    for name, (build, loss_fn, batch, inference_batch) in networks(profile).items():
        if args.networks and name not in args.networks:
            continue
        figures[name] = {}
        for variant, bf16, channels_last in VARIANTS:
            if bf16 and args.fp32_only:
                continue
            train, inference = throughput(build, loss_fn, batch, inference_batch, bf16, channels_last,
                                          args.steps)
            base = figures[name].get("fp32", {"train": train, "inference": inference})
            figures[name][variant] = {"train": train, "inference": inference,
                                      "train_ratio": train / base["train"],
                                      "inference_ratio": inference / base["inference"]}
            print(f"{name:20s} {variant:20s} {train:12.0f} {train / base['train']:7.2f} "
                  f"{inference:12.0f} {inference / base['inference']:7.2f}", flush=True)
    names = [name for name in networks(profile) if not args.networks or name in args.networks]
    scaling = process_scaling(profile, names, args.processes, args.steps) if args.processes else {}
    overhead = loop_overhead(profile, args.pairs, args.epochs, args.repeats)
    spread = [r["overhead"] for r in overhead["rounds"]]
    print(f"fit over a PairDataset: {overhead['fit_train_seconds']:.1f} s of training; bare loop over the "
          f"same batches in memory: {overhead['bare_loop_seconds']:.1f} s; overhead "
          f"{100 * overhead['overhead']:+.1f} % (median of {args.repeats} rounds, "
          f"{100 * min(spread):+.1f} to {100 * max(spread):+.1f} %)")
    if args.json:
        batches = {name: {"train": spec[2], "inference": spec[3]} for name, spec in networks(profile).items()
                   if name in figures}
        args.json.write_text(json.dumps({"profile": profile.name, "threads": args.threads, "machine": about,
                                         "networks": figures, "batches": batches, "processes": scaling,
                                         "loop": overhead},
                                        indent=1))


if __name__ == "__main__":
    main()
