"""The privacy-utility protocol, one function for any anonymizer (PriCheXy-Net's evaluation).

:func:`evaluate_anonymizer` (several at once: :func:`evaluate_anonymizers`) judges ``anonymizer(images)
-> images`` three ways and writes the protocol it followed into its result (the ``protocol`` field), so
no number travels without it:

* **Privacy -- the re-training attack.** A fresh siamese network is trained on pairs whose two images
  are both anonymized (training and validation), then tested on pairs of held-out patients whose
  first image is anonymized and second real: the linkage attack of someone who holds the anonymized
  release and real radiographs of known patients. AUC mean +- sample std over ``runs`` independent
  attackers (seeds ``seed``, ``seed + 1``, ...). For reference, the original siamese network (trained
  on real images, frozen) on the same test pairs.
* **Utility.** The abnormality classifier trained on real images, frozen, on the anonymized test
  images: AUC per finding, their mean, and a bootstrap 95 % CI of the mean.
* **Fidelity.** SSIM (mean over test images) and PSNR (over all test pixels) between the test images
  and their anonymized versions.

Every image the protocol touches is anonymized once, as a data publisher would release it, and
stored as 8-bit like a released PNG; the attackers then train on those fixed images (the official
code likewise anonymizes DP-Pix images once, when it loads the pairs). Anonymizers with a ``reset``
method (DP-Pix) are reset first, so a result does not depend on what the anonymizer did before.

Results are cached as JSON in the setup's directory, keyed by the method, its parameters, a digest
of its weights, the data, the frozen networks and the protocol's settings: calling again with the
same inputs reads the file instead of re-training. Attackers are checkpointed while the runs go on
(an interrupted evaluation resumes run by run) and deleted once the result is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlib.anonymize.base import Anonymizer
from cxrlib.anonymize.flow_field import displacement_bound_pixels
from cxrlib.artifacts import hash_tensor, load_weights, write_json
from cxrlib.classify import evaluate_classifier
from cxrlib.config import EvaluationConfig, VerificationConfig
from cxrlib.data.cache import ImageCache
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import PairDataset, TensorItems
from cxrlib.linkage import ATTACK_LABELS, LinkagePanel, descriptor_attacks, linkage_panel, network_attacks
from cxrlib.metrics import fidelity, verification_metrics
from cxrlib.models.siamese import SiameseNetwork
from cxrlib.reid import (Images, VerificationExperiment, pair_scores, run_checkpoint,
                         verification_experiments)
from cxrlib.runtime import default_device

#: prefix that tells an anonymized image from its original in the linkage test set
ANONYMIZED = "anonymized:"

#: the papers' claims a run is checked against (docs/papers.md): PriCheXy-Net keeps the classifier's mean
#: AUC within 3 points of the original and lowers the re-trained attack's AUC by at least 15 points;
#: a classifier below 0.80 mean AUC is too weak to judge utility with
UTILITY_LOSS_AT_MOST = 0.03
ATTACK_DROP_AT_LEAST = 0.15
CLASSIFIER_AT_LEAST = 0.80


def attack_config(verification: VerificationConfig, evaluation: EvaluationConfig) -> VerificationConfig:
    """The fresh attacker: a siamese network like the verification one, trained with the evaluation's recipe."""
    e = evaluation
    return dataclasses.replace(verification, backbone=e.attack_backbone, pretrained=e.attack_pretrained,
                               lr=e.attack_lr, batch_size=e.attack_batch_size, max_epochs=e.attack_max_epochs,
                               patience=e.attack_patience, train_pairs=e.attack_train_pairs,
                               val_pairs=e.attack_val_pairs, test_pairs=e.attack_test_pairs, runs=e.attack_runs)


