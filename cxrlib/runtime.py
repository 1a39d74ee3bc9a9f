"""Where and how work runs: seeds, devices, the Accelerate set-up, mixed precision and memory layout.

Shared by training (:mod:`cxrlib.train`) and inference (embedding, sampling, evaluation), so that both
compute on the same device in the same precision.
"""

from __future__ import annotations

import functools
import os
import platform
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from tqdm.auto import tqdm


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: process ``p`` of a launched run draws from seeds ``seed + epoch + p * PROCESS_SEED_STRIDE``: apart
#: for any number of epochs below the stride, and process 0 draws what a single process would
PROCESS_SEED_STRIDE = 2**20


def process_seed(seed: int, epoch: int, process_index: int) -> int:
    """The seed for the random draws (augmentations, noise, timesteps) of ``epoch`` in one process.

    Every process must draw differently: with one seed for all, each GPU would flip, noise and
    time-step its shard exactly as the others do, which is fewer distinct augmentations, not more
    data. The order of the data is not drawn from it (the samplers share one seed, so that the
    shards stay disjoint).
    """
    return seed + epoch + process_index * PROCESS_SEED_STRIDE


def tqdm_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag: None shows bars on a terminal only."""
    return None if progress is None else not progress


def default_device() -> torch.device:
    """Where work runs when no device is asked for: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters live on (the CPU for a module without parameters)."""
    return next(module.parameters(), torch.empty(0)).device


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: Any, *, batch_size: int,
                device: torch.device | str, before: Callable[[torch.Tensor], torch.Tensor] | None = None,
                progress: bool | None = False, desc: str = "embedding") -> torch.Tensor:
    """``fn`` applied to ``images`` in batches on ``device`` (after ``before``, e.g. an anonymizer);
    the results (N, ...) as float on the CPU. ``images`` is a float tensor (N, 1, S, S) or a container
    with ``len()`` and ``tensor(rows)`` (:class:`cxrlib.data.images.Images`)."""
    total = len(images)
    out = []
    for start in tqdm(range(0, total, batch_size), desc=desc, unit="batch", leave=False,
                      disable=tqdm_disabled(progress)):
        rows = slice(start, start + batch_size)
        x = (images[rows] if isinstance(images, torch.Tensor) else images.tensor(rows)).to(device)
        if before is not None:
            x = before(x)
        out.append(fn(x).float().cpu())
    return torch.cat(out)


def use_fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its convolution weights in ``channels_last`` (in place; returned for chaining).

    On this project's 2-core CPUs the ``cpu`` profile's convolutional networks train up to 1.3x and
    run inference up to 2x faster in this layout; the latent diffusion U-Net (attention, group norm) is not
    (``benchmarks/bench_cpu_paths.py`` prints the figures per network, ``benchmarks/results/cpu_paths.json``
    holds the last ones). Inputs need no conversion: convolutions hand their output on in the
    weights' layout.
    """
    return model.to(memory_format=torch.channels_last)


#: set to 0 to keep fp32 on a CPU that computes bf16 in hardware (for figures comparable across machines)
CPU_BF16_VARIABLE = "CXRLIB_CPU_BF16"


@functools.cache  # autocast asks every batch; the answer is the machine's
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX-512 BF16 or AMX). Only there does bf16
    autocast pay: without it PyTorch emulates bf16, 6-16x slower than fp32 (measured on an AVX2-only
    AMD EPYC; ``benchmarks/bench_cpu_paths.py`` prints the ratios of the machine it runs on)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@functools.cache
def machine_description() -> dict[str, Any]:
    """What timings and bf16 results depend on: the CPU model and core count, the instruction sets
    PyTorch uses, its bf16/AMX flags, the GPU (None without one) and the PyTorch version."""
    flags: set[str] = set()
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
            "avx512": any(f.startswith("avx512") for f in flags),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def make_accelerator() -> Accelerator:
    """An Accelerator with bf16 mixed precision on CUDA (when the GPU supports it), fp32 otherwise; bf16
    on a CPU is :func:`autocast`'s choice per network, which one Accelerate state per process cannot make.

    Shuffling samplers are re-seeded every epoch from the seed in force at ``prepare`` plus the epoch,
    so every process draws the same order and a resumed run draws what an uninterrupted one would.
    """
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    # cpu=True is what lets Accelerate see a torchrun launch on CPUs as multi-process (gloo)
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def uses_bf16(accelerator: Accelerator | None = None, cpu_bf16: bool = True) -> bool:
    """Whether :func:`autocast` computes in bf16 (with ``accelerator``, default: this machine's): on
    CUDA where the GPU supports it; on a CPU that computes bf16 in hardware unless ``cpu_bf16`` is
    False or ``CXRLIB_CPU_BF16=0``."""
    if accelerator is None and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if accelerator is not None and accelerator.device.type != "cpu":
        return accelerator.mixed_precision == "bf16"
    return cpu_uses_bf16(cpu_bf16)


def cpu_uses_bf16(cpu_bf16: bool = True) -> bool:
    """Whether work on the CPU computes in bf16: where the CPU does so in hardware, unless ``cpu_bf16`` is
    False or ``CXRLIB_CPU_BF16=0``."""
    return cpu_bf16 and os.environ.get(CPU_BF16_VARIABLE, "1") != "0" and cpu_computes_bf16()


def autocast(accelerator: Accelerator, cpu_bf16: bool = True):
    """The mixed-precision context of a training or inference step. On a CPU with bf16 in hardware,
    bf16 autocast trains the ``cpu`` profile's convolutional networks faster than fp32
    (``benchmarks/bench_cpu_paths.py`` prints the ratios per network, ``benchmarks/results/cpu_paths.json``
    holds the last ones); ``cpu_bf16=False`` keeps fp32 for a network it would slow down. The latent
    diffusion model gains only with its attention (and the autoencoder's group norms) kept in fp32
    (:func:`cxrlib.models.diffusion.keep_fp32_on_cpu`)."""
    if accelerator.device.type != "cpu":
        return accelerator.autocast()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16(accelerator, cpu_bf16))
