"""Read and write the pixels of DICOM radiographs and PNGs as float images in [0, 1].

The anonymizers see a display image: 0 is black, 1 is white, whatever the file stores. A
:class:`PixelCodec` remembers how a file's stored values map onto that range (bit depth, sign,
MONOCHROME1 inversion, the value range actually used) so that the result is written back at the
input's size, bit depth and photometric interpretation. The mapping is linear over the stored values
the image uses, so the modality LUT (rescale slope/intercept) and VOI LUT (window, LUT sequence) of
the file keep their meaning and stay valid for the written pixels.
"""

from __future__ import annotations

import importlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlib.data.chestxray14 import DataError, read_gray

#: file name endings treated as PNG; everything else is tried as DICOM
PNG_SUFFIXES = (".png",)

#: pydicom's decoder plugins that need packages cxrlib does not install, in the order they are suggested
DECODER_PLUGINS = ("pylibjpeg", "gdcm", "pyjpegls")
#: pip's name of a package where it differs from the import name pydicom's plugins list
_PIP_NAMES = {"gdcm": "python-gdcm"}
#: what cxrlib installs anyway (never worth suggesting)
_INSTALLED = ("numpy", "pillow")


@dataclass(frozen=True)
class PixelCodec:
    """How stored values map to [0, 1]: ``display = (stored - low) / (high - low)``, inverted for
    MONOCHROME1; ``dtype``, ``minimum`` and ``maximum`` bound what may be written back."""

    low: float
    high: float
    invert: bool
    dtype: np.dtype
    minimum: int
    maximum: int

    def to_display(self, stored: np.ndarray) -> np.ndarray:
        span = max(self.high - self.low, 1.0)
        display = (stored.astype(np.float64) - self.low) / span
        return (1.0 - display if self.invert else display).astype(np.float32)

    def to_stored(self, display: np.ndarray) -> np.ndarray:
        display = np.clip(display.astype(np.float64), 0.0, 1.0)
        if self.invert:
            display = 1.0 - display
        stored = np.rint(self.low + display * max(self.high - self.low, 1.0))
        return np.clip(stored, self.minimum, self.maximum).astype(self.dtype)


