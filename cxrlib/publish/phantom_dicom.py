"""Radiographs as a hospital would export them: DX/CR DICOM files full of synthetic PHI.

:func:`write_synthetic_phi_dicom` turns any folder in the ChestX-ray14 layout (PNGs and their metadata:
the phantom, the real release, a sample of it) into ``OUT/images/*.dcm`` plus ``OUT/phi_truth.json``,
the list of every identifying value planted in each file (names, ids, dates, UIDs, institution,
physicians, device serials, accession numbers; at the top level, inside nested sequences and in private
tags), so that anonymization is tested against known ground truth. The PHI is drawn by this module from
the seed and the metadata (sex, ages, view, follow-ups): on real radiographs every header value is
synthetic and only the pixels are the folder's own. A phantom folder adds what only the phantom knows:
its ``phantom_truth.csv`` (where text is burned into each image) is copied to ``OUT/phantom_truth.csv``.
:func:`write_phantom_dicom` is the same for a phantom only (``cxrlib phantom --format dicom``).

The pixels vary the way real exports do: PA views are DX, MONOCHROME2, 12 of 16 bits with a
window; AP (bedside) views are CR, MONOCHROME1, 10 bits with a rescale slope.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrlib.data.chestxray14 import DataError, ImageLocator, find_metadata_file, load_image, read_metadata
from cxrlib.data.phantom import PHANTOM_TRUTH
from cxrlib.publish.batch import atomic_write_bytes
from cxrlib.publish.dicom import dicom_bytes

#: names rare enough that finding one in an output can only mean it leaked (no English word contains them)
FIRST_NAMES = ("Evangelina", "Bartholomew", "Xiomara", "Leopoldine", "Thaddeus", "Zenobia", "Ignatius",
               "Philippa", "Casimir", "Rosalind", "Octavian", "Wilhelmina", "Florentyna", "Augustin",
               "Perpetua", "Cornelius", "Genoveva", "Maximilian", "Anastazja", "Bonifacio")
LAST_NAMES = ("Smithfield", "Johanssen", "Williamson", "Brownlee", "Jonesworth", "Garciano", "Millerton",
              "Davidovic", "Rodrigues", "Martinelli", "Hernandez", "Lopezmora", "Gonzaga", "Wilkinson",
              "Anderberg", "Thomasson", "Taylorson", "Mooreland", "Jacksonville", "Martinez", "Leeward",
              "Perezoso", "Thompsett", "Whitacre", "Harrington", "Sanchezlo", "Clarkston", "Ramirezia")
INSTITUTIONS = (("St. Elsewhere General Hospital", "12 Harbour Road, Springfield"),
                ("Mercy West Medical Center", "400 Lakeview Drive, Shelbyville"),
                ("County Chest Clinic", "7 Old Mill Lane, Ogdenville"))
STUDY_EPOCH = dt.date(2008, 1, 1)
#: the root of pydicom's UID space, under which the phantom's "hospital" UIDs are drawn
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def _person(rng: np.random.Generator) -> str:
    return f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}^{chr(65 + int(rng.integers(26)))}"


def _uid(rng: np.random.Generator) -> str:
    return UID_ROOT + ".".join(str(int(v)) for v in rng.integers(1, 10**9, size=3))


def _patients(meta, rng: np.random.Generator) -> dict[int, dict]:
    people = {}
    for pid, rows in meta.groupby("patient_id"):
        first = rows.sort_values("follow_up").iloc[0]
        first_day = STUDY_EPOCH + dt.timedelta(days=int(rng.integers(0, 3650)))
        birth = first_day - dt.timedelta(days=int(first["age"] * 365.25 + rng.integers(0, 365)))
        sex = "M" if first["sex"] == "M" else "F"
        people[int(pid)] = {
            "PatientName": f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
            "PatientID": f"MRN{int(rng.integers(10**6, 10**7))}",
            "OtherPatientID": f"NHS{int(rng.integers(10**8, 10**9))}",
            "PatientBirthDate": birth.strftime("%Y%m%d"), "PatientSex": sex,
            "PatientAddress": f"{int(rng.integers(1, 999))} {rng.choice(LAST_NAMES)} Street, Springfield",
            "PatientTelephoneNumbers": f"+1-555-{int(rng.integers(1000, 9999))}",
            "first_day": first_day, "first_age": float(first["age"]),
            "institution": INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))],
        }
    return people


def _dataset(row, person: dict, rng: np.random.Generator, pixels: np.ndarray):
    """One exported radiograph with its planted values (returned as the second item)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    # studies fall on the day the patient had the recorded age, so intervals follow the metadata
    days = int(round((float(row["age"]) - person["first_age"]) * 365.25)) + 17 * int(row["follow_up"])
    study_day = person["first_day"] + dt.timedelta(days=days)
    date = study_day.strftime("%Y%m%d")
    time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}"
    institution, address = person["institution"]
    referring, performing, operator = _person(rng), _person(rng), _person(rng)
    accession = f"A{int(rng.integers(10**7, 10**8))}"
    serial, station = f"SN-{int(rng.integers(10**5, 10**6))}", f"XR-ROOM-{int(rng.integers(1, 20))}"
    study_id, procedure_id = f"S{int(rng.integers(10**5, 10**6))}", f"RP{int(rng.integers(10**5, 10**6))}"
    study_uid, series_uid, sop_uid, frame_uid = (_uid(rng) for _ in range(4))
    cr = row["view"] == "AP"
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if cr else "1.2.840.10008.5.1.4.1.1.1.1"

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.AccessionNumber = accession
    ds.Modality = "CR" if cr else "DX"
    ds.Manufacturer, ds.ManufacturerModelName = "PhantomRay", "PR-500"
    ds.InstitutionName, ds.InstitutionAddress = institution, address
    ds.ReferringPhysicianName = referring
    ds.StationName = station
    ds.StudyDescription = f"CHEST {row['view']} for {person['PatientName'].split('^')[0]}"
    ds.SeriesDescription = f"Chest {row['view']}"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName, ds.OperatorsName = performing, operator
    ds.NameOfPhysiciansReadingStudy = referring
    ds.PatientName, ds.PatientID = person["PatientName"], person["PatientID"]
    ds.IssuerOfPatientID = institution
    ds.PatientBirthDate, ds.PatientSex = person["PatientBirthDate"], person["PatientSex"]
    ds.PatientAge = f"{int(row['age']):03d}Y"
    ds.PatientAddress, ds.PatientTelephoneNumbers = person["PatientAddress"], person["PatientTelephoneNumbers"]
    ds.PatientComments = f"MRN {person['PatientID']} ph {person['PatientTelephoneNumbers']}"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = person["OtherPatientID"], "NHS"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", row["view"]
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = "4.2"
    ds.KVP, ds.ExposureTime, ds.XRayTubeCurrent = 110 if not cr else 90, 12, 250
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID = study_id
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"] if row["view"] == "PA" else ["R", "F"]
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = procedure_id, f"SPS{procedure_id[2:]}"
    request.RequestedProcedureDescription = f"CXR {person['PatientName'].replace('^', ' ')}"
    physician = Dataset()
    physician.PersonName = performing
    physician.InstitutionName = institution
    request.PerformingPhysicianIdentificationSequence = Sequence([physician])
    ds.RequestAttributesSequence = Sequence([request])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced.ReferencedSOPInstanceUID = study_uid
    ds.ReferencedStudySequence = Sequence([referenced])
    # a vendor's private block: identifying values where a block-list would not look
    block = ds.private_block(0x0029, "PHANTOMRAY RIS 1.0", create=True)
    block.add_new(0x10, "LO", person["PatientName"])
    block.add_new(0x11, "LO", person["PatientID"])
    nested = Dataset()
    nested.add_new(0x00291010, "LO", accession)
    nested.add_new(0x00290010, "LO", "PHANTOMRAY RIS 1.0")
    block.add_new(0x12, "SQ", Sequence([nested]))

    _set_pixels(ds, pixels, cr, row)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta

    planted = {
        "names": sorted({person["PatientName"], referring, performing, operator}),
        "strings": sorted({person["PatientID"], person["OtherPatientID"], person["PatientAddress"],
                           person["PatientTelephoneNumbers"], institution, address, accession, serial,
                           station, study_id, procedure_id}),
        "dates": sorted({date, person["PatientBirthDate"]}),
        "times": [time],
        "uids": [study_uid, series_uid, sop_uid, frame_uid],
    }
    return ds, planted, date


