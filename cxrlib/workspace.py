"""The notebooks' entry point: one object that knows the profile, the data, and where outputs go.

``Workspace.open(profile, data_dir, seed, results_dir, artifacts_dir)`` takes exactly the papermill
parameters of every notebook. An empty ``data_dir`` means the profile's phantom, generated on first
use; a ChestX-ray14 folder runs the same notebooks on real data. Library modules never import this:
it sits on top, beside the plots.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlib.config import DRY_RUN_BATCH, Profile, load_profile
from cxrlib.data.cache import ImageCache, prepare_cache
from cxrlib.data.chestxray14 import (LABELS, DataError, Splits, find_metadata_file, make_splits,
                                    read_metadata)
from cxrlib.data.datasets import ImageDataset, PairDataset, TensorItems
from cxrlib.data.images import Images
from cxrlib.data.pairs import (make_pairs, max_positive_pairs, official_pair_file, read_pair_file,
                               write_pair_file)
# set by ``cxrlib run --max-steps N``: every notebook opens its profile as a dry run (``max_steps=N``)
from cxrlib.pipeline import MAX_STEPS_VARIABLE
from cxrlib.runtime import machine_description, uses_bf16


#: images in the ChestX-ray14 release (Data_Entry_2017_v2020.csv)
RELEASE_IMAGES = 112_120


def project_root(start: Path | None = None) -> Path:
    """The checkout this code runs in: the nearest folder above ``start`` holding ``run_all.sh``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "run_all.sh").is_file() and (folder / "cxrlib").is_dir():
            return folder
    return start


def phantom_dir(profile: Profile, root: Path | None = None) -> Path:
    """The profile's phantom folder; its name carries the generator's version, so a phantom
    written by an older renderer is never mistaken for the current one."""
    from cxrlib.data.phantom import PHANTOM_VERSION

    d = profile.data
    name = (f"{profile.name}_{d.phantom_patients}p_{d.image_size}px_{d.phantom_max_followups}f"
            f"_seed{profile.seed}_v{PHANTOM_VERSION}")
    return (root or project_root()) / "data" / "phantom" / name


def ensure_phantom(profile: Profile, root: Path | None = None, progress: bool | None = None) -> Path:
    """The profile's phantom folder, generated if it does not exist yet."""
    from cxrlib.data.phantom import generate_phantom

    folder = phantom_dir(profile, root)
    if not folder.is_dir():
        d = profile.data
        generate_phantom(folder, n_patients=d.phantom_patients, size=d.image_size, seed=profile.seed,
                         max_followups=d.phantom_max_followups, progress=progress)
    return folder


@dataclass(frozen=True)
class Judges:
    """The frozen siamese network and classifier with the fits that made (or loaded) them."""

    siamese: Any
    siamese_fit: Any
    classifier: Any
    classifier_fit: Any

    @property
    def identity(self) -> dict[str, str]:
        """What an anonymizer trained against them records, so that new judges retrain it."""
        return {"siamese": self.siamese_fit.checkpoint_path.name,
                "classifier": self.classifier_fit.checkpoint_path.name}

    def describe(self) -> str:
        return "; ".join(f"{name}: {'trained now' if fit.trained else 'loaded'} (best epoch {fit.best_epoch} "
                         f"of {len(fit.history)})"
                         for name, fit in (("siamese network", self.siamese_fit), ("classifier", self.classifier_fit)))


