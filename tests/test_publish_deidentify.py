"""`cxrlib anonymize` on the phantom written as DICOM: every planted value gone, the profile applied."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrlib.cli import main
from cxrlib.data.phantom import generate_phantom
from cxrlib.publish.batch import iter_manifest, sha256_file
from cxrlib.publish.deidentify import REPLACE, TABLE_E1_1, Pseudonymizer, iter_elements
from cxrlib.publish.dicom import dicom_pixels
from cxrlib.publish.phantom_dicom import write_phantom_dicom
from cxrlib.publish.pipeline import output_of


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The phantom as DICOM, anonymized twice with one key (two batches) and once with another."""
    root = tmp_path_factory.mktemp("publish")
    png = generate_phantom(root / "png", n_patients=5, size=64, seed=3, max_followups=4, progress=False)
    dicom = write_phantom_dicom(png, root / "dicom", seed=3, progress=False)
    for name, content in (("key", b"k" * 32), ("other_key", b"o" * 40)):
        (root / name).write_bytes(content)
    hashes = {p: sha256_file(p) for p in (dicom / "images").iterdir()}
    outputs = {}
    for out, key in (("out", "key"), ("again", "key"), ("other", "other_key")):
        code = main(["anonymize", str(dicom / "images"), str(root / out), "--key", str(root / key), "--quiet"])
        assert code == 0
        outputs[out] = root / out
    truth = json.loads((dicom / "phi_truth.json").read_text())
    return {"root": root, "in": dicom / "images", "truth": truth, "in_hashes": hashes, **outputs}


def _output(folder: Path, name: str, key: Path) -> Path:
    return output_of(folder, name, key.read_bytes())


def _datasets(release, which: str, key: str = "key") -> dict[str, pydicom.Dataset]:
    """Input file name -> the de-identified dataset written for it."""
    return {p.name: pydicom.dcmread(_output(release[which], p.name, release["root"] / key))
            for p in sorted(release["in"].glob("*.dcm"))}


def test_input_folder_is_unchanged(release):
    now = {p: sha256_file(p) for p in release["in"].iterdir()}
    assert now == release["in_hashes"]


def test_no_planted_phi_anywhere_in_the_output(release):
    files = release["truth"]["files"]
    assert len(files) >= 10
    out = release["out"]
    for name, planted in files.items():
        path = _output(out, Path(name).name, release["root"] / "key")
        ds = pydicom.dcmread(path)
        raw = path.read_bytes()
        names = [part for person in planted["names"] for part in person.split("^") if len(part) > 1]
        texts = planted["strings"] + planted["names"] + names
        for value in texts:
            assert value.encode() not in raw, f"{value!r} of {name} found in the bytes of {path}"
        for elem in [*iter_elements(ds), *iter_elements(ds.file_meta)]:
            value = str(elem.value) if elem.VR != "SQ" else ""
            if elem.VR in ("OB", "OW", "UN"):
                continue  # pixel data: covered by the byte search above
            for text in texts:
                assert text.lower() not in value.lower(), f"{text!r} in {elem} of {path}"
            assert value not in planted["uids"], f"input UID kept in {elem} of {path}"
            if elem.VR in ("DA", "DT"):
                assert value[:8] not in planted["dates"], f"an original date in {elem} of {path}"
            if elem.VR == "TM":
                assert value == "", f"a time of day kept in {elem} of {path}"
        assert not any(e.tag.is_private for e in iter_elements(ds)), f"private tag left in {path}"


def test_every_table_e1_1_attribute_is_removed_or_replaced_as_the_profile_says(release):
    seen = set()
    for path, ds in _datasets(release, "out").items():
        assert ds.PatientIdentityRemoved == "YES"
        codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
        assert codes[:2] == ["113100", "113107"]
        for elem in iter_elements(ds):
            action = TABLE_E1_1.get(elem.keyword)
            if action is None:
                continue
            seen.add(elem.keyword)
            assert elem.keyword in REPLACE, f"{elem.keyword} ({action}) should have been removed from {path}"
            kind = REPLACE[elem.keyword]
            if action == "U":
                assert kind == "uid" and str(elem.value).startswith("2.25.")
            elif "X" in action.split("/") and kind not in ("date", "datetime"):
                assert elem.value in (None, ""), f"{elem.keyword} ({action}) must be empty in {path}"
            elif action in ("Z", "X/Z") and kind == "empty":
                assert elem.value in (None, "")
            elif kind == "pseudonym":
                assert str(elem.value).startswith("ANON-")
    # the planted header had far more; what is left is what the profile keeps with new values
    assert seen <= set(REPLACE)
    assert {"PatientName", "PatientID", "StudyInstanceUID", "StudyDate"} <= seen


def test_uids_are_new_consistent_and_referenced_consistently(release, tmp_path):
    src = next(iter(sorted(release["in"].glob("*.dcm"))))
    ds = pydicom.dcmread(src)
    # a second image of the same study and series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99.1"
    ds.InstanceNumber = 2
    study = tmp_path / "in"
    study.mkdir()
    shutil.copy(src, study / "a.dcm")
    ds.save_as(study / "b.dcm")
    assert main(["anonymize", str(study), str(tmp_path / "out"), "--key", str(release["root"] / "key"),
                 "--quiet"]) == 0
    a, b = (pydicom.dcmread(_output(tmp_path / "out", n, release["root"] / "key")) for n in ("a.dcm", "b.dcm"))
    assert a.StudyInstanceUID == b.StudyInstanceUID != ds.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != ds.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    # the same input file in another batch gets the same UIDs
    first = _datasets(release, "out")[src.name]
    assert first.StudyInstanceUID == a.StudyInstanceUID and first.SOPInstanceUID == a.SOPInstanceUID