def _codec_for(stored: np.ndarray, bits_stored: int, signed: bool, invert: bool, dtype) -> PixelCodec:
    minimum, maximum = ((-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed
                        else (0, 2 ** bits_stored - 1))
    return PixelCodec(low=float(stored.min()), high=float(stored.max()), invert=invert, dtype=np.dtype(dtype),
                      minimum=minimum, maximum=maximum)


def is_png(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PNG_SUFFIXES


# -- DICOM -----------------------------------------------------------------------------------------


def read_dicom(path: str | Path, *, pixels: bool = True):
    """The dataset of a DICOM file; ``DataError`` naming the file for anything that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError as err:
            # some exports lack the preamble and file meta; accept them only if they parse as an instance
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
            if "SOPClassUID" not in ds:
                raise DataError(path, f"not a DICOM file ({err})") from err
            return ds
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise DataError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from err


def decoder_packages(syntax: str) -> list[str]:
    """For each pydicom decoder plugin that reads the transfer syntax ``syntax``, the packages to install
    for it (``"pylibjpeg pylibjpeg-libjpeg"``, ``"python-gdcm"``, ...), from the plugins' own dependency
    tables, so that the advice follows pydicom's."""
    options = []
    for plugin in DECODER_PLUGINS:
        try:
            table = importlib.import_module(f"pydicom.pixels.decoders.{plugin}").DECODER_DEPENDENCIES
        except (ImportError, AttributeError):
            continue
        names = [re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0] for requirement in table.get(syntax, ())]
        packages = [_PIP_NAMES.get(name, name) for name in names if name.lower() not in _INSTALLED]
        if packages:
            options.append(" ".join(packages))
    return options


def _undecodable(path: Path, syntax, err: Exception) -> DataError:
    """The error for compressed pixel data that did not decode, naming the packages to install."""
    from pydicom.pixels import get_decoder

    try:
        installed = get_decoder(syntax).available_plugins
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for
        installed = ()
    options = decoder_packages(syntax)
    install = " or ".join(f"`pip install {o}`" for o in options) if options else "none that pydicom knows of"
    header = f"cannot decode pixel data compressed as {syntax.name} ({syntax})"
    if not installed:
        return DataError(path, f"{header}: no installed decoder reads it; install one: {install}")
    # pydicom's message: a summary line, then one line per plugin that failed and why
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = "; ".join(lines[1:] or lines) or type(err).__name__
    return DataError(path, f"{header}: the installed decoder ({', '.join(installed)}) failed ({reason}); "
                           f"another may read it: {install}")


def dicom_pixels(ds, path: str | Path) -> tuple[np.ndarray, PixelCodec]:
    """The single-frame grayscale image of ``ds`` in [0, 1] (H, W) and its codec.

    Refuses, naming the file: no pixel data, several frames, colour images, and compressed transfer
    syntaxes that no installed decoder reads (with the packages to install for a decoder that would).
    """
    path = Path(path)
    if "PixelData" not in ds:
        raise DataError(path, "DICOM without pixel data (not an image)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.get("BitsStored", 0)) or None
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        allocated = int(ds.get("BitsAllocated", 0))
    except (ValueError, TypeError) as err:
        raise DataError(path, f"malformed image attributes ({err})") from err
    if frames > 1:
        raise DataError(path, f"multi-frame image ({frames} frames): only single-frame radiographs are handled")
    if allocated not in (8, 16):
        raise DataError(path, f"{allocated} bits allocated per pixel: only 8- and 16-bit radiographs are handled")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(path, f"colour image ({photometric}, {samples} samples per pixel): only grayscale "
                              "(MONOCHROME1/2) radiographs are handled")
    try:
        stored = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            raise _undecodable(path, syntax, err) from err
        raise DataError(path, f"corrupt pixel data ({reason})") from err
    if stored.ndim != 2:
        raise DataError(path, f"pixel array has shape {stored.shape}, expected one grayscale frame")
    codec = _codec_for(stored, bits or stored.dtype.itemsize * 8, signed, photometric == "MONOCHROME1",
                       stored.dtype)
    return codec.to_display(stored), codec


def set_dicom_pixels(ds, display: np.ndarray, codec: PixelCodec) -> None:
    """Write ``display`` (H, W in [0, 1]) into ``ds`` uncompressed (Explicit VR Little Endian)."""
    from pydicom.uid import ExplicitVRLittleEndian

    stored = codec.to_stored(display)
    allocated = int(ds.BitsAllocated)  # 8 or 16, checked when read
    stored = stored.astype(f"<{'i' if codec.minimum < 0 else 'u'}{allocated // 8}")
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if allocated > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "SmallestImagePixelValue" in ds:
        del ds.SmallestImagePixelValue
    if "LargestImagePixelValue" in ds:
        del ds.LargestImagePixelValue


def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- PNG -------------------------------------------------------------------------------------------


def read_png(path: str | Path) -> tuple[np.ndarray, PixelCodec]:
    """A PNG as [0, 1] (H, W) and its codec, read by the data layer's :func:`read_gray` (so a file
    too large to decode or unreadable is refused the same way): 8- and 16-bit grayscale kept at their
    depth (a 16-bit file using 12 bits keeps its contrast: the codec spans the values used); colour
    converted to luminance."""
    stored = read_gray(path).values  # written back in the file's own 8 or 16 bits
    codec = _codec_for(stored, stored.dtype.itemsize * 8, False, False, stored.dtype)
    return codec.to_display(stored), codec


def png_bytes(display: np.ndarray, codec: PixelCodec) -> bytes:
    stored = codec.to_stored(display)
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG")
    return buffer.getvalue()


def read_pixels(path: str | Path) -> np.ndarray:
    """The [0, 1] image of a PNG or DICOM file (for the audit)."""
    if is_png(path):
        return read_png(path)[0]
    return dicom_pixels(read_dicom(path), path)[0]