@dataclass(eq=False)
class EvaluationSetup:
    """What every anonymizer is judged with, fixed across methods so that their numbers compare."""

    #: the original pixels of every image the protocol touches (pairs and classifier test images)
    images: Images
    #: attack training and validation pairs (both images anonymized) and held-out test pairs
    train_pairs: pd.DataFrame
    val_pairs: pd.DataFrame
    test_pairs: pd.DataFrame
    #: classifier test images (column ``image``) with their 14 finding columns
    test_meta: pd.DataFrame
    #: the original siamese network (reference, frozen) and the classifier trained on real images
    siamese: nn.Module
    classifier: nn.Module
    attack: VerificationConfig
    runs: int
    bootstrap_samples: int
    #: where results (JSON) and, while running, the attackers' checkpoints go
    directory: Path
    seed: int
    #: attack runs trained side by side (:func:`cxrlib.reid.verification_experiments`)
    processes: int = 1
    #: the retrieval network of notebook 01, a member of the attack panel when given
    retrieval: nn.Module | None = None

    def __post_init__(self):
        if self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")
        for name in ("train_pairs", "val_pairs", "test_pairs"):
            pairs = getattr(self, name)
            if len(pairs) == 0 or pairs["label"].nunique() < 2:
                raise ValueError(f"{name} must hold both same-patient and different-patient pairs "
                                 f"(got {len(pairs)} pairs)")
        missing = [c for c in ("image", *LABELS) if c not in self.test_meta.columns]
        if missing:
            raise ValueError(f"test_meta lacks column(s) {missing}")
        self.images.rows(self._names())  # raises KeyError naming what is missing
        self.directory = Path(self.directory)

    def _names(self) -> list[str]:
        pairs = pd.concat([self.train_pairs, self.val_pairs, self.test_pairs])
        return list(dict.fromkeys([*pairs["img1"], *pairs["img2"], *self.test_meta["image"]]))

    @classmethod
    def from_cache(cls, cache: ImageCache, *, train_pairs: pd.DataFrame, val_pairs: pd.DataFrame,
                   test_pairs: pd.DataFrame, test_meta: pd.DataFrame, siamese: nn.Module,
                   classifier: nn.Module, verification: VerificationConfig, evaluation: EvaluationConfig,
                   directory: str | Path, seed: int, processes: int = 1,
                   retrieval: nn.Module | None = None) -> EvaluationSetup:
        """A setup reading the images from ``cache``, the attacker and runs from the profile sections."""
        pairs = pd.concat([train_pairs, val_pairs, test_pairs])
        names = [*pairs["img1"], *pairs["img2"], *test_meta["image"]]
        return cls(images=Images.from_cache(cache, names), train_pairs=train_pairs, val_pairs=val_pairs,
                   test_pairs=test_pairs, test_meta=test_meta, siamese=siamese, classifier=classifier,
                   attack=attack_config(verification, evaluation), runs=evaluation.attack_runs,
                   bootstrap_samples=evaluation.bootstrap_samples, directory=Path(directory), seed=seed,
                   processes=processes, retrieval=retrieval)

    def protocol(self) -> str:
        a = self.attack
        start = "ImageNet weights" if a.pretrained else "random weights"
        return (
            f"Privacy (re-training attack): {self.runs} fresh siamese network(s) ({a.backbone}, {start}; "
            f"seeds {self.seed}..{self.seed + self.runs - 1}), each trained on {len(self.train_pairs)} pairs "
            f"and validated on {len(self.val_pairs)} pairs with BOTH images anonymized (Adam, lr {a.lr:g}, "
            f"batch {a.batch_size}, at most {a.max_epochs} epochs, early stopping after {a.patience} epochs "
            f"without a lower validation loss), then tested on {len(self.test_pairs)} pairs of held-out "
            f"patients with the FIRST image anonymized and the second real (linkage attack); AUC mean +- "
            f"sample std over the runs. Reference: the original siamese network, trained on real images "
            f"and frozen, on the same test pairs. "
            f"Utility: the classifier trained on real images, frozen, on the {len(self.test_meta)} "
            f"anonymized test images; mean of the per-finding AUCs (findings without positive and negative "
            f"test images left out) with a {self.bootstrap_samples}-sample bootstrap 95 % CI. "
            f"Attack panel: every anonymized test image searched among the original test images (its own "
            f"source left out) by every attack of cxrlib.linkage -- the frozen siamese network"
            f"{', the retrieval network' if self.retrieval is not None else ''}, the first re-trained "
            f"attacker and the attacks that need no training -- with P@1 and AUC beside chance and "
            f"{self.bootstrap_samples}-sample patient-bootstrap 95 % CIs; privacy is read from the worst case. "
            f"Fidelity: SSIM (mean over the test images) and PSNR (dB, from the mean squared error over all "
            f"test pixels) between the test images and their anonymized versions. "
            f"Every image is anonymized once, as a released dataset would be, and stored as 8-bit.")


