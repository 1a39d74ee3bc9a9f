"""ChestX-ray14: metadata, the 14 labels, split lists, and locating and decoding its images.

One loader serves the real release and the phantom, which is written in the same layout:

    DATA_DIR/
      Data_Entry_2017_v2020.csv      (or .csv.gz, or the 2017 name)
      train_val_list.txt, test_list.txt   (optional: official patient-disjoint split)
      images/*.png  or  images_001/images/*.png ... images_012/images/*.png
"""

from __future__ import annotations

import gzip
import re
import struct
import warnings
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"

METADATA_NAMES = (
    "Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}

#: the real header; the bracketed names contain commas, so a CSV reader sees 11 columns
RAW_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)
RAW_HEADER = ",".join(RAW_COLUMNS)
_RENAMES = {
    "Image Index": "image", "Finding Labels": "finding_labels", "Follow-up #": "follow_up",
    "Patient ID": "patient_id", "Patient Age": "age", "Patient Gender": "sex",
    "View Position": "view", "OriginalImage[Width": "width", "Height]": "height",
    "OriginalImagePixelSpacing[x": "spacing_x", "y]": "spacing_y",
}
_IMAGE_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def real_metadata_path() -> Path:
    """The real ``Data_Entry_2017_v2020.csv.gz`` (112,120 rows) shipped inside torchxrayvision."""
    path = resources.files("torchxrayvision") / "data" / "Data_Entry_2017_v2020.csv.gz"
    return Path(str(path))


def find_metadata_file(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder does not exist")
    for name in METADATA_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    if not any(data_dir.iterdir()):
        raise DataError(data_dir, "data folder is empty; expected ChestX-ray14 (see data/README.md)")
    raise DataError(data_dir, f"no metadata file; expected one of {', '.join(METADATA_NAMES)}")


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read and validate the metadata CSV (plain or gzipped) into normalized columns.

    Columns: image, patient_id, follow_up, age, sex, view, finding_labels, width, height,
    spacing_x, spacing_y, then one 0/1 column per label in :data:`LABELS` order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "metadata file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(path, f"cannot be read as CSV ({err})") from err
    # The 2017 release ends every row with a comma: an empty, unnamed trailing column.
    raw = raw.loc[:, [c for c in raw.columns if not c.startswith("Unnamed:")]]
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(raw.columns)}")
    if raw.empty:
        raise DataError(path, "metadata has no rows")
    meta = raw.rename(columns=_RENAMES)[list(_RENAMES.values())].copy()

    bad_names = ~meta["image"].str.match(_IMAGE_NAME)
    if bad_names.any():
        raise DataError(path, f"image names not of the form 00000001_000.png: {_first(meta, bad_names, 'image')}")
    if meta["image"].duplicated().any():
        raise DataError(path, f"duplicate image names: {_first(meta, meta['image'].duplicated(), 'image')}")
    for column, kind in (("follow_up", int), ("patient_id", int), ("age", int), ("width", int),
                         ("height", int), ("spacing_x", float), ("spacing_y", float)):
        numeric = pd.to_numeric(meta[column], errors="coerce")
        if numeric.isna().any():
            bad = meta.loc[numeric.isna(), ["image", column]].iloc[0].tolist()
            raise DataError(path, f"column {column!r} must be numeric; {bad[0]} has {bad[1]!r}")
        meta[column] = numeric.astype(kind)
    name_patient = meta["image"].str.slice(0, 8).astype(int)
    if (name_patient != meta["patient_id"]).any():
        raise DataError(path, f"patient id disagrees with image name: {_first(meta, name_patient != meta['patient_id'], 'image')}")
    bad_sex = ~meta["sex"].isin(["M", "F"])
    if bad_sex.any():
        raise DataError(path, f"sex must be M or F: {_first(meta, bad_sex, 'image')}")
    bad_view = ~meta["view"].isin(["PA", "AP"])
    if bad_view.any():
        raise DataError(path, f"view position must be PA or AP: {_first(meta, bad_view, 'image')}")

    meta[list(LABELS)] = _label_matrix(meta["finding_labels"], path, meta["image"])
    return meta.reset_index(drop=True)


def _first(meta: pd.DataFrame, mask: pd.Series, column: str) -> str:
    values = meta.loc[mask, column].head(3).tolist()
    return ", ".join(map(str, values)) + (" ..." if mask.sum() > 3 else "")


