"""The training engine every model in cxrlib shares.

:func:`train` runs a :class:`TrainingTask` (the networks, optimizers, one step and the validation of
what is trained) for a :class:`Schedule`, keeping its weights as a :class:`Checkpoint` says, through
Hugging Face Accelerate: the same call trains on a CPU, on one GPU with bf16 mixed precision, or, for a
task that shards its data, on several processes started by ``torchrun`` / ``accelerate launch``
(gradients are averaged, the validation is gathered from every process, only the main process writes
files). :func:`fit` is the common task, one model and one loss; the adversarial loop of
:mod:`cxrlib.anonymize.adversarial` (three networks, three optimizers, one step that is not a loss of
one model) is another.

Files at ``Checkpoint.path`` (``NAME.safetensors`` + ``NAME.json``):

* the **kept** weights (the best epoch by validation, or the last), with a sidecar holding the config,
  what identifies the run (seed, training settings), the epoch, metrics, history, package versions and
  a ``finished`` flag. A finished checkpoint of the same run is loaded instead of training again, so
  notebooks reuse trained models; one of another run raises :class:`~cxrlib.artifacts.ArtifactError`.
* while training, a **last** state ``NAME.last.safetensors`` + ``.json``: every network and optimizer
  of the task, the task's own state (a scheduler), the shuffling generator of a loader that is not
  sharded, and the early-stopping state. An interrupted training resumes from it; a finished one
  deletes it.

A launched multi-process script should call ``accelerator.end_training()`` once at its very end (it
destroys the process group, so :func:`train` does not call it itself): otherwise a process can abort at exit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from cxrlib.artifacts import ArtifactError, load_weights, save_weights
from cxrlib.checkpoints import (finished_sidecar, last_checkpoint_path, load_training_state, remove_training_state,
                                save_training_state)
from cxrlib.runtime import (autocast, make_accelerator, process_seed, seed_everything, tqdm_disabled,
                            use_fast_layout, uses_bf16)

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
    #: one dict per epoch: ``epoch`` (1-based), ``train_<name>`` per loss the task reports,
    #: ``val_<name>`` per validation entry, ``seconds`` (the whole epoch), ``train_seconds`` (its
    #: training part), ``bf16``
    history: list[dict[str, float]]
    best_epoch: int
    #: the kept epoch's validation value that selects (:attr:`TrainingTask.selection`)
    best_val_loss: float
    checkpoint_path: Path
    #: False when a finished checkpoint was loaded instead of training
    trained: bool
    max_epochs: int
    #: None for a schedule meant to run to its end (no patience, or ``keep="last"``)
    patience: int | None
    #: whether the patience ran out before the cap
    stopped_early: bool

    def record(self) -> dict[str, Any]:
        """:func:`training_record` of this fit."""
        return training_record(len(self.history), self.best_epoch, self.max_epochs, self.patience,
                               self.stopped_early)


@dataclass(frozen=True)
class Schedule:
    """How long a training runs and which epoch's weights it keeps."""

    max_epochs: int
    #: stop after this many epochs without a large enough improvement; None: run all ``max_epochs``
    patience: int | None = None
    #: "best": the epoch with the lowest validation value; "last": the final epoch, for schedules meant
    #: to run to their end (OneCycle), where a noisy validation loss would pick a worse epoch
    keep: str = "best"
    #: an epoch resets the patience only when it lowers the validation value by at least this share of
    #: the value of the last epoch that did (0: any decrease); smaller gains still update the kept
    #: weights. A smooth loss that creeps down for ever then stops once it has flattened.
    min_improvement: float = 0.0

    def __post_init__(self):
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")

    @property
    def stopping_patience(self) -> int | None:
        """The patience that can stop the training (None: it runs to the cap)."""
        return None if self.keep == "last" else self.patience


@dataclass(frozen=True)
class Checkpoint:
    """Where the kept weights go and which run they belong to."""

    path: str | Path
    #: what the saved weights are (a dict or a dataclass), checked when they are loaded
    config: Any
    seed: int
    #: the training's own settings when ``config`` does not hold them (the adversarial loop's): then
    #: they, with the seed, identify the run
    training: Mapping[str, Any] | None = None

    @property
    def best_path(self) -> Path:
        return Path(self.path).with_suffix(".safetensors")

    @property
    def last_path(self) -> Path:
        return last_checkpoint_path(self.path)

    def config_dict(self) -> dict[str, Any]:
        config = self.config
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            return dataclasses.asdict(config)
        if isinstance(config, Mapping):
            return dict(config)
        raise TypeError(f"config must be a dict or a dataclass instance, not {type(config).__name__}")

    def identity(self) -> dict[str, Any]:
        """The sidecar entries that identify the run (a checkpoint of another run is refused)."""
        if self.training is None:
            return {"config": self.config_dict(), "seed": self.seed}
        return {"training": {**self.training, "seed": self.seed}}


