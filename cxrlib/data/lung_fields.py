"""The phantom's lung fields against real ones: the 517 lung masks that ship with torchxrayvision
(``semantic_masks_v7labs_lungs.zip``, binary masks of radiographs from several sources and sizes).

Per mask: the lung area's share of the image, each lung's bounding-box width and height (shares of the
image's width and height), the right/left area ratio and each lung's centroid (shares of the image).
"Right" is the patient's right, the image's left. A mask counts when it has two lungs: its two largest
connected parts, each at least :data:`MIN_LUNG_SHARE` of the mask.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cxrlib.data.chestxray14 import DataError
from cxrlib.data.phantom import Textures, draw_scans, lung_field_mask

#: the statistics of one mask, in the order of :func:`lung_field_statistics`
LUNG_FIELD_STATISTICS = ("area_share", "right_width", "right_height", "left_width", "left_height",
                         "right_left_area_ratio", "right_centroid_x", "right_centroid_y",
                         "left_centroid_x", "left_centroid_y")
#: a connected part smaller than this share of the mask is a speck, not a lung
MIN_LUNG_SHARE = 0.1
#: masks are read at most this many pixels across (the statistics are shares, so resolution matters little)
READ_SIZE = 512


def real_lung_masks_path() -> Path:
    """The zip of real lung masks shipped inside torchxrayvision."""
    return Path(str(resources.files("torchxrayvision") / "data" / "semantic_masks_v7labs_lungs.zip"))


def lung_field_statistics(mask: np.ndarray) -> dict[str, float] | None:
    """The statistics of one binary mask (rows = image y), or None when it does not show two lungs."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a lung mask must be 2-D, got shape {mask.shape}")
    parts, count = ndimage.label(mask)
    if count < 2:
        return None
    areas = np.bincount(parts.ravel())[1:]
    largest = np.argsort(areas)[::-1][:2] + 1
    if areas[largest[1] - 1] < MIN_LUNG_SHARE * mask.sum():
        return None
    h, w = mask.shape
    lungs = []
    for label in largest:
        ys, xs = np.nonzero(parts == label)
        lungs.append({"area": xs.size, "width": (xs.max() - xs.min() + 1) / w, "height": (ys.max() - ys.min() + 1) / h,
                      "centroid_x": (xs.mean() + 0.5) / w, "centroid_y": (ys.mean() + 0.5) / h})
    right, left = sorted(lungs, key=lambda lung: lung["centroid_x"])  # the patient's right is the image's left
    stats = {"area_share": float(mask.sum()) / (h * w), "right_left_area_ratio": right["area"] / left["area"]}
    for side, lung in (("right", right), ("left", left)):
        stats.update({f"{side}_{k}": float(lung[k]) for k in ("width", "height", "centroid_x", "centroid_y")})
    return {k: float(stats[k]) for k in LUNG_FIELD_STATISTICS}


def real_lung_field_statistics(path: str | Path | None = None) -> tuple[pd.DataFrame, int]:
    """Statistics of every real mask with two lungs (one row per mask, indexed by file name) and the
    number of masks in the zip."""
    path = Path(path) if path is not None else real_lung_masks_path()
    rows, names = [], []
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            for member in members:
                with Image.open(io.BytesIO(archive.read(member))) as image:
                    image.draft("L", (READ_SIZE, READ_SIZE))  # JPEGs decode at a reduced scale
                    image = image.convert("L")
                    image.thumbnail((READ_SIZE, READ_SIZE), Image.Resampling.BOX)
                    stats = lung_field_statistics(np.asarray(image) > 127)
                if stats is not None:
                    rows.append(stats)
                    names.append(Path(member).name)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(path, f"unreadable lung-mask archive ({err})") from err
    if not members:
        raise DataError(path, "no lung masks in the archive")
    return pd.DataFrame(rows, index=pd.Index(names, name="mask"), columns=list(LUNG_FIELD_STATISTICS)), len(members)


def phantom_lung_field_statistics(meta: pd.DataFrame, seed: int, size: int, n_images: int) -> pd.DataFrame:
    """Statistics of the lung fields of the first ``n_images`` scans of a phantom with metadata ``meta``
    and ``seed`` (the scans as :func:`cxrlib.data.phantom.generate_phantom` drew them), rendered at
    ``size`` px; one row per image."""
    textures = Textures(size, seed)
    rows, names = [], []
    for row, _, anatomy, scan, findings in itertools.islice(draw_scans(meta, seed), n_images):
        stats = lung_field_statistics(lung_field_mask(anatomy, scan, findings, size, textures))
        if stats is not None:
            rows.append(stats)
            names.append(meta.at[row, "image"])
    return pd.DataFrame(rows, index=pd.Index(names, name="image"), columns=list(LUNG_FIELD_STATISTICS))


def compare_lung_fields(real: pd.DataFrame, phantom: pd.DataFrame, coverage: float = 0.95) -> pd.DataFrame:
    """Per statistic: the real masks' central ``coverage`` range and median, the phantom's median, and
    the share of phantom images outside the real range (below / above)."""
    tail = (1.0 - coverage) / 2.0
    rows = {}
    for name in LUNG_FIELD_STATISTICS:
        low, median, high = real[name].quantile([tail, 0.5, 1.0 - tail])
        values = phantom[name]
        rows[name] = {"real_low": low, "real_median": median, "real_high": high,
                      "phantom_median": values.median(), "phantom_below": float((values < low).mean()),
                      "phantom_above": float((values > high).mean())}
    return pd.DataFrame(rows).T


def outside_real_range(comparison: pd.DataFrame, tolerance: float = 0.1) -> dict[str, str]:
    """Statistics where more than ``tolerance`` of the phantom images lie outside the real range,
    each with a short description (share below / above, medians)."""
    found = {}
    for name, row in comparison.iterrows():
        if row["phantom_below"] + row["phantom_above"] > tolerance:
            found[name] = (f"{row['phantom_below']:.0%} below and {row['phantom_above']:.0%} above the real "
                           f"{row['real_low']:.3g}-{row['real_high']:.3g} (medians: phantom "
                           f"{row['phantom_median']:.3g}, real {row['real_median']:.3g})")
    return found