def _label_matrix(findings: pd.Series, path: Path, images: pd.Series) -> np.ndarray:
    index = {label: i for i, label in enumerate(LABELS)}
    matrix = np.zeros((len(findings), len(LABELS)), dtype=np.uint8)
    for row, (text, image) in enumerate(zip(findings, images)):
        parts = text.split("|")
        if parts == [NO_FINDING]:
            continue
        for part in parts:
            if part not in index:
                problem = f"unknown label {part!r} for {image}" if part != NO_FINDING else (
                    f"'No Finding' combined with findings for {image}")
                raise DataError(path, problem + f"; known: {', '.join(LABELS)}, or {NO_FINDING}")
            matrix[row, index[part]] = 1
    return matrix


def label_matrix(meta: pd.DataFrame) -> np.ndarray:
    """The (N, 14) 0/1 label matrix in :data:`LABELS` order."""
    return meta[list(LABELS)].to_numpy(dtype=np.float32)


def findings_string(labels: np.ndarray) -> list[str]:
    """Inverse of the label matrix: 'Finding Labels' strings."""
    out = []
    for row in np.asarray(labels):
        names = [LABELS[i] for i in np.flatnonzero(row)]
        out.append("|".join(names) if names else NO_FINDING)
    return out


def write_metadata(meta: pd.DataFrame, path: str | Path) -> None:
    """Write normalized metadata back in the release's CSV format (its exact header)."""
    rows = meta.rename(columns={v: k for k, v in _RENAMES.items()})[list(RAW_COLUMNS)]
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    rows.to_csv(tmp, index=False, header=False, float_format="%.6g")
    tmp.write_text(RAW_HEADER + "\n" + tmp.read_text())
    tmp.replace(path)


def read_text(path: str | Path) -> str:
    """A text file, plain or gzipped (by its ``.gz`` suffix), with a clear error when unreadable."""
    path = Path(path)
    try:
        return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot be read as text ({err})") from err