@dataclass(frozen=True)
class Runtime:
    """Where and how a training runs."""

    #: None: one made by :func:`~cxrlib.runtime.make_accelerator` for this training
    accelerator: Accelerator | None = None
    #: one bar per training; None shows it only on a terminal, so notebooks stay quiet
    progress: bool | None = None
    #: bf16 autocast on a CPU that computes bf16 in hardware (:func:`~cxrlib.runtime.autocast`)
    cpu_bf16: bool = True


class TrainingTask:
    """What :func:`train` trains: named networks and optimizers, one step, one validation.

    Subclasses set :attr:`networks`, :attr:`optimizers`, :attr:`kept` and :attr:`target` and implement
    :meth:`prepare`, :meth:`step` and :meth:`validate`.
    """

    #: the validation entry whose lowest value picks the kept epoch
    selection = "loss"
    #: the losses :meth:`step` reports, in order; a step may leave out one it did not compute
    #: (recorded as NaN)
    loss_names: tuple[str, ...] = ("loss",)
    #: whether Accelerate shards the loaders over processes (their order then drawn from the seed and
    #: the epoch); False: one process, the loaders as given, their shuffling generator saved to resume
    shards_data = True
    #: every network whose state a resumed training needs, by name (unwrapped)
    networks: dict[str, torch.nn.Module]
    #: every optimizer, by name
    optimizers: dict[str, torch.optim.Optimizer]
    #: the network whose weights are validated and saved
    kept: torch.nn.Module
    #: the network the kept weights are loaded into at the end (the caller's model)
    target: torch.nn.Module

    def prepare(self, accelerator: Accelerator, cpu_bf16: bool) -> None:
        """Move (and, for several processes, wrap) the networks and optimizers for ``accelerator``."""
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One training step on a batch already on the device; the losses (0-dim tensors) by name."""
        raise NotImplementedError

    def validate(self, loader: Any) -> dict[str, float]:
        """The validation of the current weights, by name; it must hold :attr:`selection`."""
        raise NotImplementedError

    def end_epoch(self, validation: Mapping[str, float]) -> None:
        """Called after each epoch's validation (e.g. a plateau scheduler steps here)."""

    def state(self) -> dict[str, Any]:
        """The task's own resumable state beyond its networks and optimizers (JSON)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


class SupervisedTask(TrainingTask):
    """One model, one loss: ``loss_fn(model, batch)`` returns the mean loss of a batch already on the
    device and must call ``model(...)`` (the forward) so that several processes synchronize gradients.

    ``scheduler`` steps after every batch (e.g. OneCycleLR), except ``ReduceLROnPlateau``, which steps
    once per epoch on the validation loss. ``ema_decay``: validate, keep and return an exponential
    moving average of the weights, updated after every step (as diffusion models are trained),
    instead of the weights of the last step. ``channels_last``: the weights in that layout
    (:func:`~cxrlib.runtime.use_fast_layout`), faster for most of the profile's networks.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
                 scheduler: Any = None, ema_decay: float | None = None, channels_last: bool = True):
        if channels_last:
            use_fast_layout(model)
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        # the average is a copy beside the model (its first update takes the first step's weights); it
        # is what gets validated and saved
        self.averaged = None if ema_decay is None else torch.optim.swa_utils.AveragedModel(
            model, use_buffers=True, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay))
        self.networks = {"model": model, **({} if self.averaged is None else {"average": self.averaged})}
        self.optimizers = {"optimizer": optimizer}
        self.kept = model if self.averaged is None else self.averaged.module
        self.target = model

    def prepare(self, accelerator: Accelerator, cpu_bf16: bool) -> None:
        self.accelerator, self.cpu_bf16 = accelerator, cpu_bf16
        if self.averaged is not None:
            self.averaged.to(accelerator.device)
        self.wrapped, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.optimizers = {"optimizer": self.optimizer}
        if self.scheduler is not None and not self.plateau:
            # prepared, it steps once per process per batch, so a schedule sized from the unsharded
            # loader length ends where it should under any number of processes
            self.scheduler = accelerator.prepare(self.scheduler)

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        self.wrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.accelerator, self.cpu_bf16):
            loss = self.loss_fn(self.wrapped, batch)
        self.accelerator.backward(loss)
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        if self.scheduler is not None and not self.plateau:
            self.scheduler.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self, loader: Any) -> dict[str, float]:
        model = self.wrapped if self.averaged is None else self.averaged.module
        model.eval()
        sums = torch.zeros(2, device=self.accelerator.device, dtype=torch.float64)
        for batch in loader:
            with autocast(self.accelerator, self.cpu_bf16):
                loss = self.loss_fn(model, batch)
            size = batch_size_of(batch)
            sums += torch.stack([loss.detach().double() * size,
                                 torch.tensor(size, device=sums.device, dtype=torch.float64)])
        sums = self.accelerator.reduce(sums, reduction="sum")
        return {"loss": (sums[0] / sums[1]).item()}

    def end_epoch(self, validation: Mapping[str, float]) -> None:
        if self.plateau:
            self.scheduler.step(validation["loss"])

    def state(self) -> dict[str, Any]:
        return {"scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def fit(model: torch.nn.Module, loss_fn: LossFn, train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader, *, optimizer: torch.optim.Optimizer, schedule: Schedule,
        checkpoint: Checkpoint, scheduler: Any = None, ema_decay: float | None = None,
        channels_last: bool = True, runtime: Runtime = Runtime()) -> FitResult:
    """Train ``model`` on ``loss_fn`` (a :class:`SupervisedTask`) through :func:`train`; afterwards it
    holds the kept weights, in eval mode."""
    task = SupervisedTask(model, loss_fn, optimizer, scheduler=scheduler, ema_decay=ema_decay,
                          channels_last=channels_last)
    return train(task, train_loader, val_loader, schedule=schedule, checkpoint=checkpoint, runtime=runtime)


