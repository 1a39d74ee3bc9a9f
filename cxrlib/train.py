"""The training loop every model in cxrlib shares.

:func:`fit` runs through Hugging Face Accelerate, so the same call trains on a CPU, on one GPU with bf16
mixed precision, or on several processes started by ``torchrun`` / ``accelerate launch`` (gradients are
averaged, the validation loss is gathered from every process, only the main process writes files).

Files at ``checkpoint_path`` (``NAME.safetensors`` + ``NAME.json``):

* the **best** weights by validation loss, with a sidecar holding config, seed, epoch, metrics, history,
  package versions and a ``finished`` flag. A finished checkpoint whose config and seed match is loaded
  instead of training again, so notebooks reuse trained models.
* while training, a **last** checkpoint ``NAME.last.safetensors`` + ``.json`` with the model and
  optimizer tensors and, in JSON, the optimizer's hyper-parameters, the scheduler state and the
  early-stopping state. An interrupted :func:`fit` resumes from it; a finished one deletes it.

A launched multi-process script should call ``accelerator.end_training()`` once at its very end (it
destroys the process group, so :func:`fit` does not call it itself): otherwise a process can abort at exit.

The parts of a loop that do not depend on what it trains are here, for :func:`fit` and for the
adversarial loop of :mod:`cxrlib.anonymize.adversarial` (three networks, three optimizers, one step
that is not a loss of one model): which run a checkpoint belongs to (:func:`check_same_run`,
:func:`finished_sidecar`), resumable training states of any number of networks and optimizers
(:func:`save_training_state`, :func:`load_training_state`), the finite-loss check
(:func:`check_finite`) and per-process seeds (:func:`process_seed`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cxrlib.artifacts import (ArtifactError, config_differences, load_weights, read_sidecar,
                              save_weights, write_json)

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def training_record(epochs_run: int, best_epoch: int, max_epochs: int, patience: int | None,
                    stopped_early: bool) -> dict[str, Any]:
    """How a training ended, for the metrics files: best epoch, epochs run, the cap, and ``ended_by``.

    ``ended_by`` is "early stopping" (the validation loss had not improved, or not by the share
    asked, for ``patience`` epochs), "epoch cap" (the cap came first, so the model may still have
    been learning) or "fixed budget" (it could not stop early: no patience, or one not below the cap).
    """
    if patience is None or patience >= max_epochs:
        ended_by = "fixed budget"
    elif stopped_early:
        ended_by = "early stopping"
    else:
        ended_by = "epoch cap"
    return {"best_epoch": best_epoch, "epochs": epochs_run, "max_epochs": max_epochs, "patience": patience,
            "ended_by": ended_by}


@dataclass
class FitResult:
    #: one dict per epoch: ``epoch`` (1-based), ``train_loss``, ``val_loss``, ``seconds`` (the whole
    #: epoch), ``train_seconds`` (its training part)
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    checkpoint_path: Path
    #: False when a finished checkpoint was loaded instead of training
    trained: bool
    max_epochs: int
    #: None for a schedule meant to run to its end (``fit(keep="last")``)
    patience: int | None
    #: whether the patience ran out before the cap
    stopped_early: bool

    def record(self) -> dict[str, Any]:
        """:func:`training_record` of this fit."""
        return training_record(len(self.history), self.best_epoch, self.max_epochs, self.patience,
                               self.stopped_early)


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


def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    path = Path(checkpoint_path).with_suffix(".safetensors")
    return path.with_name(path.stem + ".last.safetensors")


def fit(model: torch.nn.Module, loss_fn: LossFn, train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader, *, optimizer: torch.optim.Optimizer, max_epochs: int,
        patience: int, checkpoint_path: str | Path, config: Mapping[str, Any] | Any, seed: int,
        scheduler: Any = None, progress: bool | None = None, keep: str = "best",
        accelerator: Accelerator | None = None, channels_last: bool = True,
        cpu_bf16: bool = True, ema_decay: float | None = None, min_improvement: float = 0.0) -> FitResult:
    """Train ``model`` with early stopping on validation loss; afterwards it holds the best weights.

    ``keep="last"`` instead trains all ``max_epochs`` and keeps the final weights, for schedules
    meant to run to their end (OneCycle), where a noisy validation loss would pick a worse epoch.

    ``loss_fn(model, batch)`` returns the mean loss of a batch that is already on the device; it must
    call ``model(...)`` (the forward) so that multi-process training synchronizes gradients.
    ``scheduler`` steps after every batch (e.g. OneCycleLR), except ``ReduceLROnPlateau``, which
    steps once per epoch on the validation loss. ``config`` (a dict or a dataclass) identifies the
    model: a finished checkpoint saved with the same config and seed is loaded instead of training,
    one with another config raises :class:`~cxrlib.artifacts.ArtifactError`. ``progress``: one bar per
    fit; None shows it only on a terminal, so notebooks stay quiet. A non-finite loss raises
    ``FloatingPointError`` naming the epoch; the best checkpoint written before stays as it was.
    The model is left in eval mode. ``channels_last``: the weights in that layout
    (:func:`use_fast_layout`), faster for most of the profile's networks; False keeps PyTorch's default.
    ``cpu_bf16``: bf16 autocast on a CPU that computes bf16 in hardware (:func:`autocast`); each
    epoch's history entry records whether it trained in bf16. ``ema_decay``: validate, keep and return
    an exponential moving average of the weights, updated after every step (as diffusion models
    are trained), instead of the weights of the last step. ``min_improvement``: an epoch resets the
    patience only when it lowers the validation loss by at least this share of the loss of the last
    epoch that did (0: any decrease); smaller gains still update the kept weights. A smooth loss that
    creeps down for ever then stops once it has flattened, instead of at the cap.

    Seeds: the samplers draw the data order from ``seed`` and the epoch, alike in every process;
    the random draws inside ``loss_fn`` come from :func:`process_seed`, different in each process.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if len(loader) == 0:
            raise ValueError(f"{name} yields no batches: its dataset is empty")
    config = _config_dict(config)
    stopping_patience = None if keep == "last" else patience
    if channels_last:
        use_fast_layout(model)
    best_path = Path(checkpoint_path).with_suffix(".safetensors")
    last_path = last_checkpoint_path(best_path)

    own_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator()
    identity = {"config": config, "seed": seed}
    finished = finished_sidecar(best_path, identity)
    if finished is not None:
        load_weights(model, best_path, config=config)
        model.to(accelerator.device).eval()  # where a freshly trained model would be
        # checkpoints saved before the flag was recorded stopped early exactly when patience ran out
        stopped = finished.get("stopped_early", len(finished["history"]) - finished["epoch"] >= patience)
        return FitResult(history=finished["history"], best_epoch=finished["epoch"],
                         best_val_loss=finished["metrics"]["val_loss"], checkpoint_path=best_path,
                         trained=False, max_epochs=max_epochs, patience=stopping_patience,
                         stopped_early=stopped)

    # alike in every process: the seedable samplers take their seed from here at prepare
    seed_everything(seed)
    resume = load_training_state(last_path, identity)
    # reference_val_loss: the loss of the last epoch that reset the patience
    state = {"epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "reference_val_loss": math.inf,
             "bad_epochs": 0, "history": []}
    if resume is not None:
        state = resume.sidecar["state"]
        model.load_state_dict(resume.tensors("model"))

    # the average is a copy beside the model (its first update takes the first step's weights; a resumed
    # run restores it); it is what gets validated and saved
    averaged = None if ema_decay is None else torch.optim.swa_utils.AveragedModel(
        model, device=accelerator.device, use_buffers=True,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay))
    if averaged is not None and resume is not None:
        averaged.load_state_dict(resume.tensors("average"))
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    wrapped, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader,
                                                                       val_loader)
    unwrapped = accelerator.unwrap_model(wrapped)
    after_step = None if averaged is None else lambda: averaged.update_parameters(unwrapped)
    validated = wrapped if averaged is None else averaged.module
    if scheduler is not None and not plateau:
        # prepared, it steps once per process per batch, so a schedule sized from the unsharded
        # loader length ends where it should under any number of processes
        scheduler = accelerator.prepare(scheduler)
    if resume is not None:
        resume.load_optimizer("optimizer", optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(resume.sidecar["scheduler"])

    bar = tqdm(total=max_epochs, initial=state["epoch"], unit="epoch", leave=False,
               desc=best_path.stem, disable=not accelerator.is_main_process or
               (None if progress is None else not progress))
    try:
        while state["epoch"] < max_epochs and state["bad_epochs"] < patience:
            epoch = state["epoch"] + 1
            # per-epoch seeding makes a resumed run draw what an uninterrupted one would
            seed_everything(process_seed(seed, epoch, accelerator.process_index))
            for loader in (train_loader, val_loader):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            started = time.perf_counter()
            train_loss = _train_epoch(wrapped, loss_fn, train_loader, optimizer,
                                      None if plateau else scheduler, accelerator, cpu_bf16, epoch,
                                      best_path, state["best_epoch"], after_step)
            train_seconds = time.perf_counter() - started
            val_loss = _validation_loss(validated, loss_fn, val_loader, accelerator, cpu_bf16)
            check_finite(val_loss, "validation loss", epoch, _kept(best_path, state["best_epoch"]))
            if plateau:
                scheduler.step(val_loss)
            state["epoch"] = epoch
            state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                     "seconds": time.perf_counter() - started,
                                     "train_seconds": train_seconds,
                                     "bf16": uses_bf16(accelerator, cpu_bf16)})
            if keep == "last" or val_loss < state["best_val_loss"]:
                state.update(best_epoch=epoch, best_val_loss=val_loss)
                if accelerator.is_main_process:
                    _save_best(accelerator.unwrap_model(validated), best_path, config, seed, state,
                               finished=False)
            if keep == "last" or val_loss < state["reference_val_loss"] * (1 - min_improvement):
                state.update(reference_val_loss=val_loss, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            if accelerator.is_main_process:
                save_training_state(
                    last_path, tensors={"model": accelerator.unwrap_model(wrapped).state_dict(),
                                        **({} if averaged is None else {"average": averaged.state_dict()})},
                    optimizers={"optimizer": optimizer},
                    sidecar={**identity, "state": state,
                             "scheduler": None if scheduler is None else scheduler.state_dict()})
            accelerator.wait_for_everyone()
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
    finally:
        bar.close()

    stopped_early = state["bad_epochs"] >= patience  # never with keep="last": every epoch resets it
    load_weights(model, best_path, config=config)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_best(model, best_path, config, seed, state, finished=True, stopped_early=stopped_early)
        remove_training_state(last_path)
    accelerator.wait_for_everyone()
    if own_accelerator:
        accelerator.free_memory()
    model.eval()
    return FitResult(history=state["history"], best_epoch=state["best_epoch"],
                     best_val_loss=state["best_val_loss"], checkpoint_path=best_path, trained=True,
                     max_epochs=max_epochs, patience=stopping_patience, stopped_early=stopped_early)


def _train_epoch(model, loss_fn, loader, optimizer, scheduler, accelerator, cpu_bf16, epoch, best_path,
                 best_epoch, after_step=None) -> float:
    model.train()
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        with autocast(accelerator, cpu_bf16):
            loss = loss_fn(model, batch)
        # every process checks every process's loss, so all stop together instead of one hanging
        losses = accelerator.gather(loss.detach().float().reshape(1))
        check_finite(losses, "training loss", epoch, _kept(best_path, best_epoch))
        accelerator.backward(loss)
        optimizer.step()
        if after_step is not None:
            after_step()
        if scheduler is not None:
            scheduler.step()
        total += losses.sum()
        count += losses.numel()
    return (total / count).item()


@torch.no_grad()
def _validation_loss(model, loss_fn, loader, accelerator, cpu_bf16) -> float:
    model.eval()
    sums = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for batch in loader:
        with autocast(accelerator, cpu_bf16):
            loss = loss_fn(model, batch)
        size = _batch_size(batch)
        sums += torch.stack([loss.detach().double() * size, torch.tensor(size, device=sums.device,
                                                                          dtype=torch.float64)])
    sums = accelerator.reduce(sums, reduction="sum")
    return (sums[0] / sums[1]).item()


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_size(batch[0])
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


def check_finite(value, what: str, epoch: int, kept: str) -> None:
    """Raise ``FloatingPointError`` naming ``what``, the epoch and what was ``kept`` on disk when
    ``value`` (a number or a tensor) holds NaN or inf."""
    if bool(torch.isfinite(torch.as_tensor(value)).all()):
        return
    raise FloatingPointError(f"{what} became {torch.as_tensor(value).flatten().tolist()} in epoch "
                             f"{epoch}; training stopped and {kept}. Lower the learning rate or check "
                             "the inputs for NaN/inf.")


def _kept(best_path: Path, best_epoch: int) -> str:
    return (f"the best checkpoint {best_path} (epoch {best_epoch}) is unchanged" if best_epoch
            else "no checkpoint was written")


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dict or a dataclass instance, not {type(config).__name__}")


def check_same_run(path: Path, sidecar: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose sidecar differs from ``identity`` (the sidecar entries that identify
    a run, e.g. ``{"config": ..., "seed": ...}``) with an :class:`ArtifactError` naming the keys."""
    differing = config_differences({key: sidecar.get(key) for key in identity}, dict(identity))
    if differing:
        raise ArtifactError(path, f"checkpoint saved for another configuration (differs in {differing}); "
                                  "delete it or choose another checkpoint path")


def checkpoint_finished(path: str | Path) -> bool:
    """Whether a finished checkpoint is at ``path`` (of whichever run: loading it checks that)."""
    sidecar = Path(path).with_suffix(".json")
    try:
        return sidecar.is_file() and bool(read_sidecar(path).get("finished"))
    except (ArtifactError, OSError, ValueError):
        return False


def finished_sidecar(path: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a finished checkpoint of the run ``identity`` at ``path``; None when there is
    none or it did not finish; :class:`ArtifactError` when it belongs to another run."""
    if not path.with_suffix(".json").is_file():
        return None
    sidecar = read_sidecar(path)
    check_same_run(path, sidecar, identity)
    return sidecar if sidecar.get("finished") else None


def save_training_state(path: Path, *, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                        optimizers: Mapping[str, torch.optim.Optimizer], sidecar: Mapping[str, Any]) -> None:
    """Write a resumable training state: groups of tensors (state dicts, generator states) and
    optimizers, by name, to ``path`` (safetensors); ``sidecar`` (JSON-able: identity, loop state,
    scheduler) with the optimizers' hyper-parameters beside it. :func:`load_training_state` reads it."""
    flat = {f"{group}.{k}": v.detach().cpu().contiguous() for group, values in tensors.items()
            for k, v in values.items()}
    hyper = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    flat[f"{name}.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        hyper[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    sidecar_path = path.with_suffix(".json")
    sidecar_path.unlink(missing_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(flat, str(tmp))
    os.replace(tmp, path)
    try:
        write_json(sidecar_path, {**sidecar, "optimizers": hyper})
    except TypeError as err:
        raise TypeError(f"cannot write the training state to {sidecar_path}: the optimizer or "
                        f"scheduler state holds something that is not JSON ({err})") from err


@dataclass
class TrainingState:
    """A training state read back by :func:`load_training_state`."""

    sidecar: dict[str, Any]
    flat: dict[str, torch.Tensor]

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        prefix = group + "."
        return {k[len(prefix):]: v for k, v in self.flat.items() if k.startswith(prefix)}

    def load_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in self.tensors(name).items():
            index, entry = key.split(".", 1)
            per_param.setdefault(int(index), {})[entry] = value
        hyper = self.sidecar["optimizers"][name]
        for index, values in hyper["scalars"].items():
            per_param.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": per_param, "param_groups": hyper["param_groups"]})


def load_training_state(path: Path, identity: Mapping[str, Any]) -> TrainingState | None:
    """The state :func:`save_training_state` wrote at ``path`` for the run ``identity``; None when
    there is none; :class:`ArtifactError` when it belongs to another run or an older format."""
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return None
    sidecar = read_sidecar(path)
    check_same_run(path, sidecar, identity)
    if "optimizers" not in sidecar:
        raise ArtifactError(path, "training state written by an older cxrlib; delete it to train afresh")
    return TrainingState(sidecar, load_file(str(path)))


def remove_training_state(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def _save_best(model, path: Path, config, seed, state, *, finished: bool, stopped_early: bool = False) -> None:
    # drop the old sidecar first: weights without a sidecar never pass for a complete save
    path.with_suffix(".json").unlink(missing_ok=True)
    save_weights(model, path, config=config, metrics={"val_loss": state["best_val_loss"]},
                 extra={"seed": seed, "epoch": state["best_epoch"], "history": state["history"],
                        "stopped_early": stopped_early, "finished": finished})
