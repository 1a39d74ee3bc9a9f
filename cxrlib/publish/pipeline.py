"""One file of a release through the publisher's pipeline: header, burned-in text, pixels.

:class:`ReleasePipeline` is the per-file work of :func:`cxrlib.publish.batch.run_batch`. The pixel
step calls the project's one anonymizer interface (``anonymizer(images) -> images`` on float
(B, 1, H, W) in [0, 1]): a trained PriCheXy-Net or Privacy-Net loaded from its safetensors + JSON
sidecar, or DP-Pix built from its parameters, applied at the resolution the method works at and
resized back to the input's size; the result keeps the input's bit depth and photometric
interpretation (see :mod:`cxrlib.publish.dicom`).
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrlib.anonymize.base import Anonymizer, load_anonymizer
from cxrlib.artifacts import read_sidecar
from cxrlib.data.chestxray14 import METADATA_NAMES, SPLIT_FILES, DataError, read_metadata, write_metadata
from cxrlib.publish import burned_in, dicom
from cxrlib.publish.batch import FileResult, output_names
from cxrlib.publish.deidentify import (CXR14_NAME, CXR14_PATIENT_ID, HeaderOptions, Pseudonymizer,
                                       deidentify_dataset, patient_id_in_name)

#: the folder of OUT every PNG is written to (unless ``--keep-names``): the ChestX-ray14 layout's, and not
#: the release's images_001 ... images_012, whose split by the original names would hint at the original ids
IMAGES_FOLDER = "images"

#: the metadata CSV's quasi-identifiers, blanked unless ``--keep-patient-characteristics`` (as the DICOM
#: header's sex and age): with the labels and follow-up number they can single out a row of the original CSV
CSV_PATIENT_CHARACTERISTICS = ("age", "sex", "width", "height", "spacing_x", "spacing_y")

#: the command line's method names and the registered anonymizer each one loads
METHODS = {"none": None, "prichexy": "flow_field", "dp-pix": "dp_pix", "privacy-net": "privacy_net"}


def trained_anonymizers(artifacts_dir: str | Path, registered: str) -> list[Path]:
    """Every saved anonymizer of kind ``registered`` under ``artifacts_dir``, of whatever data, profile or
    mu, the newest first; never one trained against adversaries that were not updated (notebook 02's
    diagnostic), which no release should be made with."""
    found = []
    for sidecar in Path(artifacts_dir).rglob("*.json"):
        weights = sidecar.with_suffix(".safetensors")
        if not weights.is_file():
            continue
        try:
            payload = read_sidecar(sidecar)
        except ValueError:
            continue
        config, training = payload.get("config", {}), payload.get("training", {})
        diagnostic = isinstance(training, dict) and training.get("update_adversaries") is False
        if isinstance(config, dict) and config.get("anonymizer") == registered and not diagnostic:
            found.append(weights)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_trained(artifacts_dir: str | Path, registered: str) -> Path:
    """The newest of :func:`trained_anonymizers` (the command line names it, and how many others there are)."""
    found = trained_anonymizers(artifacts_dir, registered)
    if not found:
        raise DataError(artifacts_dir, f"no trained {registered} anonymizer here; run notebooks 02/03 "
                                       "or pass --model PATH.safetensors")
    return found[0]


@dataclass
class PixelMethod:
    """An anonymizer and the square size it works at (None: the input's own size)."""

    name: str
    anonymizer: Anonymizer | None = None
    size: int | None = None
    source: str = ""

    def describe(self) -> str:
        return "none" if self.anonymizer is None else f"{self.anonymizer.describe()} at {self.size or 'input'} px"


def pixel_method(method: str, *, model: str | Path | None = None, artifacts_dir: str | Path = "artifacts",
                 size: int | None = None, dp_b: int = 8, dp_eps: float = 0.1, dp_m: float = 1.0,
                 seed: int = 0) -> PixelMethod:
    """Build the pixel step named on the command line (see :data:`METHODS`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    registered = METHODS[method]
    if registered is None:
        return PixelMethod(method)
    if registered == "dp_pix":
        from cxrlib.anonymize.dp_pix import DPPix

        return PixelMethod(method, DPPix(dp_b, dp_eps, dp_m, seed), size, "parameters")
    path = Path(model) if model else find_trained(artifacts_dir, registered)
    anonymizer = load_anonymizer(path)
    if anonymizer.name != registered:
        raise DataError(path, f"holds a {anonymizer.name} anonymizer, not {registered} ({method})")
    trained = anonymizer.params().get("image_size") or read_sidecar(path).get("image_size")
    if trained is None and size is None:
        raise DataError(path, "does not record the image size it was trained at; pass --size")
    return PixelMethod(method, anonymizer, int(size or trained), str(path))


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


@dataclass
class ReleasePipeline:
    """The per-file work: de-identify the header, black out detected text, anonymize the pixels."""

    key: bytes
    method: PixelMethod
    detect_text: bool = True
    header: HeaderOptions = field(default_factory=HeaderOptions)
    #: output names that carry nothing of the input's: DICOM files as STUDY/SERIES/SOP.dcm of their new
    #: UIDs, PNGs in images/ under their pseudonymous release name or, for other names, a keyed hash of
    #: their path (ChestX-ray14 names get pseudonymous patient numbers either way); False keeps the input's
    #: relative paths, which may hold names, ids or dates
    rename: bool = True

    def __post_init__(self):
        self.pseudonymizer = Pseudonymizer(self.key)

    def settings(self) -> dict:
        """What decides the output: stored in the manifest, so a resume never mixes settings."""
        return {"method": self.method.describe(), "model": self.method.source, "detect_text": self.detect_text,
                "keep_patient_characteristics": self.header.keep_patient_characteristics,
                "keep_private_creators": list(self.header.keep_private_creators), "rename": self.rename,
                "key_check": self.pseudonymizer.patient("cxrlib-key-check")}

    @torch.no_grad()
    def pixels(self, image: np.ndarray, file_hash: str) -> tuple[np.ndarray, int]:
        """Text blacked out (when detection runs), then the method; returns the image and text boxes found."""
        boxes = burned_in.detect_text(image) if self.detect_text else []
        if boxes:
            image = burned_in.black_out(image, boxes)
        anonymizer = self.method.anonymizer
        if anonymizer is None:
            return image, len(boxes)
        if hasattr(anonymizer, "reset"):
            anonymizer.reset(zlib.crc32(file_hash.encode()))  # per-file noise: a resumed run repeats it
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        size = self.method.size
        small = _resize(x, (size, size)) if size else x
        device = next(iter(anonymizer.buffers()), torch.empty(0)).device
        out = anonymizer(small.to(device)).float().cpu()
        return _resize(out, tuple(x.shape[-2:]))[0, 0].numpy(), len(boxes)

    def release_name(self, name: str) -> str:
        """The file name a PNG gets: a ChestX-ray14 name (``00000001_000.png``) with its patient id replaced by
        the keyed pseudonym, any other name by a keyed hash of its path (with :attr:`rename`) or kept."""
        patient = patient_id_in_name(name)
        if patient is None:
            return Path(self.recorded_name(name)).name
        pseudonym = self.pseudonymizer.pseudonym(CXR14_PATIENT_ID, patient)
        return f"{pseudonym}_{CXR14_NAME.match(Path(name).name).group(2)}.png"

    def png_output(self, name: str) -> str:
        """Where a PNG is written in OUT: ``images/`` + :meth:`release_name`, or with ``rename`` off its
        input path with the ChestX-ray14 patient id replaced."""
        if self.rename:
            return f"{IMAGES_FOLDER}/{self.release_name(name)}"
        return str(Path(name).with_name(self.release_name(name)))

    def table_output(self, name: str) -> str:
        """Where the metadata CSV or a split list is written: at OUT's top, as in the release layout."""
        name = name.removesuffix(".gz")
        return Path(name).name if self.rename else name

    def metadata(self, path: Path, name: str) -> FileResult:
        """The ChestX-ray14 metadata CSV with pseudonymous patient ids and image names, sorted by the new
        names; age, sex, original size and pixel spacing blanked unless patient characteristics are kept."""
        meta = read_metadata(path)
        try:
            meta["patient_id"] = [int(self.pseudonymizer.pseudonym(CXR14_PATIENT_ID, str(p)))
                                  for p in meta["patient_id"]]
        except ValueError as err:
            raise DataError(path, f"cannot pseudonymize its patient ids ({err})") from err
        meta["image"] = [self.release_name(n) for n in meta["image"]]
        if not self.header.keep_patient_characteristics:
            for column in CSV_PATIENT_CHARACTERISTICS:
                meta[column] = ""
        with tempfile.TemporaryDirectory() as work:
            out = Path(work) / "metadata.csv"
            write_metadata(meta.sort_values("image"), out)
            data = out.read_bytes()
        return FileResult(self.table_output(name), data, {"kind": "metadata"})

    def split_list(self, path: Path, name: str) -> FileResult:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        mapped = sorted(self.release_name(n) for n in names)
        return FileResult(self.table_output(name), ("\n".join(mapped) + "\n").encode(), {"kind": "split list"})

    def __call__(self, path: Path, name: str, file_hash: str) -> FileResult:
        if path.name in METADATA_NAMES:
            return self.metadata(path, name)
        if path.name in SPLIT_FILES.values():
            return self.split_list(path, name)
        if dicom.is_png(path):
            image, codec = dicom.read_png(path)
            image, found = self.pixels(image, file_hash)
            return FileResult(self.png_output(name), dicom.png_bytes(image, codec), {"text_boxes": found})
        ds = dicom.read_dicom(path)
        changes_pixels = self.detect_text or self.method.anonymizer is not None
        if changes_pixels:
            image, codec = dicom.dicom_pixels(ds, path)  # refuses what is not a single grayscale image
            image, found = self.pixels(image, file_hash)
        elif "PixelData" not in ds:
            raise DataError(path, "DICOM without pixel data (not an image)")
        else:
            found = 0  # header only: the pixel data is copied as stored (colour, compressed, multi-frame)
        out = deidentify_dataset(ds, self.pseudonymizer, self.header,
                                 burned_in_cleaned=True if self.detect_text else None,
                                 pixels_method=self.method.describe())
        if changes_pixels:
            dicom.set_dicom_pixels(out, image, codec)
        return FileResult(self.dicom_name(out, name), dicom.dicom_bytes(out), {"text_boxes": found})

    def recorded_name(self, name: str) -> str:
        """How the manifest names an input: its keyed hash when outputs are renamed."""
        return self.pseudonymizer.file_name(name) if self.rename else name

    def processing_order(self, name: str) -> str:
        """Sort key of the inputs: a keyed hash, so the order the outputs are written in (their times, a
        folder's listing) follows neither the input names nor the pseudonyms' order."""
        return self.pseudonymizer.file_name(name)

    def dicom_name(self, ds, name: str) -> str:
        """STUDY/SERIES/SOP.dcm of the de-identified UIDs (:attr:`rename`), else the input's name."""
        if not self.rename:
            return name
        uids = [str(ds.get(keyword, "")) for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(uids):  # not every file is a complete instance: a keyed name then
            return self.recorded_name(name)
        return "/".join(uids) + ".dcm"


def output_of(out_dir: str | Path, input_name: str, key: bytes, state_dir: str | Path | None = None) -> Path:
    """The file ``cxrlib anonymize`` wrote into ``out_dir`` for input ``input_name`` (relative to IN).

    The manifest (in the state folder, default OUT's sibling ``OUT.cxrlib-state``) names inputs by a keyed
    hash (or, with ``--keep-names``, as they are): only the holder of the key and the state folder can tell
    which output came from which input. KeyError when none was written.
    """
    outputs = output_names(out_dir, state_dir)
    for recorded in (Pseudonymizer(key).file_name(input_name), input_name):
        if recorded in outputs:
            return Path(out_dir) / outputs[recorded]
    raise KeyError(f"{out_dir}: no output recorded for {input_name}")
