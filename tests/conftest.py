"""Shared fixtures: a tiny ChestX-ray14-layout folder written from hand-made images."""

from __future__ import annotations

import os

# the machine has 2 cores; tests must not oversubscribe them
os.environ.setdefault("OMP_NUM_THREADS", "1")
# fp32 on every CPU, so that the figures the tests compare do not depend on the CI machine's bf16
# hardware; the bf16 path has its own tests (test_train.py), and test_notebooks.py runs run_all.sh
# without this
os.environ["CXRLIB_CPU_BF16"] = "0"

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.data.chestxray14 import LABELS, findings_string, read_metadata, real_metadata_path, write_metadata


def write_tiny_dataset(folder: Path, n_patients: int = 6, per_patient: int = 3, size: int = 40,
                       seed: int = 0, layout: str = "flat") -> pd.DataFrame:
    """Random grayscale PNGs plus a metadata CSV in the release's exact format."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(1, n_patients + 1):
        for follow_up in range(per_patient):
            name = f"{patient:08d}_{follow_up:03d}.png"
            sub = folder / "images" if layout == "flat" else folder / f"images_{patient % 2 + 1:03d}" / "images"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(sub / name)
            labels = (rng.random(len(LABELS)) < 0.1).astype(np.uint8)
            rows.append({"image": name, "follow_up": follow_up, "patient_id": patient,
                         "age": 40 + follow_up, "sex": "MF"[patient % 2], "view": "PA",
                         "width": size, "height": size, "spacing_x": 0.143, "spacing_y": 0.143,
                         **dict(zip(LABELS, labels))})
    meta = pd.DataFrame(rows)
    meta["finding_labels"] = findings_string(meta[list(LABELS)].to_numpy())
    write_metadata(meta, folder / "Data_Entry_2017_v2020.csv")
    return meta


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "cxr14"
    write_tiny_dataset(folder)
    return folder


@pytest.fixture(scope="session")
def real_meta() -> pd.DataFrame:
    """ChestX-ray14's full metadata (112,120 rows, shipped with torchxrayvision), read once per test
    session; shared, so tests must not modify it (take a copy)."""
    return read_metadata(real_metadata_path())


#: the NIH release's official split lists, gzipped (tests/data/chestxray14/)
OFFICIAL_LISTS = Path(__file__).resolve().parent / "data" / "chestxray14"


@pytest.fixture(scope="session")
def official_lists_dir(tmp_path_factory) -> Path:
    """A folder holding the official train_val_list.txt and test_list.txt, as in the release."""
    import gzip

    folder = tmp_path_factory.mktemp("official_lists")
    for name in ("train_val_list.txt", "test_list.txt"):
        (folder / name).write_bytes(gzip.decompress((OFFICIAL_LISTS / f"{name}.gz").read_bytes()))
    return folder