def _set_pixels(ds, pixels: np.ndarray, cr: bool, row) -> None:
    """The pixel data as a vendor stores it: CR inverted (MONOCHROME1, 10 bits, a rescale), DX in 12 bits
    with a window; the burned-in text is in the pixels."""
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, *pixels.shape
    ds.BitsAllocated, ds.PixelRepresentation = 16, 0
    if cr:
        stored = ((255 - pixels.astype(np.uint16)) * 4).astype(np.uint16)
        ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit = "MONOCHROME1", 10, 9
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -1024, "US"
    else:
        stored = (pixels.astype(np.uint16) * 16 + 8).astype(np.uint16)
        ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit = "MONOCHROME2", 12, 11
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImagerPixelSpacing = imager_pixel_spacing(row, pixels.shape)
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = stored.tobytes()


def imager_pixel_spacing(row, shape: tuple[int, int]) -> list[str]:
    """DICOM's (row, column) spacing in mm of ``shape`` pixels: the metadata's spacing describes the
    original size (``width`` x ``height``), which real copies are often resized from (the sample's 64 px)."""
    rows, columns = shape
    return [f"{float(row['spacing_y']) * float(row['height']) / rows:.10g}",
            f"{float(row['spacing_x']) * float(row['width']) / columns:.10g}"]


