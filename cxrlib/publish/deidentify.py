"""DICOM header de-identification: the PS3.15 Basic Application Level Confidentiality Profile.

Why our own table on pydicom rather than ``deid`` recipes or ``dicognito``: the profile is applied as
an **allow-list** (:data:`KEEP` and :data:`REPLACE`); every other attribute, at any depth of nested
sequences, and every private tag (unless its private creator is on a keep-list) is removed. An
attribute a vendor invents tomorrow is therefore removed too, which a block-list recipe cannot
promise. What the profile replaces is done with a user's key (HMAC-SHA256), so that

* a patient maps to the same pseudonym in every batch anonymized with that key, and nobody without
  the key can compute or invert it;
* every UID maps to the same new UID (``2.25.<128-bit>``), so studies and series stay consistent
  across files and batches, and differ from the input;
* dates shift by a per-patient number of days (Retain Longitudinal Temporal Information with
  Modified Dates Option), so intervals between a patient's studies are preserved.

:data:`TABLE_E1_1` lists the profile's attributes with their action codes; tests check that every
one of them is removed or replaced as the profile says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cxrlib.data.chestxray14 import DataError
from cxrlib.publish.dicom import is_png

#: shortest key file accepted (bytes): 256 bits, the HMAC-SHA256 block's strength
MIN_KEY_BYTES = 32

#: the kinds of patient id a file carries; each has one pseudonym format (:meth:`Pseudonymizer.pseudonym`)
DICOM_PATIENT_ID = "dicom"  # the header's PatientID
CXR14_PATIENT_ID = "chestxray14"  # the 8-digit number that starts a ChestX-ray14 image name

#: a ChestX-ray14 release name: patient id (8 digits, from 1) and follow-up number (3 digits)
CXR14_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")

#: dates shift back by 1 to 10 years, a per-patient amount drawn from the key
DATE_SHIFT_DAYS = (365, 3650)

#: PS3.15 Table E.1-1 (Basic Profile actions): D dummy, Z zero-length or dummy, X remove, U new UID,
#: combined codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) as the standard writes them
TABLE_E1_1: dict[str, str] = {
    "AccessionNumber": "Z", "AcquisitionComments": "X", "AcquisitionContextSequence": "X",
    "AcquisitionDate": "X/Z", "AcquisitionDateTime": "X/D", "AcquisitionDeviceProcessingDescription": "X/D",
    "AcquisitionProtocolDescription": "X", "AcquisitionTime": "X/Z", "AcquisitionUID": "U",
    "ActualHumanPerformersSequence": "X", "AdditionalPatientHistory": "X", "AdmissionID": "X",
    "AdmittingDate": "X", "AdmittingDiagnosesCodeSequence": "X", "AdmittingDiagnosesDescription": "X",
    "AdmittingTime": "X", "AffectedSOPInstanceUID": "X", "Allergies": "X", "Arbitrary": "X",
    "AuthorObserverSequence": "X", "BranchOfService": "X", "CassetteID": "X",
    "CommentsOnThePerformedProcedureStep": "X", "ConcatenationUID": "U",
    "ConfidentialityConstraintOnPatientDataDescription": "X", "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X", "ContentDate": "Z/D", "ContentSequence": "X",
    "ContentTime": "Z/D", "ContrastBolusAgent": "Z/D", "ContributionDescription": "X",
    "CountryOfResidence": "X", "CreatorVersionUID": "U", "CurrentPatientLocation": "X",
    "CustodialOrganizationSequence": "X", "DataSetTrailingPadding": "X", "DerivationDescription": "X",
    "DetectorID": "X", "DeviceSerialNumber": "X/Z/D", "DeviceUID": "U", "DigitalSignatureUID": "X",
    "DigitalSignaturesSequence": "X", "DimensionOrganizationUID": "U", "DischargeDiagnosisDescription": "X",
    "DistributionAddress": "X", "DistributionName": "X", "DoseReferenceUID": "U",
    "EndAcquisitionDateTime": "X/D", "EthnicGroup": "X", "FailedSOPInstanceUIDList": "U",
    "FiducialUID": "U", "FillerOrderNumberImagingServiceRequest": "Z", "FrameComments": "X",
    "FrameOfReferenceUID": "U", "GantryID": "X", "GeneratorID": "X", "GraphicAnnotationSequence": "D",
    "HumanPerformerName": "X", "HumanPerformerOrganization": "X", "IconImageSequence": "X",
    "IdentifyingComments": "X", "ImageComments": "X", "ImagePresentationComments": "X",
    "ImagingServiceRequestComments": "X", "Impressions": "X", "InstanceCoercionDateTime": "X",
    "InstanceCreationDate": "X/D", "InstanceCreationTime": "X/Z/D", "InstanceCreatorUID": "U",
    "InstitutionAddress": "X", "InstitutionCodeSequence": "X/Z/D", "InstitutionName": "X/Z/D",
    "InstitutionalDepartmentName": "X", "InstitutionalDepartmentTypeCodeSequence": "X",
    "InsurancePlanIdentification": "X", "IntendedRecipientsOfResultsIdentificationSequence": "X",
    "InterpretationApproverSequence": "X", "InterpretationAuthor": "X",
    "InterpretationDiagnosisDescription": "X", "InterpretationIDIssuer": "X", "InterpretationRecorder": "X",
    "InterpretationText": "X", "InterpretationTranscriber": "X", "IrradiationEventUID": "U",
    "IssuerOfAdmissionID": "X", "IssuerOfPatientID": "X", "IssuerOfServiceEpisodeID": "X",
    "LargePaletteColorLookupTableUID": "U", "MAC": "X", "MediaStorageSOPInstanceUID": "U",
    "MedicalAlerts": "X", "MedicalRecordLocator": "X", "MilitaryRank": "X",
    "ModifiedAttributesSequence": "X", "ModifiedImageDescription": "X", "ModifyingDeviceID": "X",
    "ModifyingDeviceManufacturer": "X", "NameOfPhysiciansReadingStudy": "X",
    "NamesOfIntendedRecipientsOfResults": "X", "Occupation": "X", "OperatorIdentificationSequence": "X",
    "OperatorsName": "X/Z/D", "OrderCallbackPhoneNumber": "X", "OrderEnteredBy": "X",
    "OrderEntererLocation": "X", "OriginalAttributesSequence": "X", "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X", "OtherPatientNames": "X", "OverlayComments": "X", "OverlayData": "X",
    "OverlayDate": "X", "OverlayTime": "X", "ParticipantSequence": "X", "PatientAddress": "X",
    "PatientAge": "X", "PatientBirthDate": "Z", "PatientBirthName": "X", "PatientBirthTime": "X",
    "PatientComments": "X", "PatientID": "Z", "PatientInsurancePlanCodeSequence": "X",
    "PatientMotherBirthName": "X", "PatientName": "Z", "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X", "PatientReligiousPreference": "X",
    "PatientSex": "Z", "PatientSexNeutered": "X/Z", "PatientSize": "X", "PatientState": "X",
    "PatientTelephoneNumbers": "X", "PatientTransportArrangements": "X", "PatientWeight": "X",
    "PerformedLocation": "X", "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepEndDate": "X", "PerformedProcedureStepEndTime": "X",
    "PerformedProcedureStepID": "X", "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X", "PerformedStationAETitle": "X",
    "PerformedStationGeographicLocationCodeSequence": "X", "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X", "PerformingPhysicianIdentificationSequence": "X",
    "PerformingPhysicianName": "X", "PersonAddress": "X", "PersonIdentificationCodeSequence": "D",
    "PersonName": "D", "PersonTelephoneNumbers": "X", "PhysicianApprovingInterpretation": "X",
    "PhysiciansOfRecord": "X", "PhysiciansOfRecordIdentificationSequence": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X", "PlacerOrderNumberImagingServiceRequest": "Z",
    "PlateID": "X", "PreMedication": "X", "PregnancyStatus": "X", "ProtocolName": "X/D",
    "ReasonForStudy": "X", "ReasonForTheImagingServiceRequest": "X",
    "ReferencedDigitalSignatureSequence": "X", "ReferencedFrameOfReferenceUID": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U", "ReferencedImageSequence": "X/Z/U*",
    "ReferencedPatientAliasSequence": "X", "ReferencedPatientPhotoSequence": "X",
    "ReferencedPatientSequence": "X", "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "ReferencedSOPInstanceMACSequence": "X", "ReferencedSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U", "ReferencedStudySequence": "X/Z",
    "ReferringPhysicianAddress": "X", "ReferringPhysicianIdentificationSequence": "X",
    "ReferringPhysicianName": "Z", "ReferringPhysicianTelephoneNumbers": "X", "RegionOfResidence": "X",
    "RelatedFrameOfReferenceUID": "U", "RequestAttributesSequence": "X", "RequestedContrastAgent": "X",
    "RequestedProcedureComments": "X", "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X", "RequestedProcedureLocation": "X", "RequestedSOPInstanceUID": "U",
    "RequestingPhysician": "X", "RequestingService": "X", "ResponsibleOrganization": "X",
    "ResponsiblePerson": "X", "ResultsComments": "X", "ResultsDistributionListSequence": "X",
    "ResultsIDIssuer": "X", "ReviewerName": "X/Z", "ScheduledHumanPerformersSequence": "X",
    "ScheduledPatientInstitutionResidence": "X", "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledPerformingPhysicianName": "X", "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepEndDate": "X", "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepID": "X", "ScheduledProcedureStepLocation": "X",
    "ScheduledProcedureStepStartDate": "X", "ScheduledProcedureStepStartTime": "X",
    "ScheduledStationAETitle": "X", "ScheduledStationGeographicLocationCodeSequence": "X",
    "ScheduledStationName": "X", "ScheduledStationNameCodeSequence": "X", "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X", "SeriesDate": "X", "SeriesDescription": "X",
    "SeriesInstanceUID": "U", "SeriesTime": "X", "ServiceEpisodeDescription": "X", "ServiceEpisodeID": "X",
    "SmokingStatus": "X", "SOPInstanceUID": "U", "SourceImageSequence": "X/Z/U*", "SpecialNeeds": "X",
    "StationName": "X/Z/D", "StorageMediaFileSetUID": "U", "StudyComments": "X", "StudyDate": "Z",
    "StudyDescription": "X", "StudyID": "Z", "StudyIDIssuer": "X", "StudyInstanceUID": "U",
    "StudyTime": "Z", "SynchronizationFrameOfReferenceUID": "U", "TargetUID": "U", "TextComments": "X",
    "TextString": "X", "TimezoneOffsetFromUTC": "X", "TopicAuthor": "X", "TopicKeywords": "X",
    "TopicSubject": "X", "TopicTitle": "X", "TransactionUID": "U", "UID": "U",
    "VerifyingObserverIdentificationCodeSequence": "Z", "VerifyingObserverName": "D",
    "VerifyingObserverSequence": "D", "VerifyingOrganization": "X", "VisitComments": "X",
}

#: attributes copied unchanged (image, geometry and exposure description; none is in Table E.1-1);
#: sequences here are recursed into with the same rules
KEEP: frozenset[str] = frozenset({
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "Modality", "ConversionType",
    "PresentationIntentType", "Manufacturer", "ManufacturerModelName", "BodyPartExamined",
    "ViewPosition", "ViewCodeSequence", "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion",
    "CodeMeaning", "AnatomicRegionSequence", "PatientOrientation", "PatientPosition", "ImageLaterality",
    "Laterality", "SeriesNumber", "InstanceNumber", "AcquisitionNumber", "SamplesPerPixel",
    "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelData", "PixelSpacing",
    "ImagerPixelSpacing", "PixelAspectRatio", "PixelSpacingCalibrationType", "PixelPaddingValue",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "WindowCenterWidthExplanation", "VOILUTSequence", "ModalityLUTSequence", "LUTDescriptor", "LUTData",
    "LUTExplanation", "ModalityLUTType", "PresentationLUTShape", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "KVP", "ExposureTime", "XRayTubeCurrent",
    "Exposure", "ExposureInuAs", "DistanceSourceToDetector", "DistanceSourceToPatient",
    "EstimatedRadiographicMagnificationFactor", "FieldOfViewShape", "FieldOfViewDimensions", "Grid",
    "FocalSpots", "AnodeTargetMaterial", "FilterType", "RelativeXRayExposure", "SensitivityValue",
    "DetectorType", "QualityControlImage", "BurnedInAnnotation", "RecognizableVisualFeatures", "ReferencedSOPClassUID",
})

#: how the attributes the profile keeps but changes are replaced
REPLACE: dict[str, str] = {
    "PatientName": "pseudonym", "PatientID": "pseudonym",
    "PatientBirthDate": "empty", "PatientSex": "empty", "AccessionNumber": "empty", "StudyID": "empty",
    "ReferringPhysicianName": "empty", "StudyTime": "empty", "ContentTime": "empty",
    "StudyDate": "date", "SeriesDate": "date", "AcquisitionDate": "date", "ContentDate": "date",
    "AcquisitionDateTime": "datetime",
    "StudyInstanceUID": "uid", "SeriesInstanceUID": "uid", "SOPInstanceUID": "uid",
    "FrameOfReferenceUID": "uid", "ReferencedSOPInstanceUID": "uid", "ReferencedFrameOfReferenceUID": "uid",
}

#: with ``keep_patient_characteristics`` (option 113108) these stay as they are
PATIENT_CHARACTERISTICS = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")

#: DICOM's Code Sequence entries (CID 7050) for what was applied
OPTION_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "characteristics": ("113108", "Retain Patient Characteristics Option"),
    "pixels": ("113101", "Clean Pixel Data Option"),
}


def load_key(path: str | Path) -> bytes:
    """The secret of a key file (raw bytes; at least :data:`MIN_KEY_BYTES`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "key file not found; create one with e.g. `head -c 32 /dev/urandom > KEY` "
                              "and keep it secret: it links pseudonyms to patients")
    key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise DataError(path, f"key file holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def patient_id_in_name(name: str) -> str | None:
    """The patient id a ChestX-ray14 release name carries (``00000001_000.png`` -> ``00000001``), None for
    any other name (``00000000`` included: the release numbers patients from 1)."""
    match = CXR14_NAME.match(Path(name).name)
    return match.group(1) if match and int(match.group(1)) > 0 else None


def patient_id_kind(name: str) -> str:
    """The kind of patient id the file ``name`` carries: PNGs in their names, everything else in a DICOM header."""
    return CXR14_PATIENT_ID if is_png(name) else DICOM_PATIENT_ID


@dataclass
class Pseudonymizer:
    """Keyed, deterministic replacements: patient pseudonyms, UIDs, per-patient date shifts."""

    key: bytes

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def patient(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id.strip()).hex()[:16].upper()

    def pseudonym(self, kind: str, patient_id: str | None) -> str | None:
        """The pseudonym ``cxrlib anonymize`` writes for a patient id of ``kind`` (:data:`DICOM_PATIENT_ID`:
        ``ANON-`` and 16 hex digits; :data:`CXR14_PATIENT_ID`: 8 digits, a keyed permutation), and the one
        ``cxrlib audit --key`` computes for the raw set, so that the two always meet. None for a missing or
        blank id: files without an id must not all share one pseudonym (they would look like one patient)."""
        patient_id = str(patient_id or "").strip()
        if not patient_id:
            return None
        if kind == DICOM_PATIENT_ID:
            return self.patient(patient_id)
        if kind == CXR14_PATIENT_ID:
            if not patient_id.isdigit():
                raise ValueError(f"ChestX-ray14 patient id {patient_id!r} is not a number")
            return f"{self.patient_number(int(patient_id)):08d}"
        raise ValueError(f"unknown kind of patient id {kind!r}; expected {DICOM_PATIENT_ID!r} or {CXR14_PATIENT_ID!r}")

    def file_name(self, name: str) -> str:
        """A keyed name for a file whose own name and folders may carry PHI (the suffix kept)."""
        return self._digest("file", name).hex()[:24] + Path(name).suffix.lower()

    def patient_number(self, patient_id: int, digits: int = 8) -> int:
        """A keyed permutation of ``[1, 10**digits)``: distinct patients never collide (a format-preserving
        Feistel cipher with cycle walking), so numeric ids such as ChestX-ray14's stay numeric."""
        limit = 10 ** digits - 1
        if not 1 <= patient_id <= limit:
            raise ValueError(f"patient id {patient_id} outside 1..{limit}")
        half = (limit.bit_length() + 1) // 2
        mask = (1 << half) - 1
        value = patient_id - 1
        while True:
            left, right = value >> half, value & mask
            for round_ in range(8):
                f = int.from_bytes(self._digest(f"feistel{round_}", str(right))[:8], "big") & mask
                left, right = right, left ^ f
            value = (left << half) | right
            if value < limit:
                return value + 1

    def uid(self, uid: str) -> str:
        return "2.25." + str(int.from_bytes(self._digest("uid", str(uid))[:16], "big"))

    def date_shift(self, patient_id: str) -> int:
        low, high = DATE_SHIFT_DAYS
        return -(low + int.from_bytes(self._digest("date", patient_id.strip())[:8], "big") % (high - low + 1))

    def shift_date(self, value: str, days: int) -> str:
        value = str(value).strip()
        if not value:
            return ""
        try:
            date = dt.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return ""  # an unparsable date cannot be shifted, so it is removed
        return (date + dt.timedelta(days=days)).strftime("%Y%m%d")


@dataclass
class HeaderOptions:
    """What the header step applies beyond the basic profile."""

    keep_patient_characteristics: bool = False
    keep_private_creators: tuple[str, ...] = ()
    applied: list[str] = field(default_factory=list)


def deidentify_dataset(ds, pseudonymizer: Pseudonymizer, options: HeaderOptions | None = None, *,
                       burned_in_cleaned: bool | None = None, pixels_method: str = "none"):
    """A de-identified copy of ``ds`` (pydicom Dataset, pixel data included).

    ``burned_in_cleaned``: True when text detection ran and found regions were blacked out (then
    ``BurnedInAnnotation`` = NO and the Clean Pixel Data option is recorded), None when it did not run
    (then an input's ``BurnedInAnnotation`` is kept and never set to NO).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    options = options or HeaderOptions()
    original_id = str(ds.get("PatientID", "") or "")
    pseudonym = pseudonymizer.pseudonym(DICOM_PATIENT_ID, original_id)  # None: no id, left empty
    shift = pseudonymizer.date_shift(original_id)
    keep = set(KEEP) | (set(PATIENT_CHARACTERISTICS) if options.keep_patient_characteristics else set())

    def private_kept(dataset, tag) -> bool:
        creators = {int(t.element): str(e.value) for t, e in ((t, dataset[t]) for t in dataset.keys())
                    if t.group == tag.group and t.is_private_creator}
        creator = creators.get(tag.element >> 8) if not tag.is_private_creator else str(dataset[tag].value)
        return creator in options.keep_private_creators

    def clean(dataset) -> Dataset:
        out = Dataset()
        for elem in dataset:
            tag, keyword = elem.tag, elem.keyword
            if tag.is_private:
                if options.keep_private_creators and private_kept(dataset, tag):
                    out.add(elem)
                continue
            action = "keep" if keyword in keep else REPLACE.get(keyword)
            if action is None:
                continue
            if elem.VR == "SQ":
                out.add_new(tag, "SQ", Sequence([clean(item) for item in elem.value]))
            elif action == "keep":
                out.add(elem)
            elif action == "empty":
                out.add_new(tag, elem.VR, None)
            elif action == "pseudonym":
                out.add_new(tag, elem.VR, pseudonym)
            elif action == "uid":
                values = elem.value if elem.VM > 1 else [elem.value]
                new = [pseudonymizer.uid(v) for v in values if str(v)]
                out.add_new(tag, "UI", new if elem.VM > 1 else (new[0] if new else None))
            elif action == "date":
                out.add_new(tag, "DA", pseudonymizer.shift_date(elem.value, shift) or None)
            elif action == "datetime":
                shifted = pseudonymizer.shift_date(elem.value, shift)
                # the time of day is dropped with the date's shift: only the interval in days is kept
                out.add_new(tag, "DT", shifted or None)
        return out

    out = clean(ds)
    applied = ["basic", "dates"] + (["characteristics"] if options.keep_patient_characteristics else [])
    if burned_in_cleaned:
        applied.append("pixels")
        out.BurnedInAnnotation = "NO"
    out.PatientIdentityRemoved = "YES"
    # LO values hold 64 characters; the attribute takes several values
    method = ["cxrlib: PS3.15 basic profile as an allow-list", "keyed pseudonyms and UIDs (HMAC-SHA256)",
              "dates shifted per patient", f"pixels: {pixels_method}"]
    if burned_in_cleaned:
        method.append("burned-in text detected and blacked out")
    out.DeidentificationMethod = [m[:64] for m in method]
    codes = []
    for name in applied:
        value, meaning = OPTION_CODES[name]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(codes)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID"))
    sop = out.get("SOPInstanceUID") or pseudonymizer.uid(str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")))
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta
    return out


def header_findings(ds) -> dict:
    """What of Table E.1-1 and private data a dataset still carries (for the audit), at any depth."""
    present: dict[str, int] = {}
    private = 0
    # after de-identification the replaced attributes hold pseudonyms, not PHI
    replaced = set(REPLACE) if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" else set()

    def walk(dataset) -> None:
        nonlocal private
        for elem in dataset:
            if elem.tag.is_private:
                private += 1
            elif elem.keyword in TABLE_E1_1 and elem.keyword not in replaced and elem.value not in (None, ""):
                present[elem.keyword] = present.get(elem.keyword, 0) + 1
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)

    walk(ds)
    return {"table_e1_1_present": sorted(present), "private_tags": private,
            "patient_identity_removed": str(ds.get("PatientIdentityRemoved", "")),
            "burned_in_annotation": str(ds.get("BurnedInAnnotation", ""))}


def iter_elements(dataset) -> Iterable:
    """Every data element of ``dataset``, sequences descended, private tags included."""
    for elem in dataset:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from iter_elements(item)