#: the early-stopping state a training state must hold to be resumed
_LOOP_STATE = ("epoch", "best_epoch", "best_val_loss", "reference_val_loss", "bad_epochs", "history")


def train(task: TrainingTask, train_loader: Any, val_loader: Any, *, schedule: Schedule, checkpoint: Checkpoint,
          runtime: Runtime = Runtime()) -> FitResult:
    """Train ``task`` for ``schedule``; afterwards ``task.target`` holds the kept weights, in eval mode.

    A finished checkpoint of the same run is loaded instead of training. A non-finite loss raises
    ``FloatingPointError`` naming the epoch; the kept checkpoint written before stays as it was.
    Each epoch's history entry records the losses, the validation, the time and whether it trained in
    bf16.

    Seeds: sharded loaders draw their order from ``checkpoint.seed`` and the epoch, alike in every
    process; the random draws inside a step come from :func:`~cxrlib.runtime.process_seed`, different
    in each process, so a resumed training draws what an uninterrupted one would.
    """
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if len(loader) == 0:
            raise ValueError(f"{name} yields no batches: its dataset is empty")
    accelerator = runtime.accelerator or make_accelerator()
    finished = finished_sidecar(checkpoint.best_path, checkpoint.identity())
    if finished is not None:
        return _loaded(task, finished, schedule, checkpoint, accelerator)
    run = _Run(task, schedule, checkpoint, runtime, accelerator)
    train_loader, val_loader = run.start(train_loader, val_loader)
    bar = tqdm(total=schedule.max_epochs, initial=run.state["epoch"], unit="epoch", leave=False,
               desc=checkpoint.best_path.stem,
               disable=not accelerator.is_main_process or tqdm_disabled(runtime.progress))
    try:
        while run.continues():
            losses, value = run.epoch(train_loader, val_loader)
            bar.update(1)
            bar.set_postfix(train=f"{next(iter(losses.values())):.4f}", val=f"{value:.4f}")
    finally:
        bar.close()
    result = run.finish()
    if runtime.accelerator is None:
        accelerator.free_memory()
    return result