def write_synthetic_phi_dicom(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                              images: Sequence[str] | None = None, overwrite: bool = False,
                              progress: bool | None = None) -> Path:
    """Write the radiographs of the ChestX-ray14-layout folder ``data_dir`` (or only its ``images``) as
    DICOM with synthetic PHI into ``out_dir``; a phantom's ``phantom_truth.csv`` is copied beside them
    (see the module docstring)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    meta = read_metadata(find_metadata_file(data_dir))
    if images is not None:
        unknown = sorted(set(images) - set(meta["image"]))
        if unknown:
            raise DataError(find_metadata_file(data_dir),
                            f"{len(unknown)} requested image(s) are not in its metadata, e.g. {unknown[:3]}")
        meta = meta[meta["image"].isin(set(images))]
    rng = np.random.default_rng(seed)
    people = _patients(meta, rng)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    truth = {"files": {}, "patients": {}}
    rows = list(meta.itertuples(index=False))
    locate = ImageLocator(data_dir)  # the flat layout or the release's images_00X/images/
    for row in tqdm(rows, desc="writing DICOM", unit="image", disable=progress is False, leave=False):
        row = row._asdict()
        person = people[int(row["patient_id"])]
        pixels = load_image(locate(row["image"]))
        ds, planted, date = _dataset(row, person, rng, pixels)
        name = f"images/{Path(row['image']).stem}.dcm"
        atomic_write_bytes(partial / name, dicom_bytes(ds))
        truth["files"][name] = {**planted, "source_image": row["image"], "study_date": date,
                                "patient_id": person["PatientID"]}
    for pid, person in people.items():
        truth["patients"][person["PatientID"]] = {"source_patient": pid, "name": person["PatientName"]}
    (partial / "phi_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    if (data_dir / PHANTOM_TRUTH).is_file():
        shutil.copy2(data_dir / PHANTOM_TRUTH, partial / PHANTOM_TRUTH)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir


def write_phantom_dicom(phantom_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                        images: Sequence[str] | None = None, overwrite: bool = False,
                        progress: bool | None = None) -> Path:
    """:func:`write_synthetic_phi_dicom` for a phantom folder only, so that its text-box truth always comes
    along (``cxrlib phantom --format dicom``); a folder without ``phantom_truth.csv`` is an error."""
    if not (Path(phantom_dir) / PHANTOM_TRUTH).is_file():
        raise DataError(phantom_dir, f"not a phantom folder (no {PHANTOM_TRUTH}); "
                                     "write_synthetic_phi_dicom writes any ChestX-ray14 folder")
    return write_synthetic_phi_dicom(phantom_dir, out_dir, seed=seed, images=images, overwrite=overwrite,
                                     progress=progress)
