"""Trained weights as safetensors with a JSON sidecar; nothing here loads a pickle.

A saved model is two files, ``NAME.safetensors`` and ``NAME.json``. The sidecar holds the config the
model was built from, its metrics and the package versions; :func:`load_weights` refuses weights whose
config differs from the one asked for, so a checkpoint of another architecture or profile never loads
silently. Writes go to a temporary name first, so an interrupted save leaves no file that looks done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class ArtifactError(ValueError):
    """A saved artifact is missing, incomplete or does not match what was asked for."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("cxrlib", "torch", "torchvision", "diffusers", "accelerate", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hash_tensor(digest: "hashlib._Hash", tensor: torch.Tensor, label: str = "") -> None:
    """Feed ``label``, the dtype, the shape and the bytes of ``tensor`` (in its values' order) to ``digest``."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{label}{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Short SHA-256 of tensors (dtypes, shapes, bytes): keys a model by the data it was trained on where
    that data is not fixed by the config, e.g. samples whose last bits depend on the machine's precision."""
    digest = hashlib.sha256()
    for tensor in tensors:
        hash_tensor(digest, tensor)
    return digest.hexdigest()[:10]


def partial_path(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place: one name per process, since run_all.sh's
    jobs run side by side and may write the same file (with the same content) at the same time."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def write_json(path: str | Path, payload: Any, *, sort_keys: bool = True) -> Path:
    """Write JSON atomically (temporary file, then rename); keys sorted unless ``sort_keys`` is False
    (a report that puts its verdict first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


class MetricsFile:
    """A notebook's metrics file as a dataclass: ``to_json`` is its fields (nested dataclasses as dicts),
    ``from_json`` reads them back by name (subclasses with typed parts rebuild those), ``save`` writes the
    file with the run's ``context`` beside them. The keys are the file's schema, which the report reads."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]):
        """From the file as read (its ``context`` left out)."""
        return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)})

    def save(self, path: str | Path, context: Mapping[str, Any] | None = None) -> Path:
        """Write the results as JSON (with ``context``, e.g. ``Workspace.context()``, beside them)."""
        return write_json(path, {**({"context": dict(context)} if context else {}), **self.to_json()})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=_jsonable))


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The keys (dotted for nested dicts: ``config.lr``) in which two configs differ once both are
    read back as JSON; [] when they are equal."""
    saved, wanted = dict(_flat(as_json(saved))), dict(_flat(as_json(wanted)))
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k, _MISSING) != wanted.get(k, _MISSING))


_MISSING = object()


def _flat(config: Any, prefix: str = ""):
    if isinstance(config, dict) and config:
        for key, value in config.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], config


def save_weights(module: torch.nn.Module, path: str | Path, *, config: dict[str, Any],
                 metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Save ``module``'s state dict to ``path`` (.safetensors) and its sidecar (.json)."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = partial_path(path)
    save_file(state, str(tmp))
    sidecar = {"config": config, "metrics": metrics or {}, "versions": package_versions(), **(extra or {})}
    # sidecar last: its presence marks a complete save
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), sidecar)
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise ArtifactError(path, "sidecar missing: the save did not complete")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(path, f"sidecar is not valid JSON ({err})") from err


def exists(path: str | Path) -> bool:
    path = Path(path)
    return path.with_suffix(".safetensors").is_file() and path.with_suffix(".json").is_file()


def load_weights(module: torch.nn.Module, path: str | Path, *, config: dict[str, Any] | None = None,
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights into ``module``; check the sidecar's config equals ``config`` when given.

    Returns the sidecar. Raises :class:`ArtifactError` on a missing file, a config mismatch or
    tensors that do not fit the module.
    """
    weights = Path(path).with_suffix(".safetensors")
    if not weights.is_file():
        raise ArtifactError(weights, "weights file not found")
    sidecar = read_sidecar(weights)
    differing = [] if config is None else config_differences(sidecar.get("config", {}), config)
    if differing:
        raise ArtifactError(weights, f"saved for another configuration (differs in {differing})")
    state = load_file(str(weights), device=str(map_location))
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ArtifactError(weights, f"weights do not fit {type(module).__name__}: {err}") from err
    return sidecar