def _loaded(task: TrainingTask, finished: Mapping[str, Any], schedule: Schedule, checkpoint: Checkpoint,
            accelerator: Accelerator) -> FitResult:
    """The result of a finished checkpoint, its weights loaded into ``task.target``."""
    load_weights(task.target, checkpoint.best_path, config=checkpoint.config_dict())
    task.target.to(accelerator.device).eval()  # where a freshly trained model would be
    # checkpoints written before these entries were recorded: the adversarial loop's older name for the
    # epoch, and early stopping exactly when the patience ran out
    best_epoch = finished.get("epoch", finished.get("best_epoch"))
    patience = schedule.stopping_patience
    stopped = finished.get("stopped_early", patience is not None and len(finished["history"]) - best_epoch >= patience)
    return FitResult(history=finished["history"], best_epoch=best_epoch,
                     best_val_loss=finished["metrics"]["val_" + task.selection], checkpoint_path=checkpoint.best_path,
                     trained=False, max_epochs=schedule.max_epochs, patience=patience, stopped_early=stopped)


class _Run:
    """One training of :func:`train` from its start (or resume) to its kept weights."""

    def __init__(self, task: TrainingTask, schedule: Schedule, checkpoint: Checkpoint, runtime: Runtime,
                 accelerator: Accelerator):
        self.task, self.schedule, self.checkpoint, self.runtime = task, schedule, checkpoint, runtime
        self.accelerator = accelerator
        self.identity = checkpoint.identity()
        self.selection = "val_" + task.selection
        self.patience = schedule.stopping_patience
        # reference_val_loss: the validation value of the last epoch that reset the patience
        self.state = {"epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "reference_val_loss": math.inf,
                      "bad_epochs": 0, "history": []}
        self.shuffler = None

    def start(self, train_loader: Any, val_loader: Any) -> tuple[Any, Any]:
        """Seed, resume from a training state if there is one, prepare; the loaders to iterate."""
        task, accelerator = self.task, self.accelerator
        # alike in every process: the seedable samplers take their seed from here at prepare
        seed_everything(self.checkpoint.seed)
        resume = load_training_state(self.checkpoint.last_path, self.identity)
        if resume is not None:
            self.state = resume.sidecar["state"]
            if not set(_LOOP_STATE) <= set(self.state):
                raise ArtifactError(self.checkpoint.last_path,
                                    "training state written by an older cxrlib; delete it to train afresh")
            for name, network in task.networks.items():
                network.load_state_dict(resume.tensors(name))
        task.prepare(accelerator, self.runtime.cpu_bf16)
        # a loader that is not sharded keeps drawing from its own generator: saved with the state to resume
        self.shuffler = None if task.shards_data else getattr(train_loader, "generator", None)
        if task.shards_data:
            train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
        if resume is not None:
            for name, optimizer in task.optimizers.items():
                resume.load_optimizer(name, optimizer)
            task.load_state(resume.sidecar.get("task", {}))
            if self.shuffler is not None:
                self.shuffler.set_state(resume.tensors("shuffler")["state"])
        return train_loader, val_loader

    def continues(self) -> bool:
        return self.state["epoch"] < self.schedule.max_epochs and (
            self.patience is None or self.state["bad_epochs"] < self.patience)

    def epoch(self, train_loader: Any, val_loader: Any) -> tuple[dict[str, float], float]:
        """Train and validate one epoch, keep its weights if they are the best, save the training state;
        the epoch's mean losses and its selecting validation value."""
        task, accelerator, state, schedule = self.task, self.accelerator, self.state, self.schedule
        epoch = state["epoch"] + 1
        kept = _kept(self.checkpoint.best_path, state["best_epoch"])
        # per-epoch seeding makes a resumed run draw what an uninterrupted one would
        seed_everything(process_seed(self.checkpoint.seed, epoch, accelerator.process_index))
        for loader in (train_loader, val_loader):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
        started = time.perf_counter()
        try:
            losses = _train_epoch(task, train_loader, accelerator)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err} in epoch {epoch}; training stopped and {kept}. Lower the "
                                     "learning rate or check the inputs for NaN/inf.") from None
        train_seconds = time.perf_counter() - started
        validation = task.validate(val_loader)
        value = validation[task.selection]
        check_finite(value, "validation loss", epoch, kept)
        task.end_epoch(validation)
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, **{f"train_{k}": v for k, v in losses.items()},
                                 **{f"val_{k}": v for k, v in validation.items()},
                                 "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
                                 "bf16": uses_bf16(accelerator, self.runtime.cpu_bf16)})
        if schedule.keep == "last" or value < state["best_val_loss"]:
            state.update(best_epoch=epoch, best_val_loss=value)
            if accelerator.is_main_process:
                _save_kept(task.kept, self.checkpoint, state, self.selection, finished=False)
        if schedule.keep == "last" or value < state["reference_val_loss"] * (1 - schedule.min_improvement):
            state.update(reference_val_loss=value, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if accelerator.is_main_process:
            tensors = {name: accelerator.unwrap_model(network).state_dict() for name, network in task.networks.items()}
            if self.shuffler is not None:
                tensors["shuffler"] = {"state": self.shuffler.get_state()}
            save_training_state(self.checkpoint.last_path, tensors=tensors, optimizers=task.optimizers,
                                sidecar={**self.identity, "state": state, "task": task.state()})
        accelerator.wait_for_everyone()
        return losses, value

    def finish(self) -> FitResult:
        """Load the kept weights into ``task.target``, mark the checkpoint finished, drop the training state."""
        accelerator, state, path = self.accelerator, self.state, self.checkpoint.best_path
        stopped_early = self.patience is not None and state["bad_epochs"] >= self.patience
        load_weights(self.task.target, path, config=self.checkpoint.config_dict())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_kept(self.task.target, self.checkpoint, state, self.selection, finished=True,
                       stopped_early=stopped_early)
            remove_training_state(self.checkpoint.last_path)
        accelerator.wait_for_everyone()
        self.task.target.eval()
        return FitResult(history=state["history"], best_epoch=state["best_epoch"],
                         best_val_loss=state["best_val_loss"], checkpoint_path=path, trained=True,
                         max_epochs=self.schedule.max_epochs, patience=self.patience, stopped_early=stopped_early)


def _train_epoch(task: TrainingTask, loader: Any, accelerator: Accelerator) -> dict[str, float]:
    """One epoch of ``task.step``; each loss's mean over the epoch's items, gathered from every process
    (NaN for a loss no step reported). A non-finite loss raises ``FloatingPointError``."""
    names = task.loss_names
    sums = torch.zeros(len(names), device=accelerator.device, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for batch in loader:
        losses = task.step(batch)
        unknown = set(losses) - set(names)
        if unknown:
            raise KeyError(f"the step reported {sorted(unknown)}, not among the task's loss_names {names}")
        present = torch.tensor([name in losses for name in names], device=sums.device)
        values = torch.stack([losses[name].detach().double().reshape(()) if name in losses
                              else torch.zeros((), dtype=torch.float64, device=sums.device) for name in names])
        size = torch.tensor([float(batch_size_of(batch))], dtype=torch.float64, device=sums.device)
        # every process checks every process's losses, so all stop together instead of one hanging
        gathered = accelerator.gather(torch.cat([values, size]).reshape(1, -1))
        check_finite(gathered[:, :-1][:, present], "training loss", None, None)
        sizes = gathered[:, -1:]
        sums += torch.where(present, (gathered[:, :-1] * sizes).sum(0), 0.0)
        counts += present * sizes.sum()
    return dict(zip(names, (sums / counts).tolist()))


def batch_size_of(batch: Any) -> int:
    """The number of items in a batch: a tensor, or a mapping, list or tuple whose first entry is one."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return batch_size_of(batch[0])
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


def check_finite(value, what: str, epoch: int | None, kept: str | None) -> None:
    """Raise ``FloatingPointError`` naming ``what``, the epoch and what was ``kept`` on disk when
    ``value`` (a number or a tensor) holds NaN or inf (without an epoch: only ``what`` and the values,
    for the caller to complete)."""
    if bool(torch.isfinite(torch.as_tensor(value)).all()):
        return
    values = torch.as_tensor(value).flatten().tolist()
    if epoch is None:
        raise FloatingPointError(f"{what} became {values}")
    raise FloatingPointError(f"{what} became {values} in epoch {epoch}; training stopped and {kept}. Lower the "
                             "learning rate or check the inputs for NaN/inf.")


def _kept(best_path: Path, best_epoch: int) -> str:
    return (f"the kept checkpoint {best_path} (epoch {best_epoch}) is unchanged" if best_epoch
            else "no checkpoint was written")


def _save_kept(model: torch.nn.Module, checkpoint: Checkpoint, state: Mapping[str, Any], selection: str, *,
               finished: bool, stopped_early: bool = False) -> None:
    path = checkpoint.best_path
    # drop the old sidecar first: weights without a sidecar never pass for a complete save
    path.with_suffix(".json").unlink(missing_ok=True)
    identity = {k: v for k, v in checkpoint.identity().items() if k != "config"}
    save_weights(model, path, config=checkpoint.config_dict(), metrics={selection: state["best_val_loss"]},
                 extra={**identity, "epoch": state["best_epoch"], "history": state["history"],
                        "stopped_early": stopped_early, "finished": finished})
