"""Where the synthetic-only classifier loses its AUC: the gap between a classifier trained on real
images and one trained on synthetic images only, split into what the autoencoder loses and what the
generator (the latent U-Net and its sampler) loses beyond it.

Four classifiers' test AUCs on the same real test images, per classifier seed and per finding:

* ``real`` (a): trained on real images, scored on the real test images;
* ``real_on_reconstructed`` (b): the same classifier, scored on the test images passed through the
  autoencoder (what the autoencoder alone erases of what the real classifier looks for);
* ``reconstructed`` (c): trained (and validated) on the autoencoder's reconstructions of the real
  training (and validation) images, scored on the real test images: the best a generator could do
  whose samples are perfect latents, decoded by this autoencoder;
* ``synthetic`` (d): trained (and validated) on synthetic images only, as notebook 04.

The gaps, in AUC points (100 x difference of mean AUCs): a - b (the autoencoder at test time), a - c
(what training on the autoencoder's output loses), c - d (what the generator loses beyond the
autoencoder), and a - d, the synthetic-only gap itself (= (a - c) + (c - d)). And per finding, how
well each condition is rendered: the real classifier's AUC on the synthetic images against the labels
they were drawn for.

Every classifier, the real one included, is trained once per seed with the same recipe, so that the
comparisons are like for like; the spread over seeds is the sample standard deviation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrlib.classify import predict, train_classifier
from cxrlib.config import ClassifierConfig
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems
from cxrlib.metrics import multilabel_auc
from cxrlib.models.diffusion import LatentDiffusion
from cxrlib.synthesis.sampling import reconstruct

#: the four classifiers' AUCs (a, b, c, d of the module docstring), in that order
PARTS = ("real", "real_on_reconstructed", "reconstructed", "synthetic")

#: each gap: the part it starts from minus the part it ends at
GAPS = {
    "autoencoder_at_test": ("real", "real_on_reconstructed"),
    "autoencoder_in_training": ("real", "reconstructed"),
    "generator": ("reconstructed", "synthetic"),
    "synthetic_only": ("real", "synthetic"),
}


@dataclasses.dataclass(frozen=True)
class SeedAUCs:
    """One classifier seed: each part's test AUC per finding (NaN where the test images hold no
    positive, or only positives, of that finding) and the real classifier's AUC on the synthetic
    images against their drawn labels per finding (``rendering``)."""

    seed: int
    per_finding: dict[str, dict[str, float]]
    rendering: dict[str, float]

    def mean_auc(self, part: str) -> float:
        """Mean over the findings with an AUC, as :func:`cxrlib.metrics.multilabel_auc`."""
        return _nanmean(self.per_finding[part].values())

    @property
    def rendering_mean(self) -> float:
        return _nanmean(self.rendering.values())


@dataclasses.dataclass(frozen=True)
class Spread:
    """A figure over classifier seeds: its mean, its sample standard deviation (0 for one seed) and
    each seed's value."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        values = np.asarray(values, dtype=float)
        defined = values[~np.isnan(values)]
        if len(defined) == 0:
            return cls(math.nan, math.nan, tuple(values.tolist()))
        std = float(defined.std(ddof=1)) if len(defined) > 1 else 0.0
        return cls(float(defined.mean()), std, tuple(values.tolist()))