@torch.no_grad()
def anonymize_images(anonymizer: nn.Module, images: Images, *, batch_size: int = 128,
                     device: torch.device | str = "cpu") -> Images:
    """Every image through ``anonymizer`` (eval mode) once, rounded to 8 bits like a released PNG."""
    anonymizer.eval().to(device)
    out = np.empty_like(images.pixels)
    for start in range(0, len(images.names), batch_size):
        x = images.tensor(slice(start, start + batch_size)).to(device)
        y = anonymizer(x).float().clamp(0.0, 1.0)
        out[start:start + len(x)] = (y * 255.0).round().to(torch.uint8).squeeze(1).cpu().numpy()
    return Images(images.names, out)


def linkage_test_set(anonymized: Images, original: Images, pairs: pd.DataFrame) -> tuple[Images, pd.DataFrame]:
    """The test pairs as (anonymized img1, real img2): one image set holding the anonymized first
    images under a prefixed name and the real second images, and the pairs pointing into it."""
    first = list(dict.fromkeys(pairs["img1"]))
    second = list(dict.fromkeys(pairs["img2"]))
    images = Images(tuple(ANONYMIZED + n for n in first) + tuple(second),
                    np.concatenate([anonymized.pixels[anonymized.rows(first)],
                                    original.pixels[original.rows(second)]]))
    return images, pairs.assign(img1=ANONYMIZED + pairs["img1"])


def frozen_linkage(siamese: nn.Module, anonymized: Images, original: Images, pairs: pd.DataFrame, *,
                   bootstrap_samples: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """The frozen ``siamese`` network on ``pairs`` as (anonymized img1, real img2): verification
    metrics with a bootstrap CI of the AUC, and the same-patient probabilities of the pairs."""
    images, linkage_pairs = linkage_test_set(anonymized, original, pairs)
    scores = pair_scores(siamese, images, linkage_pairs)
    return verification_metrics(linkage_pairs["label"], scores, n_bootstrap=bootstrap_samples, seed=seed), scores


def classifier_utility(classifier: nn.Module, images: Images, test_meta: pd.DataFrame, *, bootstrap_samples: int,
                       seed: int, progress: bool | None = False) -> tuple[dict[str, Any], np.ndarray]:
    """The frozen ``classifier`` on the images of ``test_meta`` (taken from ``images``, e.g. anonymized
    ones): :func:`cxrlib.metrics.multilabel_auc`'s dict and the probabilities (N, 14)."""
    labels = test_meta[list(LABELS)].to_numpy(dtype=np.float32)
    data = TensorItems(image=images.tensor(images.rows(test_meta["image"].tolist())), labels=torch.tensor(labels))
    return evaluate_classifier(classifier, data, bootstrap_samples=bootstrap_samples, seed=seed, progress=progress)


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes, bytes): identifies trained weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        hash_tensor(digest, tensor, f"{name}:")
    return digest.hexdigest()


def _frame_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False)
                          .to_numpy().tobytes()).hexdigest()


