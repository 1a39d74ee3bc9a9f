"""Writing a phantom: metadata resampled from the real release, every image's random draws, the
images, metadata, split lists and ground truth in the ChestX-ray14 layout; and finding examples."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cxrlib.data.chestxray14 import (
    LABELS, SPLIT_FILES, DataError, findings_string, read_metadata, real_metadata_path, split_patients,
    write_metadata,
)
from cxrlib.data.phantom.acquisition import draw_findings, draw_scan, draw_usual_acquisition
from cxrlib.data.phantom.anatomy import Anatomy, Patient, cardiothoracic_ratio, draw_patient
from cxrlib.data.phantom.canvas import Textures
from cxrlib.data.phantom.common import _ANATOMY, _EXAMPLE, _FINDINGS, _HABIT, _META, _SCAN, FIELD_OF_VIEW_MM, _rng
from cxrlib.data.phantom.rendering import render

PHANTOM_TRUTH = "phantom_truth.csv"
METADATA_FILE = "Data_Entry_2017_v2020.csv"
MAX_SIZE = 1024
#: share of patients in test_list.txt: the release's share of images there (25,596 of 112,120)
TEST_FRACTION = 25_596 / 112_120
#: zlib level of the PNGs: fixed for byte-identical output, low because encoding dominates otherwise
PNG_COMPRESS_LEVEL = 1


# --------------------------------------------------------------------------------------------------
# Metadata resampled from the real release
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _real_scans() -> pd.DataFrame:
    """The real metadata sorted into per-patient scan sequences, each scan ranked within its patient."""
    meta = read_metadata(real_metadata_path())
    meta = meta.sort_values(["patient_id", "follow_up"], kind="stable").reset_index(drop=True)
    meta["rank"] = meta.groupby("patient_id").cumcount()
    return meta[["patient_id", "rank", "age", "sex", "view", *LABELS]]


def sample_metadata(n_patients: int, max_followups: int, size: int, seed: int) -> pd.DataFrame:
    """Metadata of a phantom: real patients drawn at random (seeded), each with its first
    ``max_followups`` scans (ages, view positions and findings as recorded), renumbered 1..N.
    Columns as :func:`cxrlib.data.chestxray14.read_metadata` returns them."""
    real = _real_scans()
    real = real[real["rank"] < max_followups]
    ids = real["patient_id"].to_numpy()
    unique = np.unique(ids)
    rng = _rng(seed, _META)
    chosen = unique[rng.choice(len(unique), size=n_patients, replace=n_patients > len(unique))]
    start, end = np.searchsorted(ids, chosen, "left"), np.searchsorted(ids, chosen, "right")
    rows = np.concatenate([np.arange(s, e) for s, e in zip(start, end)])
    scans = real.iloc[rows].reset_index(drop=True)
    patient_id = np.repeat(np.arange(1, n_patients + 1), end - start)
    # one sex per patient (a few real patients change it between scans)
    sex = np.repeat(real["sex"].to_numpy()[start], end - start)
    labels = scans[list(LABELS)].to_numpy(dtype=np.uint8)
    spacing = FIELD_OF_VIEW_MM / size
    meta = pd.DataFrame({
        "image": [f"{p:08d}_{f:03d}.png" for p, f in zip(patient_id, scans["rank"])],
        "finding_labels": findings_string(labels),
        "follow_up": scans["rank"].to_numpy(),
        "patient_id": patient_id,
        "age": scans["age"].to_numpy(),
        "sex": sex,
        "view": scans["view"].to_numpy(),
        "width": size, "height": size, "spacing_x": spacing, "spacing_y": spacing,
    })
    meta[list(LABELS)] = labels
    return meta


# --------------------------------------------------------------------------------------------------
# Writing a phantom
# --------------------------------------------------------------------------------------------------

def draw_scans(meta: pd.DataFrame, seed: int) -> Iterator[tuple[int, Patient, dict, dict, dict]]:
    """Everything random about each image of ``meta`` (rows grouped by patient, in order):
    ``(row, patient, anatomy at that age, scan, findings)``, ready for :func:`render`."""
    labels = meta[list(LABELS)].to_numpy()
    for patient_id, rows in meta.groupby("patient_id", sort=True).indices.items():
        first = meta.iloc[rows[0]]
        patient = draw_patient(_rng(seed, _ANATOMY, patient_id), first["sex"], float(first["age"]))
        usual = draw_usual_acquisition(_rng(seed, _HABIT, patient_id))
        for row in rows:
            follow_up = int(meta.at[row, "follow_up"])
            yield (int(row), patient, patient.anatomy_at(float(meta.at[row, "age"])),
                   draw_scan(_rng(seed, _SCAN, patient_id, follow_up), meta.at[row, "view"], usual),
                   draw_findings(_rng(seed, _FINDINGS, patient_id, follow_up), labels[row]))


def _check_arguments(out_dir: Path, n_patients: int, size: int, max_followups: int, overwrite: bool) -> None:
    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not whole(n_patients) or n_patients < 1:
        raise ValueError(f"n_patients must be a whole number >= 1, got {n_patients!r}")
    if not whole(size) or size < 8 or size % 8 or size > MAX_SIZE:
        raise ValueError(f"size must be a positive multiple of 8 and at most {MAX_SIZE} pixels, got {size!r}")
    if not whole(max_followups) or max_followups < 1:
        raise ValueError(f"max_followups must be a whole number >= 1, got {max_followups!r}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: output path exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise ValueError(f"{out_dir}: output folder exists and is not empty; pass overwrite=True "
                                 "(--overwrite) to replace it")
            if not (out_dir / PHANTOM_TRUTH).is_file():
                raise ValueError(f"{out_dir}: refusing to overwrite a folder that is not a phantom "
                                 f"(no {PHANTOM_TRUTH} in it)")


def _write_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _truth_row(name: str, patient: Patient, anatomy: dict[str, float], seen: Anatomy, scan: dict, findings: dict,
               boxes: list[list[int]]) -> dict:
    row = {"image": name, "text_boxes": json.dumps(boxes), "marker": scan["marker"], "vendor": scan["vendor"],
           "cardiothoracic_ratio": cardiothoracic_ratio(seen)}
    row.update({f"scan_{k}": v for k, v in scan.items() if not isinstance(v, (list, str))})
    row.update({f"severity_{label}": findings[label]["severity"] if label in findings else 0.0
                for label in LABELS})
    row.update({f"anat_{k}": anatomy[k] for k in patient.base})
    row.update({f"mark_{k}": patient.marks.get(k, np.nan) for k in _MARK_COLUMNS})
    return row


_MARK_COLUMNS = ("granuloma_side", "granuloma_a", "granuloma_v", "granuloma_r", "rib_fracture_side",
                 "rib_fracture_rib", "rib_fracture_a", "sternotomy_wires", "sternotomy_top", "port_side",
                 "port_a", "port_v", "pacemaker_a", "pacemaker_v", "pacemaker_leads")


def generate_phantom(out_dir: str | Path, *, n_patients: int, size: int, seed: int, max_followups: int = 8,
                     overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write a phantom in the ChestX-ray14 layout to ``out_dir`` and return the folder.

    The folder is built beside ``out_dir`` in a uniquely named ``<name>.partial-*`` folder and
    renamed when complete, so an interrupted run never leaves a folder that looks complete (and two
    processes generating the same phantom do not collide). The same arguments give byte-identical
    files.
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, n_patients, size, max_followups, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.partial-", dir=out_dir.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the finished phantom is an ordinary folder
    try:
        (partial / "images").mkdir()
        meta = sample_metadata(n_patients, max_followups, size, seed)
        textures = Textures(size, seed)
        truth = []
        scans = tqdm(draw_scans(meta, seed), total=len(meta), desc="phantom", unit="img",
                     disable=None if progress is None else not progress)
        for row, patient, anatomy, scan, findings in scans:
            name = meta.at[row, "image"]
            image, boxes, seen = render(anatomy, scan, findings, size, textures)
            _write_png(image, partial / "images" / name)
            truth.append(_truth_row(name, patient, anatomy, seen, scan, findings, boxes))
        keep, held = split_patients(meta["patient_id"].to_numpy(), TEST_FRACTION, seed)
        for split, patients in (("train_val", keep), ("test", held)):
            names = meta.loc[meta["patient_id"].isin(patients), "image"]
            (partial / SPLIT_FILES[split]).write_text("".join(f"{n}\n" for n in names))
        pd.DataFrame(truth).to_csv(partial / PHANTOM_TRUTH, index=False, float_format="%.6g")
        write_metadata(meta, partial / METADATA_FILE)  # last: the file the loader looks for
        _move_into_place(partial, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def _move_into_place(partial: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        partial.rename(out_dir)
        return
    if not overwrite:
        raise ValueError(f"{out_dir}: output folder appeared while generating; not replaced")
    retired = partial.with_name(partial.name.replace(".partial-", ".replaced-"))
    out_dir.rename(retired)
    partial.rename(out_dir)
    shutil.rmtree(retired)


def read_truth(data_dir: str | Path) -> pd.DataFrame | None:
    """The phantom's ground truth (one row per image; ``text_boxes`` parsed into lists of
    [x0, y0, x1, y1]), or None for a folder without it (the real data)."""
    path = Path(data_dir) / PHANTOM_TRUTH
    if not path.is_file():
        return None
    try:
        truth = pd.read_csv(path, keep_default_na=True)
        truth["text_boxes"] = truth["text_boxes"].map(json.loads)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
        raise DataError(path, f"unreadable phantom ground truth ({err})") from err
    truth["marker"] = truth["marker"].fillna("")
    return truth


def finding_examples(size: int, seed: int, severity: float = 0.85) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One patient's PA scan without findings, and the same scan (same pose, exposure, noise) with
    each of the 14 findings alone, for teaching. No text, markers or distinctive marks."""
    patient = draw_patient(_rng(seed, _EXAMPLE, 0), "M", 55.0, marks=False)
    anatomy = patient.anatomy_at(55.0)
    scan = draw_scan(_rng(seed, _EXAMPLE, 1), "PA")
    scan.update(text=[], marker="", rotation_deg=0.0, shift_x=0.0, shift_y=0.0, ecg_leads=0)
    scan.update({f"collimation_{side}": 0.0 for side in ("left", "right", "top", "bottom")})
    textures = Textures(size, seed)
    plain, _, _ = render(anatomy, scan, {}, size, textures)
    examples = {}
    for i, label in enumerate(LABELS):
        findings = draw_findings(_rng(seed, _EXAMPLE, 2, i), np.asarray([lab == label for lab in LABELS]))
        findings[label]["severity"] = severity
        examples[label], _, _ = render(anatomy, scan, findings, size, textures)
    return plain, examples