@dataclasses.dataclass(frozen=True)
class GapDecomposition:
    """What :func:`gap_decomposition` measured; ``to_json``/``from_json`` round-trip it."""

    findings: tuple[str, ...]
    seeds: tuple[SeedAUCs, ...]
    test_images: int
    real_training_images: int
    synthetic_training_images: int
    #: the synthetic images the rendering AUCs were measured on (training and validation)
    rendered_images: int

    def auc(self, part: str) -> Spread:
        """Mean test AUC of ``part`` over seeds."""
        return Spread.of([s.mean_auc(part) for s in self.seeds])

    def auc_per_finding(self, part: str) -> dict[str, Spread]:
        return {f: Spread.of([s.per_finding[part][f] for s in self.seeds]) for f in self.findings}

    def gap(self, name: str) -> Spread:
        """A gap of :data:`GAPS` in AUC points, per seed (paired by seed) and over seeds."""
        start, end = GAPS[name]
        return Spread.of([100 * (s.mean_auc(start) - s.mean_auc(end)) for s in self.seeds])

    def gap_per_finding(self, name: str) -> dict[str, Spread]:
        start, end = GAPS[name]
        return {f: Spread.of([100 * (s.per_finding[start][f] - s.per_finding[end][f]) for s in self.seeds])
                for f in self.findings}

    def rendering(self) -> Spread:
        return Spread.of([s.rendering_mean for s in self.seeds])

    def rendering_per_finding(self) -> dict[str, Spread]:
        return {f: Spread.of([s.rendering[f] for s in self.seeds]) for f in self.findings}

    def worst_findings(self, gap: str = "synthetic_only", count: int = 5) -> list[str]:
        """The findings that lose most in ``gap`` (mean over seeds), largest loss first."""
        losses = {f: spread.mean for f, spread in self.gap_per_finding(gap).items() if not math.isnan(spread.mean)}
        return sorted(losses, key=losses.get, reverse=True)[:count]

    def table(self) -> pd.DataFrame:
        """Per finding (rows, the largest synthetic-only loss first, then the mean): each part's test
        AUC, the gap split into what training on the autoencoder's output loses (a - c) and what the
        generator loses beyond it (c - d), in AUC points, and the rendering AUC; means over seeds."""
        columns = {"real (a)": self.auc_per_finding("real"),
                   "real on reconstructed (b)": self.auc_per_finding("real_on_reconstructed"),
                   "trained on reconstructions (c)": self.auc_per_finding("reconstructed"),
                   "synthetic only (d)": self.auc_per_finding("synthetic"),
                   "gap: autoencoder (a - c)": self.gap_per_finding("autoencoder_in_training"),
                   "gap: generator (c - d)": self.gap_per_finding("generator"),
                   "rendering AUC": self.rendering_per_finding()}
        order = self.worst_findings(count=len(self.findings))
        order += [f for f in self.findings if f not in order]  # findings the test split cannot score
        table = pd.DataFrame({name: {f: values[f].mean for f in order} for name, values in columns.items()})
        table.loc["mean"] = [self.auc("real").mean, self.auc("real_on_reconstructed").mean,
                             self.auc("reconstructed").mean, self.auc("synthetic").mean,
                             self.gap("autoencoder_in_training").mean, self.gap("generator").mean,
                             self.rendering().mean]
        return table

    def summary(self) -> dict:
        """Every aggregate figure: per part and gap the mean over seeds with its spread, overall and per
        finding, and the rendering AUCs."""
        def spread(s: Spread) -> dict:
            return {"mean": _json_float(s.mean), "std": _json_float(s.std), "seeds": [_json_float(v) for v in s.values]}

        return {
            "seeds": [s.seed for s in self.seeds],
            "auc": {part: spread(self.auc(part)) for part in PARTS},
            "gap_points": {name: spread(self.gap(name)) for name in GAPS},
            "rendering_auc": spread(self.rendering()),
            "per_finding": {f: {**{part: spread(self.auc_per_finding(part)[f]) for part in PARTS},
                                **{f"gap_{name}": spread(self.gap_per_finding(name)[f]) for name in GAPS},
                                "rendering": spread(self.rendering_per_finding()[f])}
                            for f in self.findings},
        }

    def to_json(self) -> dict:
        return {"findings": list(self.findings),
                "seeds": [{"seed": s.seed,
                           "per_finding": {part: {f: _json_float(v) for f, v in aucs.items()}
                                           for part, aucs in s.per_finding.items()},
                           "rendering": {f: _json_float(v) for f, v in s.rendering.items()}}
                          for s in self.seeds],
                "test_images": self.test_images, "real_training_images": self.real_training_images,
                "synthetic_training_images": self.synthetic_training_images,
                "rendered_images": self.rendered_images}

    @classmethod
    def from_json(cls, payload: dict) -> "GapDecomposition":
        seeds = tuple(SeedAUCs(int(s["seed"]),
                               {part: {f: _from_json_float(v) for f, v in aucs.items()}
                                for part, aucs in s["per_finding"].items()},
                               {f: _from_json_float(v) for f, v in s["rendering"].items()})
                      for s in payload["seeds"])
        return cls(tuple(payload["findings"]), seeds, int(payload["test_images"]),
                   int(payload["real_training_images"]), int(payload["synthetic_training_images"]),
                   int(payload["rendered_images"]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _nanmean(values) -> float:
    values = np.asarray(list(values), dtype=float)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else math.nan


def _json_float(value: float) -> float | None:
    # JSON has no NaN: a finding without an AUC is null
    return None if value is None or math.isnan(value) else float(value)


def _from_json_float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _per_finding(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return multilabel_auc(labels, probabilities, labels=LABELS, n_bootstrap=0)["per_class"]


def gap_decomposition(model: LatentDiffusion | None, *, real_train: TensorItems, real_val: TensorItems,
                      test: TensorItems, synthetic_train: TensorItems, synthetic_val: TensorItems,
                      config: ClassifierConfig, seeds: Sequence[int],
                      checkpoint_path: Callable[[str, int], str | Path],
                      reconstruct_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      progress: bool | None = None) -> GapDecomposition:
    """Train, per seed in ``seeds``, a classifier (``config``, :func:`cxrlib.classify.train_classifier`)
    on the real, the reconstructed and the synthetic training images (each validated on its own kind
    of validation images) and score them on the real ``test`` images; see the module docstring.

    The datasets hold ``image`` (N, 1, S, S) in [0, 1] and ``labels`` (N, 14); the synthetic ones the labels
    their images were drawn for. ``checkpoint_path(kind, seed)`` says where the classifier of ``kind``
    ("real", "reconstructed" or "synthetic") and ``seed`` lives: a finished checkpoint there is loaded,
    not retrained (so the workspace's real classifier can serve as one seed's). The key should name the
    training images where they are not fixed by the config (the synthetic ones, the reconstructions).
    ``reconstruct_images`` (default: :func:`~cxrlib.synthesis.sampling.reconstruct` with ``model``)
    is the autoencoder's round trip (``model`` may be None where it is given)."""
    if len(seeds) == 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    if reconstruct_images is None:
        if model is None:
            raise ValueError("give the latent diffusion model or reconstruct_images")
        reconstruct_images = lambda images: reconstruct(model, images)  # noqa: E731
    reconstructed_train, reconstructed_val, reconstructed_test = (
        TensorItems(image=reconstruct_images(data.tensors["image"]), labels=data.tensors["labels"])
        for data in (real_train, real_val, test))
    test_labels = test.tensors["labels"].numpy()
    synthetic_all = _concat(synthetic_train, synthetic_val)
    drawn_labels = synthetic_all.tensors["labels"].numpy()

    def trained(kind: str, train: Dataset, val: Dataset, seed: int):
        classifier, _ = train_classifier(train, val, config, checkpoint_path=checkpoint_path(kind, seed), seed=seed,
                                         progress=progress)
        return classifier

    def scored(classifier, data: Dataset, labels: np.ndarray) -> dict[str, float]:
        probabilities, _ = predict(classifier, data, progress=progress)
        return _per_finding(labels, probabilities)

    results = []
    for seed in seeds:
        real = trained("real", real_train, real_val, seed)
        on_reconstructions = trained("reconstructed", reconstructed_train, reconstructed_val, seed)
        synthetic = trained("synthetic", synthetic_train, synthetic_val, seed)
        per_finding = {"real": scored(real, test, test_labels),
                       "real_on_reconstructed": scored(real, reconstructed_test, test_labels),
                       "reconstructed": scored(on_reconstructions, test, test_labels),
                       "synthetic": scored(synthetic, test, test_labels)}
        results.append(SeedAUCs(int(seed), per_finding, scored(real, synthetic_all, drawn_labels)))
    return GapDecomposition(tuple(LABELS), tuple(results), test_images=len(test), real_training_images=len(real_train),
                            synthetic_training_images=len(synthetic_train), rendered_images=len(synthetic_all))


def _concat(first: TensorItems, second: TensorItems) -> TensorItems:
    return TensorItems(**{key: torch.cat([first.tensors[key], second.tensors[key]]) for key in first.keys})