def evaluation_key(anonymizer: Anonymizer, setup: EvaluationSetup) -> str:
    """What a cached result depends on, hashed: method and parameters, weights, data, judges, settings."""
    pixels = hashlib.sha256("\n".join(setup.images.names).encode())
    pixels.update(np.ascontiguousarray(setup.images.pixels).tobytes())
    identity = {
        "anonymizer": anonymizer.config(), "weights": state_digest(anonymizer),
        "pixels": pixels.hexdigest(),
        "pairs": [_frame_digest(p[["img1", "img2", "label"]])
                  for p in (setup.train_pairs, setup.val_pairs, setup.test_pairs)],
        "test": _frame_digest(setup.test_meta[["image", *LABELS]]),
        "siamese": state_digest(setup.siamese), "classifier": state_digest(setup.classifier),
        "attack": dataclasses.asdict(setup.attack), "runs": setup.runs, "processes": setup.processes,
        "bootstrap_samples": setup.bootstrap_samples, "seed": setup.seed,
        "retrieval": None if setup.retrieval is None else state_digest(setup.retrieval),
        # 2: results carry the attack panel (cxrlib.linkage); older cached results do not; a panel with
        # other attacks is another result
        "protocol_version": 2, "panel": list(ATTACK_LABELS),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def result_path(anonymizer: Anonymizer, setup: EvaluationSetup) -> Path:
    """Where :func:`evaluate_anonymizer` caches its result: ``NAME-KEY.json`` in the setup's directory."""
    return setup.directory / f"{anonymizer.name}-{evaluation_key(anonymizer, setup)}.json"


def evaluate_anonymizer(anonymizer: Anonymizer, setup: EvaluationSetup, *, device: torch.device | str | None = None,
                        progress: bool | None = None) -> dict[str, Any]:
    """Privacy, utility and fidelity of ``anonymizer`` under ``setup`` (see the module docstring).

    Returns (and caches as JSON) a dict with ``method``, ``params``, ``label``, ``protocol``,
    ``privacy`` (``attack_auc_mean``, ``attack_auc_std``, ``attack_runs``, ``frozen_auc``,
    ``frozen_auc_ci``), ``utility`` (``mean_auc``, ``ci``, ``per_class``, ``excluded``), ``fidelity``
    (``ssim``, ``psnr``; PSNR is None when no pixel changed), ``counts``, ``seconds`` and ``key``.
    """
    return evaluate_anonymizers([anonymizer], setup, device=device, progress=progress)[0]


def evaluate_anonymizers(anonymizers: Sequence[Anonymizer], setup: EvaluationSetup, *,
                         device: torch.device | str | None = None, progress: bool | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_anonymizer` of each of ``anonymizers``, their attackers trained in one pool.

    Every anonymizer without a cached result anonymizes the images first; then all their attack runs
    train side by side (``setup.processes`` workers), so the short runs of one method fill the cores
    while the long runs of another finish. ``seconds`` of a result is the wall time of the call that
    computed it, shared by the anonymizers computed together.
    """
    for anonymizer in anonymizers:
        if not isinstance(anonymizer, Anonymizer):
            raise TypeError(f"anonymizer must be a cxrlib Anonymizer, got {type(anonymizer).__name__}")
    paths = [result_path(anonymizer, setup) for anonymizer in anonymizers]
    # an anonymizer listed twice is computed once
    todo = [index for index, path in enumerate(paths) if not path.is_file() and path not in paths[:index]]
    started = time.perf_counter()
    device = torch.device(device or default_device())
    anonymized, experiments = {}, []
    for index in todo:
        anonymizer = anonymizers[index]
        reset = getattr(anonymizer, "reset", None)
        if callable(reset):
            reset()
        anonymized[index] = anonymize_images(anonymizer, setup.images, device=device)
        linkage_images, linkage_pairs = linkage_test_set(anonymized[index], setup.images, setup.test_pairs)
        checkpoint = setup.directory / "attackers" / paths[index].stem
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        experiments.append(VerificationExperiment(
            PairDataset(anonymized[index], setup.train_pairs), PairDataset(anonymized[index], setup.val_pairs),
            linkage_images, linkage_pairs, setup.attack, setup.seed, checkpoint, setup.runs))
    attacks = verification_experiments(experiments, processes=setup.processes, progress=progress)

    setup.siamese.eval().to(device)
    test_names = setup.test_meta["image"].tolist()
    for index, experiment, attack in zip(todo, experiments, attacks):
        anonymizer, images = anonymizers[index], anonymized[index]
        frozen, _ = frozen_linkage(setup.siamese, images, setup.images, setup.test_pairs,
                                   bootstrap_samples=setup.bootstrap_samples, seed=setup.seed)
        utility, _ = classifier_utility(setup.classifier, images, setup.test_meta,
                                        bootstrap_samples=setup.bootstrap_samples, seed=setup.seed, progress=progress)
        panel = anonymization_panel(images, setup, retrained=[_attacker(experiment, setup.attack)])
        result = {
            "method": anonymizer.name, "params": anonymizer.params(), "label": anonymizer.describe(),
            "key": paths[index].stem.rpartition("-")[2], "protocol": setup.protocol(),
            "privacy": {
                "attack_auc_mean": attack["mean"]["auc"], "attack_auc_std": attack["std"]["auc"],
                "attack_runs": attack["runs"], "frozen_auc": frozen["auc"], "frozen_auc_ci": frozen.get("auc_ci"),
                "panel": panel.to_json(),
            },
            "utility": {"mean_auc": utility["mean_auc"], "ci": utility.get("ci"),
                        "per_class": utility["per_class"], "excluded": utility["excluded"]},
            "fidelity": fidelity(setup.images.tensor(setup.images.rows(test_names)),
                                 images.tensor(images.rows(test_names))),
            "counts": {"attack_train_pairs": len(setup.train_pairs), "attack_val_pairs": len(setup.val_pairs),
                       "test_pairs": len(setup.test_pairs), "test_images": len(setup.test_meta),
                       "anonymized_images": len(images.names)},
            "seconds": time.perf_counter() - started,
        }
        write_json(paths[index], result)
        for run in range(setup.runs):
            weights = run_checkpoint(experiment.checkpoint_path, run).with_suffix(".safetensors")
            weights.unlink(missing_ok=True)
            weights.with_suffix(".json").unlink(missing_ok=True)
    return [json.loads(path.read_text()) for path in paths]


def _attacker(experiment: VerificationExperiment, config: VerificationConfig) -> nn.Module:
    """The first re-trained attacker of an experiment (seed ``setup.seed``), loaded from its checkpoint."""
    model = SiameseNetwork(config.backbone, False, config.features)
    load_weights(model, run_checkpoint(experiment.checkpoint_path, 0))
    return model.eval()


def anonymization_panel(anonymized: Images, setup: EvaluationSetup, *, retrained: Sequence[nn.Module] = ()
                        ) -> LinkagePanel:
    """Every attack of the panel (:mod:`cxrlib.linkage`) on the classifier's test images: each anonymized
    image searched among the originals, its own source left out (scope ``anonymized``): the attacker holds
    real radiographs of the patients, as in the protocol's (anonymized, real) test pairs."""
    if "patient_id" not in setup.test_meta.columns:
        raise ValueError("the attack panel needs the test images' patient_id column in test_meta")
    names = setup.test_meta["image"].tolist()
    queries = Images(tuple(names), anonymized.pixels[anonymized.rows(names)])
    gallery = Images(tuple(names), setup.images.pixels[setup.images.rows(names)])
    attacks = [*network_attacks(queries, gallery, siamese=setup.siamese, retrieval=setup.retrieval,
                                retrained=retrained),
               *descriptor_attacks(queries, gallery)]
    return linkage_panel(attacks, setup.test_meta["patient_id"].to_numpy(), setup.test_meta["patient_id"].to_numpy(),
                         scope="anonymized", n_bootstrap=setup.bootstrap_samples, seed=setup.seed)


# -- the comparison table --------------------------------------------------------------------------

#: docs/papers.md section 2 (PriCheXy-Net, MICCAI 2023), in %: (re-trained verification AUC, classification
#: mean AUC, status). The abstract confirms 81.8 -> 57.7 for mu = 0.01; the rest is quoted elsewhere as
#: the paper's table and is unconfirmed. DP-Pix: m = 1, eps = 0.1, only a range over b is known.
PUBLISHED = {
    "identity": ("81.8 ± 0.6", "80.5", "AUC 81.8 confirmed; ± and utility unconfirmed"),
    "flow_field": ("57.7 ± 4.0", "76.2", "AUC 57.7 confirmed (mu 0.01); ± and utility unconfirmed"),
    "privacy_net": ("49.8 ± 2.2", "57.5", "unconfirmed"),
    "dp_pix": ("≈ 50–52.5", "≈ 50–53", "unconfirmed, range over b"),
}
#: the paper's mu with published numbers (its displacement in pixels is the same at every size:
#: :mod:`cxrlib.anonymize.flow_field`)
PUBLISHED_MU = 0.01


def published_row(result: dict[str, Any]) -> tuple[str, str, str]:
    """Published (attack AUC, utility AUC, status) for a result's method and setting, or blanks."""
    method, params = result["method"], result["params"]
    if method not in PUBLISHED:
        return "", "", ""
    if method == "flow_field":
        if abs(params["mu"] - PUBLISHED_MU) > 0.1 * PUBLISHED_MU:
            return "", "", f"no published value (mu {params['mu']:g})"
    return PUBLISHED[method]


def setting(result: dict[str, Any], *, short: bool = False) -> str:
    """The parameter that distinguishes rows of one method: in full for tables, ``short`` for labels."""
    params = result["params"]
    if result["method"] == "flow_field":
        if short:
            return f"mu={params['mu']:g}"
        # a run records the bound its geometry gave; older runs moved pixels by another rule
        bound = params.get("max_displacement_px", displacement_bound_pixels(params["mu"]))
        return f"mu = {params['mu']:g} (at most {bound:.2g} px at {params['image_size']} px)"
    if result["method"] == "dp_pix":
        return f"b={params['b']}" if short else f"b = {params['b']}, eps = {params['eps']:g}, m = {params['m']:g}"
    return ""


METHOD_NAMES = {"identity": "no anonymization", "flow_field": "PriCheXy-Net", "privacy_net": "Privacy-Net",
                "dp_pix": "DP-Pix"}


def results_table(results: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluated anonymizer, values as fractions (numeric), for plots and CSV."""
    rows = []
    for r in results:
        ci = r["utility"].get("ci") or [math.nan, math.nan]
        rows.append({**_worst_case_columns(r["privacy"].get("panel")),
            "method": r["method"], "name": METHOD_NAMES.get(r["method"], r["method"]), "setting": setting(r),
            "label": short_label(r),
            "attack_auc": r["privacy"]["attack_auc_mean"], "attack_auc_std": r["privacy"]["attack_auc_std"],
            "attack_runs": len(r["privacy"]["attack_runs"]), "frozen_auc": r["privacy"]["frozen_auc"],
            "utility_auc": r["utility"]["mean_auc"], "utility_ci_low": ci[0], "utility_ci_high": ci[1],
            "ssim": r["fidelity"]["ssim"],
            "psnr": math.nan if r["fidelity"]["psnr"] is None else r["fidelity"]["psnr"],
        })
    return pd.DataFrame(rows)


def _worst_case_columns(panel: dict | None) -> dict[str, Any]:
    """The panel's worst case (strongest attack) for the AUC and P@1, NaN for a result without a panel."""
    if panel is None:
        return {"worst_auc": math.nan, "worst_auc_low": math.nan, "worst_auc_high": math.nan, "worst_auc_attack": "",
                "worst_p1": math.nan, "worst_p1_attack": "", "p1_chance": math.nan}
    worst = LinkagePanel.from_json(panel).worst_case()
    auc, p1 = worst["auc"], worst["precision_at_1"]
    return {"worst_auc": auc.value, "worst_auc_low": auc.ci[0], "worst_auc_high": auc.ci[1],
            "worst_auc_attack": auc.label, "worst_p1": p1.value, "worst_p1_attack": p1.label,
            "p1_chance": p1.chance}


def short_label(result: dict[str, Any]) -> str:
    """``PriCheXy-Net mu=0.04``, ``DP-Pix b=8``, ``Privacy-Net``: for legends and progress lines."""
    name = METHOD_NAMES.get(result["method"], result["method"])
    return " ".join(part for part in (name, setting(result, short=True)) if part)


def _attack_name(label: str) -> str:
    """An attack's label without the notebook that trained it, for table cells."""
    return label.split(" (notebook")[0]


def comparison_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The table for readers: percentages, measured and published values side by side."""
    table = results_table(results)
    published = [published_row(r) for r in results]

    def pct(values: pd.Series) -> pd.Series:
        return (100 * values).round(1)

    return pd.DataFrame({
        "method": table["name"], "setting": table["setting"],
        "attack AUC % (re-trained)": [f"{100 * m:.1f} ± {100 * s:.1f}"
                                      for m, s in zip(table["attack_auc"], table["attack_auc_std"])],
        "published attack AUC %": [p[0] for p in published],
        "worst-case AUC % (panel)": [f"{100 * v:.1f} ({_attack_name(a)})" if v == v else "–"
                                     for v, a in zip(table["worst_auc"], table["worst_auc_attack"])],
        "worst-case P@1 % (chance)": [f"{100 * v:.1f} ({100 * c:.1f}; {_attack_name(a)})" if v == v else "–"
                                      for v, c, a in zip(table["worst_p1"], table["p1_chance"],
                                                         table["worst_p1_attack"])],
        "frozen SNN AUC %": pct(table["frozen_auc"]),
        "utility mean AUC %": pct(table["utility_auc"]),
        "utility 95 % CI": [f"{100 * lo:.1f}–{100 * hi:.1f}"
                            for lo, hi in zip(table["utility_ci_low"], table["utility_ci_high"])],
        "published utility AUC %": [p[1] for p in published],
        "SSIM": table["ssim"].round(3),
        "PSNR dB": ["∞" if math.isnan(v) else f"{v:.1f}" for v in table["psnr"]],
        "published values": [p[2] for p in published],
    })