def test_dates_shift_per_patient_and_keep_intervals(release):
    by_patient: dict[str, list[tuple[dt.date, dt.date]]] = {}
    written = _datasets(release, "out")
    for name, planted in release["truth"]["files"].items():
        out = written[Path(name).name]
        before = dt.datetime.strptime(planted["study_date"], "%Y%m%d").date()
        after = dt.datetime.strptime(out.StudyDate, "%Y%m%d").date()
        assert out.SeriesDate == out.AcquisitionDate == out.ContentDate == out.StudyDate
        by_patient.setdefault(planted["patient_id"], []).append((before, after))
    assert any(len(v) > 1 for v in by_patient.values())
    shifts = set()
    for pairs in by_patient.values():
        offsets = {(after - before).days for before, after in pairs}
        assert len(offsets) == 1, "one patient's studies shifted by different amounts"
        shift = offsets.pop()
        assert shift != 0
        shifts.add(shift)
    assert len(shifts) > 1, "every patient shifted by the same amount"


def test_pseudonyms_are_stable_with_one_key_and_change_with_another(release):
    first, again, other = (_datasets(release, k, key) for k, key in (("out", "key"), ("again", "key"),
                                                                       ("other", "other_key")))
    assert first.keys() == again.keys() == other.keys()
    for name in first:
        assert first[name].PatientID == again[name].PatientID
        assert first[name].PatientID != other[name].PatientID
        assert first[name].StudyInstanceUID != other[name].StudyInstanceUID
    # one patient, one pseudonym; different patients, different pseudonyms
    truth = release["truth"]["files"]
    pairs = {(truth[f"images/{n}"]["patient_id"], ds.PatientID) for n, ds in first.items()}
    assert len({p for p, _ in pairs}) == len(pairs) == len({q for _, q in pairs})
    written = [sorted(p.relative_to(release[k]) for p in release[k].rglob("*.dcm")) for k in ("out", "again")]
    assert written[0] == written[1], "two runs with one key named their files differently"
    for name in written[0]:
        assert sha256_file(release["out"] / name) == sha256_file(release["again"] / name), \
            "two runs with one key wrote different files"


def test_pixels_keep_depth_photometric_and_values_outside_text(release):
    written = _datasets(release, "out")
    for name in sorted(release["truth"]["files"])[:6]:
        source = pydicom.dcmread(release["in"] / Path(name).name)
        out = written[Path(name).name]
        for keyword in ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "Rows", "Columns",
                        "PixelRepresentation"):
            assert out[keyword].value == source[keyword].value
        assert out.BurnedInAnnotation == "NO"
        before, after = source.pixel_array, out.pixel_array
        same = before == after
        # what differs is the blacked-out text only: dark (MONOCHROME2) or bright (MONOCHROME1) boxes
        assert same.mean() > 0.8
        display, _ = dicom_pixels(out, name)
        assert display[~same].max(initial=0.0) == 0.0


def test_manifest_records_every_file_with_hashes(release):
    entries = list(iter_manifest(release["out"]))
    key = Pseudonymizer((release["root"] / "key").read_bytes())
    assert {e["file"] for e in entries} == {key.file_name(p.name) for p in release["in"].iterdir()}
    for e in entries:
        assert e["status"] == "done"
        assert sha256_file(release["out"] / e["output"]) == e["output_sha256"]


def test_patient_numbers_are_a_keyed_permutation():
    numbers = [Pseudonymizer(b"x" * 32).patient_number(i, digits=3) for i in range(1, 1000)]
    assert sorted(numbers) == list(range(1, 1000))
    assert numbers != list(range(1, 1000))
    assert numbers != [Pseudonymizer(b"y" * 32).patient_number(i, digits=3) for i in range(1, 1000)]


def test_keep_patient_characteristics_keeps_age_and_sex(release, tmp_path):
    assert main(["anonymize", str(release["in"]), str(tmp_path / "out"), "--key", str(release["root"] / "key"),
                 "--keep-patient-characteristics", "--no-text-detection", "--quiet"]) == 0
    src = sorted(release["in"].glob("*.dcm"))[0]
    out = pydicom.dcmread(_output(tmp_path / "out", src.name, release["root"] / "key"))
    source = pydicom.dcmread(src)
    assert out.PatientSex == source.PatientSex and out.PatientAge == source.PatientAge
    assert "113108" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    # text detection did not run: the input's flag is kept, never set to NO, pixels untouched
    assert out.BurnedInAnnotation == "YES"
    assert np.array_equal(out.pixel_array, source.pixel_array)


def test_output_names_carry_nothing_of_the_input_names(release, tmp_path):
    # a publisher's export often names files and folders after the patient
    named = tmp_path / "export" / "DOE^JOHN_12345" / "20240131"
    named.mkdir(parents=True)
    for src in sorted(release["in"].glob("*.dcm"))[:2]:
        shutil.copy(src, named / f"DOE_JOHN_{src.name}")
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path / "export"), str(out), "--key", str(release["root"] / "key"),
                 "--no-text-detection", "--quiet"]) == 0
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert len([w for w in written if w.endswith(".dcm")]) == 2
    for text in ("DOE", "JOHN", "12345", "20240131"):
        assert not any(text in w for w in written), f"{text} in an output name"
        assert not any(text.encode() in (out / w).read_bytes() for w in written), f"{text} in OUT (manifest?)"
    for name in written:
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(out / name)
            assert name == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    # --keep-names keeps them, for a publisher who has checked them
    assert main(["anonymize", str(tmp_path / "export"), str(tmp_path / "kept"), "--key", str(release["root"] / "key"),
                 "--no-text-detection", "--keep-names", "--quiet"]) == 0
    assert (tmp_path / "kept" / "DOE^JOHN_12345" / "20240131").is_dir()
