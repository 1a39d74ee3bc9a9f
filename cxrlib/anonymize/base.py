"""The one anonymizer interface: ``anonymizer(images) -> images`` on float tensors in [0, 1], (B, 1, H, W).

Every method (identity, PriCheXy-Net's flow field, Privacy-Net, DP-Pix) subclasses
:class:`Anonymizer`, so the evaluation protocol takes any of them. A subclass

* sets a class attribute ``name`` and registers itself with :func:`register`;
* implements ``anonymize(images)`` (input already validated) and ``params()``, which returns the
  keyword arguments of its constructor, JSON-able: they identify the method and its settings and
  rebuild it on :func:`load_anonymizer`.

Saved anonymizers are ``NAME.safetensors`` + ``NAME.json`` through :mod:`cxrlib.artifacts`; the JSON
names the registered class and its parameters, so ``load_anonymizer(path)`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cxrlib.artifacts import ArtifactError, load_weights, read_sidecar, save_weights

REGISTRY: dict[str, type[Anonymizer]] = {}


def register(cls: type[Anonymizer]) -> type[Anonymizer]:
    """Class decorator: make ``cls`` loadable by :func:`load_anonymizer` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be registered")
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise ValueError(f"anonymizer name {name!r} is already taken by {REGISTRY[name].__name__}")
    REGISTRY[name] = cls
    return cls


def check_images(images: Any, argument: str = "images") -> torch.Tensor:
    """Raise ``ValueError`` unless ``images`` is a float tensor (B, 1, H, W) with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{argument} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{argument} must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        raise ValueError(f"{argument} must have shape (B, 1, H, W) with B >= 1, got {tuple(images.shape)}")
    low, high = torch.aminmax(images.detach())
    if not (0.0 <= low.item() and high.item() <= 1.0):
        # NaN fails both comparisons and lands here too
        raise ValueError(f"{argument} must lie in [0, 1]; found values in [{low.item():.4g}, {high.item():.4g}]")
    return images


class Anonymizer(nn.Module):
    """Base class: validates input, anonymizes, keeps the output in [0, 1]; saves and reloads."""

    name: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement params()")

    def anonymize(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement anonymize()")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        out = self.anonymize(images)
        if out.shape != images.shape:
            raise RuntimeError(f"{type(self).__name__} returned shape {tuple(out.shape)} for input "
                               f"{tuple(images.shape)}")
        # interpolation and reduced precision can overshoot the range by rounding
        return out.clamp(0.0, 1.0)

    def describe(self) -> str:
        """A short label for tables and figures, e.g. ``flow_field(mu=0.04)``."""
        shown = {k: v for k, v in self.params().items() if isinstance(v, (int, float, str))}
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
        """Save as ``path`` (.safetensors) + JSON naming the class and its parameters."""
        if REGISTRY.get(self.name) is not type(self):
            raise TypeError(f"{type(self).__name__} is not registered (use @register), so it could not be "
                            f"loaded back")
        return save_weights(self, path, config=self.config(), metrics=metrics)

    def config(self) -> dict[str, Any]:
        return {"anonymizer": self.name, "params": self.params()}


def load_anonymizer(path: str | Path, map_location: str | torch.device = "cpu") -> Anonymizer:
    """Rebuild a saved anonymizer from its sidecar and weights; returned in eval mode."""
    config = read_sidecar(path).get("config", {})
    name = config.get("anonymizer")
    if name not in REGISTRY:
        raise ArtifactError(Path(path).with_suffix(".json"),
                            f"names anonymizer {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        anonymizer = REGISTRY[name](**config.get("params", {}))
    except (TypeError, ValueError) as err:
        raise ArtifactError(Path(path).with_suffix(".json"), f"parameters do not build {name!r} ({err})") from err
    load_weights(anonymizer, path, config=anonymizer.config(), map_location=map_location)
    return anonymizer.eval()


@register
class Identity(Anonymizer):
    """Leaves images unchanged: the 'no anonymization' reference of every comparison."""

    name = "identity"

    def params(self) -> dict[str, Any]:
        return {}

    def anonymize(self, images: torch.Tensor) -> torch.Tensor:
        return images