@dataclass
class Workspace:
    profile: Profile
    data_dir: Path
    is_phantom: bool
    seed: int
    results_dir: Path
    artifacts_dir: Path
    progress: bool | None = None
    metadata: pd.DataFrame = field(init=False, repr=False)

    @classmethod
    def open(cls, profile: str | Profile = "cpu", data_dir: str | Path = "", seed: int = 42,
             results_dir: str | Path | None = None, artifacts_dir: str | Path | None = None,
             progress: bool | None = None, **overrides: Any) -> "Workspace":
        if isinstance(profile, str):
            if os.environ.get(MAX_STEPS_VARIABLE):
                overrides.setdefault("max_steps", int(os.environ[MAX_STEPS_VARIABLE]))
            profile = load_profile(profile, **overrides)
        root = project_root()
        is_phantom = not str(data_dir)
        folder = ensure_phantom(profile, root, progress) if is_phantom else Path(data_dir)
        ws = cls(profile=profile, data_dir=folder, is_phantom=is_phantom, seed=int(seed),
                 results_dir=Path(results_dir or root / "results" / profile.name),
                 artifacts_dir=Path(artifacts_dir or root / "artifacts"), progress=progress)
        ws.metadata = read_metadata(find_metadata_file(folder))
        return ws

    def phantom_and_real(self) -> tuple["Workspace | None", "Workspace"]:
        """Workspaces of the profile's phantom and of real radiographs, for holding one against the
        other: this one where it is either, and the shipped real sample where the data is the phantom.
        On real data the phantom is None unless it was generated already: the ``paper`` profile's phantom
        is 30,805 patients, not to be made as a side effect of looking at the release."""
        def sibling(data_dir: str | Path) -> "Workspace":
            return Workspace.open(self.profile, data_dir, seed=self.seed, results_dir=self.results_dir,
                                  artifacts_dir=self.artifacts_dir, progress=self.progress)

        from cxrlib.data.chestxray14 import real_sample_dir

        if self.is_phantom:
            return self, sibling(real_sample_dir())
        return (sibling("") if phantom_dir(self.profile).is_dir() else None), self

    def identity_profile(self, max_patients: int = 2000) -> Any:
        """What identifies a patient without training on this data
        (:func:`cxrlib.attacks.identity_profile` over at most ``max_patients`` patients with two or
        more images, the first by id; CIs from the profile's bootstrap samples)."""
        from cxrlib.attacks import identity_profile

        counts = self.metadata.groupby("patient_id")["image"].transform("size")
        several = self.metadata[counts >= 2]
        kept = several[several["patient_id"].isin(several["patient_id"].drop_duplicates().sort_values()[:max_patients])]
        name = "phantom" if self.is_phantom else self.data_dir.name
        return identity_profile(Images.from_cache(self.cache, kept["image"]), kept, data=name,
                                n_bootstrap=self.profile.evaluation.bootstrap_samples, seed=self.seed)

    # -- data -------------------------------------------------------------------------------------
    @property
    def data_description(self) -> str:
        d = self.profile.data
        kind = (f"phantom ({self.metadata['patient_id'].nunique()} patients, {len(self.metadata)} images)"
                if self.is_phantom else f"ChestX-ray14 at {self.data_dir}")
        return f"{kind}, {d.image_size} px, profile '{self.profile.name}', seed {self.seed}"

    @property
    def is_chestxray14(self) -> bool:
        """The whole ChestX-ray14 release (no phantom ground truth, all its images), where the profile's
        official validation rule and pair files apply; a part of it (data/chestxray14-sample) has too
        few images for either, so its validation split and pairs are drawn with the seed."""
        return not self.is_phantom and self.phantom_truth is None and len(self.metadata) == RELEASE_IMAGES

    @cached_property
    def splits(self) -> Splits:
        d = self.profile.data
        official = d.official_train_count if self.is_chestxray14 else None
        splits = make_splits(self.metadata, self.data_dir, seed=self.seed, val_fraction=d.val_fraction,
                             test_fraction=d.test_fraction, official_train_count=official)
        if not d.max_steps:
            return splits
        # a dry run: each split holds at most max_steps batches (whole patients, those with several
        # images first, so that pairs and patient blocks exist)
        limit = d.max_steps * DRY_RUN_BATCH
        return Splits(*(_first_patients(frame, limit) for _, frame in splits.items()), source=splits.source)

    @cached_property
    def cache(self) -> ImageCache:
        return prepare_cache(self.data_dir, self.profile.data.image_size,
                             workers=self.profile.data.workers, progress=self.progress)

    @cached_property
    def phantom_truth(self) -> pd.DataFrame | None:
        """The phantom's ground truth (text boxes, generative parameters); None on real data."""
        from cxrlib.data.phantom import read_truth

        return read_truth(self.data_dir)

    def images(self, split: str, transform=None) -> ImageDataset:
        return ImageDataset(self.cache, self.splits[split], transform=transform)

    def labeled_tensors(self, split: str) -> TensorItems:
        """One split's images (N, 1, S, S) and 14 labels as tensors in memory, for work that changes
        the images (the autoencoder's reconstructions of the gap decomposition)."""
        frame = self.splits[split]
        return TensorItems(image=Images.from_cache(self.cache, frame["image"]).tensor(),
                           labels=torch.from_numpy(frame[list(LABELS)].to_numpy(dtype=np.float32)))

    def pairs(self, split: str, n_pairs: int, purpose: str) -> pd.DataFrame:
        """The verification pairs of one split for ``purpose``.

        On real ChestX-ray14, purposes the profile lists in ``data.official_pairs_for`` read
        PriCheXy-Net's published pair files. Otherwise seeded pairs are drawn, written once as an
        official-format pair file and re-read; where a split allows fewer distinct same-patient pairs
        than asked (small phantoms), the balanced set is as large as it allows, and a warning says so.
        """
        frame = self.splits[split]
        # a dry run's capped splits hold few of the pair files' images: it draws its pairs
        if self.is_chestxray14 and purpose in self.profile.data.official_pairs_for and not self.profile.data.max_steps:
            path = official_pair_file(split)
            pairs = read_pair_file(path, known_images=frame["image"])
            if len(pairs) != n_pairs:
                warnings.warn(f"{split} split, {purpose}: PriCheXy-Net's pair file {path.name} holds "
                              f"{len(pairs)} pairs; using them instead of {n_pairs}", stacklevel=2)
            return pairs
        allowed = 2 * max_positive_pairs(frame)
        if allowed < 2:
            raise DataError(self.data_dir, f"the {split} split has no patient with two images, so no "
                                           "verification pairs; use more patients")
        if self.profile.data.max_steps:
            n_pairs = min(n_pairs, self.profile.data.max_steps * DRY_RUN_BATCH)
        if n_pairs > allowed:
            warnings.warn(f"{split} split: its patients allow {allowed // 2} distinct same-patient pairs; "
                          f"using {allowed} pairs instead of {n_pairs}", stacklevel=2)
            n_pairs = allowed
        path = self.models_dir / "pairs" / (
            f"{purpose}_{split}_{n_pairs}_seed{self.seed}.txt")
        if not path.is_file():
            seed = zlib.crc32(f"{self.seed}/{split}/{purpose}".encode())
            write_pair_file(make_pairs(frame, n_pairs, seed), path)
        return read_pair_file(path, known_images=frame["image"])

    def pair_dataset(self, pairs: pd.DataFrame, transform=None) -> PairDataset:
        return PairDataset(self.cache, pairs, transform=transform)

    def labeled_pairs(self, split: str, n_pairs: int) -> PairDataset:
        """The anonymizers' training pairs of one split, each with the first image's 14 labels."""
        return PairDataset(self.cache, self.pairs(split, n_pairs, "anonymization"), meta=self.metadata)

    # -- the judges -------------------------------------------------------------------------------
    @cached_property
    def judges(self) -> Judges:
        """The siamese network of notebook 01 and the 14-finding classifier, which the anonymizers
        train against and every evaluation judges with: trained on first use (from the workspace
        seed), loaded from ``artifacts/`` afterwards."""
        from cxrlib.reid import train_verification

        v = self.profile.verification
        siamese, siamese_fit = train_verification(
            self.pair_dataset(self.pairs("train", v.train_pairs, "verification")),
            self.pair_dataset(self.pairs("val", v.val_pairs, "verification")),
            v, seed=self.seed, checkpoint_path=self.artifact_path("siamese", "verification"), progress=False)
        return Judges(siamese, siamese_fit, *self.classifier)

    @cached_property
    def classifier(self) -> tuple[Any, Any]:
        """The 14-finding classifier trained on real images and its fit: trained on first use, loaded
        afterwards (a run trains it beside notebooks 00 and 01: ``cxrlib train classifier``, a job of
        :data:`cxrlib.pipeline.JOBS`, which names this attribute)."""
        from cxrlib.classify import train_classifier

        return train_classifier(self.images("train"), self.images("val"), self.profile.classifier, seed=self.seed,
                                checkpoint_path=self.classifier_path(), progress=False)

    @cached_property
    def latent_diffusion(self) -> Any:
        """Notebook 04's latent diffusion model (:class:`~cxrlib.synthesis.training.TrainedLatentDiffusion`),
        trained on the training split's images on first use, loaded afterwards (a run trains it beside
        notebooks 00-02: ``cxrlib train ldm``, a job of :data:`cxrlib.pipeline.JOBS`, which names this
        attribute)."""
        from cxrlib.synthesis import train_latent_diffusion

        return train_latent_diffusion(self.images("train"), self.images("val"), self.profile.synthesis,
                                      self.profile.image_size, artifact_path=self.artifact_path, seed=self.seed,
                                      progress=False)

    @cached_property
    def retrieval(self) -> tuple[Any, list]:
        """The retrieval network of notebook 01 (ranks a gallery; the synthesis sampler's neighbour
        search) and its fits, one per training phase: trained on first use, loaded afterwards."""
        from cxrlib.reid import retrieval_augmentation, train_retrieval

        config = self.profile.retrieval
        return train_retrieval(self.images("train", transform=retrieval_augmentation(config)),
                               self.images("val"), config, seed=self.seed,
                               checkpoint_path=self.artifact_path("retrieval", "retrieval"), progress=False)

    def classifier_path(self, trained_on: str = "", seed: int | None = None) -> Path:
        """Where a 14-finding classifier of the profile's recipe lives: the real one (``trained_on``
        empty, :attr:`classifier` at the workspace seed) or one trained on other images, named by a key
        of them (``"synthetic-<digest>"``); ``seed`` (default: the workspace's) names its initialization."""
        return self.artifact_path(f"classifier-{trained_on}" if trained_on else "classifier", "classifier",
                                  seed=seed)

    def gap_decomposition(self, model: Any, *, model_name: str, synthetic_train: TensorItems,
                          synthetic_val: TensorItems, synthetic_key: str, seeds: list[int]) -> Any:
        """Notebook 04's :func:`cxrlib.synthesis.gap_decomposition` of the latent diffusion ``model`` (saved
        as ``model_name``) and its synthetic set (``synthetic_key`` names it) on this workspace's splits:
        every classifier at :meth:`classifier_path`, so the real one of the workspace seed and the
        synthetic one notebook 04 trained are loaded, not trained again."""
        from cxrlib.synthesis import gap_decomposition

        trained_on = {"real": "", "reconstructed": f"reconstructed-{model_name}", "synthetic": f"synthetic-{synthetic_key}"}
        return gap_decomposition(
            model, real_train=self.labeled_tensors("train"), real_val=self.labeled_tensors("val"),
            test=self.labeled_tensors("test"), synthetic_train=synthetic_train, synthetic_val=synthetic_val,
            config=self.profile.classifier, seeds=seeds,
            checkpoint_path=lambda kind, seed: self.classifier_path(trained_on[kind], seed=seed), progress=False)

    def anonymizer_path(self, name: str) -> Path:
        """Where a learned anonymizer lives: it depends on its own section and on both judges'."""
        return self.artifact_path(name, "anonymization", "verification", "classifier")

    @property
    def anonymizer_training(self) -> dict[str, Any]:
        """The keywords that :func:`~cxrlib.anonymize.flow_field.train_prichexy_net` and
        :func:`~cxrlib.anonymize.privacy_net.train_privacy_net` train from: the judges, the split's
        images, the profile's labeled pairs, where checkpoints go, the seed."""
        config = self.profile.anonymization
        return dict(siamese=self.judges.siamese, classifier=self.judges.classifier,
                    images=(self.images("train"), self.images("val")),
                    pairs=(self.labeled_pairs("train", config.train_pairs),
                           self.labeled_pairs("val", config.val_pairs)),
                    artifact_path=self.anonymizer_path, identity=self.judges.identity, seed=self.seed,
                    progress=False)

    # -- outputs ----------------------------------------------------------------------------------
    @cached_property
    def _data_key(self) -> str:
        """Trained models depend on the data they saw: a short key of the folder and its metadata."""
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode())
        digest.update(str(len(self.metadata)).encode())
        return ("phantom-" if self.is_phantom else "data-") + digest.hexdigest()[:8]

    @property
    def models_dir(self) -> Path:
        """Where this run's trained models live: the artifacts of its profile and data (every seed)."""
        return self.artifacts_dir / self.profile.name / self._data_key

    def artifact_path(self, name: str, *sections: str, seed: int | None = None) -> Path:
        """Where a trained model lives: keyed by profile, data, the profile sections it depends on,
        and the seed (default: the workspace's). A path without suffix; the artifacts module adds
        ``.safetensors``/``.json``."""
        key = self.profile.fingerprint("data", *sections)
        path = self.models_dir / f"{name}-{key}-seed{self.seed if seed is None else seed}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def context(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "data": self.data_description, "seed": self.seed,
                "image_size": self.profile.data.image_size, "phantom": self.is_phantom,
                # a dry run says so, so that its results are never taken for the reference run's
                **({"max_steps": self.profile.data.max_steps} if self.profile.data.max_steps else {}),
                # bf16 autocast for every network (cxrlib.runtime.autocast)
                "bf16": uses_bf16(),
                # timings, and results trained in bf16, depend on the machine
                "machine": {key: machine_description()[key] for key in ("cpu", "cores", "gpu")}}

    def save_figure(self, fig, name: str) -> Path:
        path = self.results_dir / "figures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def save_table(self, table: pd.DataFrame, name: str) -> tuple[Path, Path]:
        """A table as CSV and as Markdown."""
        csv, markdown = self.results_dir / f"{name}.csv", self.results_dir / f"{name}.md"
        self.results_dir.mkdir(parents=True, exist_ok=True)  # the folder appears with its first result
        table.to_csv(csv, index=False)
        markdown.write_text(table.to_markdown(index=False) + "\n")
        return csv, markdown


def _first_patients(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Whole patients of ``frame``, most images first, up to ``limit`` images (at least two patients)."""
    sizes = frame.groupby("patient_id").size().sort_values(ascending=False, kind="stable")
    kept = sizes.index[: max(2, int((sizes.cumsum() <= limit).sum()))]
    return frame[frame["patient_id"].isin(kept)].reset_index(drop=True)


__all__ = ["Workspace", "project_root", "phantom_dir", "ensure_phantom", "DataError"]