def read_split_list(path: str | Path, meta: pd.DataFrame) -> list[str]:
    """Image names of an official split list (plain or gzipped), in file order, checked against the
    metadata."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split list not found")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise DataError(path, "split list is empty")
    unknown = sorted(set(names) - set(meta["image"]))
    if unknown:
        raise DataError(path, f"{len(unknown)} image(s) not in the metadata, e.g. {unknown[:3]}")
    return names


def read_official_lists(data_dir: str | Path, meta: pd.DataFrame) -> tuple[list[str], list[str]] | None:
    """The image names of ``data_dir``'s official ``train_val_list.txt`` and ``test_list.txt``, when
    both are there (else None), each checked by :func:`read_split_list`, and together for a patient
    listed in both (the official split is patient-disjoint: a shared patient would leak into the test)."""
    paths = [Path(data_dir) / SPLIT_FILES[split] for split in ("train_val", "test")]
    if not all(path.is_file() for path in paths):
        return None
    train_val, test = (read_split_list(path, meta) for path in paths)
    patient = meta.set_index("image")["patient_id"]
    shared = sorted(set(patient[train_val]) & set(patient[test]))
    if shared:
        raise DataError(paths[1], f"{len(shared)} patient(s) also listed in {paths[0]}, e.g. patient id(s) "
                                  f"{', '.join(map(str, shared[:3]))}: train/val and test must not share patients")
    return train_val, test


@dataclass(frozen=True)
class Splits:
    """Patient-disjoint train / val / test metadata frames."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    #: "official" when test came from test_list.txt, else "seeded"
    source: str

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in ("train", "val", "test"):
            raise KeyError(name)
        return getattr(self, name)

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def split_patients(patients: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically hold out ``fraction`` of the unique patients: (kept, held_out)."""
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique)
    n_held = int(round(fraction * len(unique)))
    if len(unique) >= 2:
        n_held = min(max(n_held, 1), len(unique) - 1)
    return np.sort(shuffled[n_held:]), np.sort(shuffled[:n_held])


def make_splits(meta: pd.DataFrame, data_dir: str | Path | None, *, seed: int,
                val_fraction: float = 0.125, test_fraction: float = 0.228,
                official_train_count: int | None = None) -> Splits:
    """Official test split when ``test_list.txt`` is present, else a seeded patient-wise one.

    Validation: with the official lists and ``official_train_count``, the official code's rule: the
    first ``official_train_count`` entries of ``train_val_list.txt`` train and the rest validate
    (patient-wise, because the list is sorted by patient; a patient cut in two is an error). Otherwise
    a seeded patient-wise ``val_fraction`` of the train/val patients.
    """
    official_lists = read_official_lists(data_dir, meta) if data_dir is not None else None
    official = official_lists is not None
    if official:
        train_val_names, test_names = official_lists
        train_val = meta[meta["image"].isin(train_val_names)]
        test = meta[meta["image"].isin(test_names)]
    else:
        keep, held = split_patients(meta["patient_id"].to_numpy(), test_fraction, seed)
        train_val = meta[meta["patient_id"].isin(keep)]
        test = meta[meta["patient_id"].isin(held)]
    if official and official_train_count is not None:
        train, val = _official_validation(train_val, train_val_names, official_train_count,
                                          Path(data_dir) / SPLIT_FILES["train_val"])
    else:
        keep, held = split_patients(train_val["patient_id"].to_numpy(), val_fraction, seed + 1)
        train = train_val[train_val["patient_id"].isin(keep)]
        val = train_val[train_val["patient_id"].isin(held)]
    return Splits(train=train.reset_index(drop=True), val=val.reset_index(drop=True),
                  test=test.reset_index(drop=True), source="official" if official else "seeded")


def _official_validation(train_val: pd.DataFrame, names: list[str], train_count: int,
                         path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not 0 < train_count < len(names):
        raise DataError(path, f"cannot train on its first {train_count} entries: it lists {len(names)} images")
    first, rest = set(names[:train_count]), set(names[train_count:])
    train, val = train_val[train_val["image"].isin(first)], train_val[train_val["image"].isin(rest)]
    cut = set(train["patient_id"]) & set(val["patient_id"])
    if cut:
        raise DataError(path, f"entry {train_count} does not end at a patient boundary: patient(s) "
                              f"{sorted(cut)[:3]} fall on both sides, so validation would not be patient-wise")
    return train, val


class ImageLocator:
    """Finds image files in the flat (``images/``) or the release layout (``images_00X/images/``)."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)

    @cached_property
    def _paths(self) -> dict[str, Path]:
        folders = [self.data_dir / "images", *sorted(self.data_dir.glob("images_*/images"))]
        found: dict[str, Path] = {}
        for folder in folders:
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.suffix == ".png":
                        found.setdefault(path.name, path)
        return found

    def __call__(self, image: str) -> Path:
        try:
            return self._paths[image]
        except KeyError:
            raise DataError(self.data_dir / "images" / image,
                            "image listed in the metadata but missing on disk") from None

    def check(self, images: list[str]) -> None:
        missing = [name for name in images if name not in self._paths]
        if missing:
            raise DataError(self.data_dir / "images",
                            f"{len(missing)} image(s) listed in the metadata are missing on disk, "
                            f"e.g. {missing[:3]}")


#: the release ships its images in twelve archives, each unpacking to ``images_00X/images/``
RELEASE_FOLDERS = 12


def to_release_layout(data_dir: str | Path) -> Path:
    """Move a flat ``images/`` folder into the release's ``images_001/images/ ... images_012/images/``.

    Images are spread in name order (so by patient) over the twelve folders, as the release's
    archives are; ``images/`` is removed. Used to lay out a phantom exactly like a downloaded release.
    """
    data_dir = Path(data_dir)
    flat = data_dir / "images"
    names = sorted(p.name for p in flat.glob("*.png")) if flat.is_dir() else []
    if not names:
        raise DataError(flat, "no images to lay out: expected a flat images/ folder of PNGs")
    for number, chunk in enumerate(np.array_split(np.asarray(names), RELEASE_FOLDERS), start=1):
        folder = data_dir / f"images_{number:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for name in chunk:
            (flat / name).rename(folder / name)
    flat.rmdir()
    return data_dir


#: the gray depths a 16-bit PNG without a usable sBIT chunk is taken to have: detectors export 10,
#: 12, 14 or 16 bits (8: an 8-bit image stored in a 16-bit file)
GRAY_DEPTHS = (8, 10, 12, 14, 16)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class GrayPixels:
    """A radiograph's grayscale values: ``values`` is uint8 (8-bit files, and colour ones as
    luminance), or uint16 as a 16-bit file stores them, of which ``bits`` are significant (its
    brightest possible value is ``2**bits - 1``)."""

    values: np.ndarray
    bits: int

    def to_uint8(self) -> np.ndarray:
        """The values scaled from ``bits`` to 8 bits, rounded to nearest."""
        if self.values.dtype == np.uint8:
            return self.values
        peak = 2 ** self.bits - 1
        # integers: the same result as round(v / peak * 255) without a float64 copy of a large image
        return ((self.values.astype(np.uint32) * 255 + peak // 2) // peak).astype(np.uint8)


def read_gray(path: str | Path) -> GrayPixels:
    """Decode one radiograph to its grayscale values: the one PNG reader of the library.

    8-bit grayscale is kept; 16-bit is kept as uint16 with its significant bits (see
    :func:`significant_bits`); palette and RGB(A) images are converted to 8-bit luminance (alpha is
    dropped, never a single channel taken). Images of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
    (Pillow's decompression-bomb limit, 89.5 million by default: a 9,459 px square, 4.8 times a
    4,300 x 4,300 detector) are refused before decoding; raise that limit for trusted larger files.
    Anything unreadable raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            width, height, declared_bits = _png_header(file)
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise DataError(path, f"image too large to decode safely: {width} x {height} = "
                                      f"{width * height:,} pixels, more than the limit of {limit:,} "
                                      "(PIL.Image.MAX_IMAGE_PIXELS; raise it if the file is trusted)")
            file.seek(0)
            with warnings.catch_warnings():
                # Pillow only warns between its limit and twice that: a file that is not a PNG
                # (whose size the header walk cannot see) is refused at the same limit
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as img:
                    img.load()
                    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                        values = np.asarray(img)  # uint16 of either byte order, or int32 for "I"
                        if values.dtype.kind == "i":
                            values = values.clip(0, 65535)
                        values = values.astype(np.uint16)
                        return GrayPixels(values, significant_bits(values, declared_bits))
                    return GrayPixels(np.asarray(_to_gray8(img), dtype=np.uint8), 8)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(path, f"image too large to decode safely ({err}); raise PIL.Image.MAX_IMAGE_PIXELS "
                              "if the file is trusted") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"not a readable image ({err})") from err


def significant_bits(values: np.ndarray, declared: int | None = None) -> int:
    """How many of a 16-bit image's bits carry its values.

    The PNG's sBIT chunk (``declared``) when it holds the largest value; else the smallest of
    :data:`GRAY_DEPTHS` that does. So a 12-bit detector image stored in 16 bits (0..4095) keeps its
    contrast, and a file whose sBIT says 12 but whose samples were scaled up to 16 bits, as the PNG
    standard has it, is read as 16 bits.
    """
    needed = int(values.max(initial=0)).bit_length()
    if declared is not None and max(needed, 1) <= declared <= 16:
        return declared
    return next(bits for bits in GRAY_DEPTHS if needed <= bits)


def _png_header(file) -> tuple[int, int, int | None]:
    """Width, height and the sBIT chunk's gray bits (None without one) of a PNG, read from the chunks
    before its pixel data; (0, 0, None) for what is not a PNG, or where the header is cut short
    (Pillow then reads or refuses it)."""
    if file.read(8) != _PNG_SIGNATURE:
        return 0, 0, None
    width = height = 0
    gray, sbit = False, None
    while len(head := file.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            break
        if kind in (b"IHDR", b"sBIT"):
            data = file.read(min(length, 13))
            file.seek(length - len(data), 1)
            if kind == b"IHDR" and len(data) >= 10:
                width, height, _, colour_type = struct.unpack(">IIBB", data[:10])
                gray = colour_type == 0
            elif kind == b"sBIT" and gray and data:
                sbit = data[0]
        else:
            file.seek(length, 1)
        file.seek(4, 1)  # the chunk's CRC
    return width, height, sbit


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode one radiograph as a 2-D uint8 array, whatever its PNG mode; resized to ``size``.

    :func:`read_gray`'s values scaled to 8 bits from their significant bits, so a 12-bit image in a
    16-bit file spans 0..255 as a 16-bit one does; all real quirks of the release give one format.
    """
    gray = Image.fromarray(read_gray(path).to_uint8())
    if size is not None and gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def _to_gray8(img: Image.Image) -> Image.Image:
    if img.mode == "L":
        return img
    if img.mode in ("P", "PA"):
        # through RGBA so a palette with transparency resolves to its colours before luminance
        img = img.convert("RGBA")
    return img.convert("L")


#: the real sample's folder inside the checkout (see its README for provenance and terms)
SAMPLE_DIR = Path("data") / "chestxray14-sample"


def real_sample_dir(root: str | Path | None = None) -> Path:
    """The real ChestX-ray14 sample in the checkout ``root`` (default: the checkout this cxrlib runs
    from), whatever data a run works on."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    folder = root / SAMPLE_DIR
    if not folder.is_dir():
        raise DataError(folder, "the real ChestX-ray14 sample is missing; it ships with the repository")
    return folder
