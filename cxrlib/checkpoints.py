"""Checkpoints on disk: which run a checkpoint belongs to, whether it finished, and the resumable
training state of any number of networks and optimizers (written by :func:`cxrlib.train.train` after
every epoch, read when an interrupted training resumes)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cxrlib.artifacts import ArtifactError, config_differences, read_sidecar, write_json


def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    path = Path(checkpoint_path).with_suffix(".safetensors")
    return path.with_name(path.stem + ".last.safetensors")


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
