"""A release compared with its raw export, as notebook 05 walks a publisher through it: audit a folder
(and write its report), anonymize the raw export into a release, put the release's images back in the raw
export's order, and measure what the release leaves its users (a frozen classifier's AUC, SSIM and PSNR
against the raw pixels). :class:`PublishingResults` is what ``publishing.json`` holds.

The summaries keep the names notebook 05's tables show (``"P@1"``, ``"classifier mean AUC"``...): they are
the keys of ``publishing.json``, which the committed results and the report read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlib.artifacts import MetricsFile
from cxrlib.classify import predict
from cxrlib.data.chestxray14 import LABELS
from cxrlib.data.datasets import TensorItems
from cxrlib.metrics import fidelity, multilabel_auc
from cxrlib.publish.audit import Release, audit_release, read_release
from cxrlib.publish.batch import BatchSummary, output_names, remove_release, run_batch
from cxrlib.publish.pipeline import PixelMethod, ReleasePipeline
from cxrlib.publish.report import write_report


@dataclasses.dataclass(frozen=True)
class AuditedRelease:
    """A release folder as read, and its audit (:func:`cxrlib.publish.audit.audit_release`'s dict, with the
    name of the retrieval network that searched it under ``"model"``)."""

    release: Release
    result: dict[str, Any]


def audit_folder(folder: str | Path, model: nn.Module, *, size: int, report_dir: str | Path, model_name: str,
                 against: str | Path | None = None, key: bytes | None = None, seed: int = 0) -> AuditedRelease:
    """Read the release in ``folder`` at ``size`` px, audit it with the retrieval network ``model`` (against
    the raw export in ``against``, whose patient ids ``key`` pseudonymizes as the release did), and write
    ``audit.json`` and ``audit.html`` into ``report_dir``."""
    release = read_release(folder, size, progress=False)
    # the raw export is only searched, never reported on: its burned-in text need not be detected
    other = read_release(against, size, detect_text=False, progress=False) if against else None
    result = audit_release(release, model, against=other, key=key if against else None, seed=seed)
    result["model"] = model_name
    write_report(result, release, report_dir)
    return AuditedRelease(release, result)


@dataclasses.dataclass(frozen=True)
class AuditSummary:
    """An audit's headline figures: one column of notebook 05's audit table."""

    images: int
    precision_at_1: float
    map_at_r: float
    #: share of the patients with several images whose images the audit links together
    patients_relinked: float
    pair_roc_auc: float | None
    table_e1_1_attributes: int
    files_with_private_tags: int
    images_with_suspected_text: int
    #: share of released images whose nearest raw image is their own source; None without a raw export
    linked_to_raw_top1: float | None = None
    audited_against_raw: bool = False

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> "AuditSummary":
        """The summary of an audit result (:func:`cxrlib.publish.audit.audit_release`)."""
        against = result.get("against")
        return cls(images=result["images"], precision_at_1=result["retrieval"]["precision_at_1"],
                   map_at_r=result["retrieval"]["map_at_r"], patients_relinked=result["patients_relinked"],
                   pair_roc_auc=result["roc"].get("auc"),
                   table_e1_1_attributes=len(result["headers"]["table_e1_1_present"]),
                   files_with_private_tags=result["headers"]["files_with_private_tags"],
                   images_with_suspected_text=result["burned_in_text"]["images_with_text"],
                   linked_to_raw_top1=None if against is None else against.get("top1"),
                   audited_against_raw="against" in result)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "AuditSummary":
        """The summary of a :meth:`row` (as ``publishing.json`` holds it)."""
        return cls(images=row["images"], precision_at_1=row["P@1"], map_at_r=row["mAP@R"],
                   patients_relinked=row["patients re-linked"], pair_roc_auc=row["pair ROC AUC"],
                   table_e1_1_attributes=row["Table E.1-1 attributes present"],
                   files_with_private_tags=row["files with private tags"],
                   images_with_suspected_text=row["images with suspected text"],
                   linked_to_raw_top1=row.get("linked to the raw export (top-1)"),
                   audited_against_raw="linked to the raw export (top-1)" in row)

    def row(self) -> dict[str, Any]:
        """The figures under the names the table and ``publishing.json`` give them."""
        row = {"images": self.images, "P@1": self.precision_at_1, "mAP@R": self.map_at_r,
               "patients re-linked": self.patients_relinked, "pair ROC AUC": self.pair_roc_auc,
               "Table E.1-1 attributes present": self.table_e1_1_attributes,
               "files with private tags": self.files_with_private_tags,
               "images with suspected text": self.images_with_suspected_text}
        if self.audited_against_raw:
            row["linked to the raw export (top-1)"] = self.linked_to_raw_top1
        return row


@dataclasses.dataclass(frozen=True)
class AnonymizedRelease:
    """A release written by :func:`anonymize_export`: its folder, the batch's counts, and for every raw
    image (in the order asked for) the name of its output file under ``folder``."""

    folder: Path
    batch: BatchSummary
    files: list[str]

    def describe(self) -> str:
        return (f"{self.folder.name}: {self.batch.done} written, {self.batch.skipped} already done, "
                f"{len(self.batch.failed)} failed")


def anonymize_export(raw_dir: str | Path, out_dir: str | Path, key: bytes, method: PixelMethod,
                     raw_names: Sequence[str]) -> AnonymizedRelease:
    """Anonymize the export in ``raw_dir`` into ``out_dir`` as ``cxrlib anonymize`` does (header profile,
    keyed pseudonyms, burned-in text blacked out, ``method`` on the pixels), from scratch; ``files`` gives the
    output of each of ``raw_names`` (paths relative to ``raw_dir``), in their order."""
    out_dir = Path(out_dir)
    pipeline = ReleasePipeline(key, method)
    # a release left from an earlier run would be resumed, and its manifest kept: start anew, as the raw
    # export itself was written anew
    remove_release(out_dir)
    batch = run_batch(raw_dir, out_dir, pipeline, settings=pipeline.settings(), progress=False,
                      recorded_name=pipeline.recorded_name)
    # outputs are named by their new UIDs; the manifest names each input by a keyed hash only
    outputs = output_names(out_dir)
    return AnonymizedRelease(out_dir, batch, [outputs[pipeline.recorded_name(name)] for name in raw_names])


def release_images(release: Release, files: Sequence[str] | None = None) -> torch.Tensor:
    """The release's images as a tensor, the images named ``files`` in their order (every image in the
    release's own order without them): with :attr:`AnonymizedRelease.files`, row by row the same radiograph
    as in the raw export."""
    return release.images.tensor(release.images.rows(files) if files else slice(None))


@dataclasses.dataclass(frozen=True)
class ReleaseUtility:
    """What a release leaves its users: a frozen classifier's mean AUC over the findings (bootstrap 95 %
    CI), and how far the pixels moved from the raw export's (:func:`cxrlib.metrics.fidelity`: mean SSIM,
    PSNR in dB of the whole set, None when no pixel moved)."""

    mean_auc: float
    ci: tuple[float, float]
    ssim: float
    psnr: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ReleaseUtility":
        """The utility of a :meth:`row` (as ``publishing.json`` holds it: the CI to three decimals)."""
        low, high = (float(bound) for bound in row["95 % CI"].split("-"))
        return cls(row["classifier mean AUC"], (low, high), row["SSIM"], row["PSNR dB"])

    def row(self) -> dict[str, Any]:
        """The figures under the names the table and ``publishing.json`` give them."""
        return {"classifier mean AUC": self.mean_auc, "95 % CI": f"{self.ci[0]:.3f}-{self.ci[1]:.3f}",
                "SSIM": self.ssim, "PSNR dB": self.psnr}


def release_utility(classifier: nn.Module, images: torch.Tensor, raw_images: torch.Tensor, labels: np.ndarray, *,
                    bootstrap_samples: int, seed: int) -> ReleaseUtility:
    """:class:`ReleaseUtility` of released ``images`` whose raw versions are ``raw_images`` (the same order)
    and whose findings are ``labels`` (N, 14); the CI takes ``bootstrap_samples`` (at least one)."""
    if bootstrap_samples < 1:
        raise ValueError("a release's utility comes with its bootstrap CI: bootstrap_samples must be at least 1")
    probabilities, truth = predict(classifier, TensorItems(image=images, labels=torch.from_numpy(labels)), progress=False)
    auc = multilabel_auc(truth, probabilities, LABELS, n_bootstrap=bootstrap_samples, seed=seed)
    quality = fidelity(raw_images, images)
    return ReleaseUtility(auc["mean_auc"], auc["ci"], quality["ssim"], quality["psnr"])


@dataclasses.dataclass(frozen=True)
class PublishingResults(MetricsFile):
    """What notebook 05 found: the example release's size, each release's audit summary and utility, and
    the mu of the PriCheXy-Net it released with; ``to_json`` is ``publishing.json`` (without its context)."""

    images: int
    patients: int
    #: audit summaries by release ("raw", "conventional", "prichexy")
    audits: dict[str, AuditSummary]
    #: utility by the release's name in the table ("raw export", "conventional", "PriCheXy-Net")
    utility: dict[str, ReleaseUtility]
    prichexy_mu: float
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"release": {"images": self.images, "patients": self.patients},
                "audits": {name: summary.row() for name, summary in self.audits.items()},
                "utility": {name: utility.row() for name, utility in self.utility.items()},
                "prichexy_mu": self.prichexy_mu, "wall_seconds": self.wall_seconds}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "PublishingResults":
        """From ``publishing.json`` as read (its ``context`` left out)."""
        return cls(images=payload["release"]["images"], patients=payload["release"]["patients"],
                   audits={name: AuditSummary.from_row(row) for name, row in payload["audits"].items()},
                   utility={name: ReleaseUtility.from_row(row) for name, row in payload["utility"].items()},
                   prichexy_mu=payload["prichexy_mu"], wall_seconds=payload["wall_seconds"])
