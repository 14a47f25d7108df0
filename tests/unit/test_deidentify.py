"""PS3.15 Annex E Basic Profile de-identification on pydicom's sample files and a PHI-laden dataset."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from medserve.security.deid_table import TABLE, Action, resolve
from medserve.security.deidentify import IMPLEMENTATION_CLASS_UID, Deidentifier
from medserve.security.pseudonym import Pseudonymizer
from medserve.values.errors import InvalidConfig

KEY = bytes(range(32))

STUDY_UID = "1.2.826.0.1.3680043.2.1125.7.1001"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.7.1002"
SOP_UID = "1.2.826.0.1.3680043.2.1125.7.1003"
FOR_UID = "1.2.826.0.1.3680043.2.1125.7.1004"
PRIOR_SOP_UID = "1.2.826.0.1.3680043.2.1125.7.1005"
SOURCE_SOP_UID = "1.2.826.0.1.3680043.2.1125.7.1006"
PRIOR_STUDY_UID = "1.2.826.0.1.3680043.2.1125.7.1007"

GENERATED_PHI = [
    "Doe^Jane^Quinn",
    "MRN-0012345",
    "OTHER-778899",
    "19671203",
    "12 Elm Street Springfield",
    "555-0199",
    "ACC-20240511-77",
    "St Elsewhere General Hospital",
    "1 Hospital Road",
    "House^Gregory",
    "Quinn^Michaela",
    "Kildare^James",
    "Operator^Olga",
    "CTROOM7",
    "SN-4455667",
    "Jane Doe follow-up",
    "RP-99881",
    "Jane Doe private copy",
    "Jane Doe in a private nested tag",
    "Jane Doe overlay note",
    "20240511",
    "093015",
    "20231224",
    "Radiology Dept 4",
]
GENERATED_UIDS = [STUDY_UID, SERIES_UID, SOP_UID, FOR_UID, PRIOR_SOP_UID, SOURCE_SOP_UID, PRIOR_STUDY_UID]


def sample(name: str) -> Dataset:
    return dcmread(str(get_testdata_file(name, download=False)))


def written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(written(ds)))


def item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def generated(sop_uid: str = SOP_UID) -> Dataset:
    """A CT-like instance with PHI at the top level, in nested sequences and in private tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "CTROOM7"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FOR_UID
    ds.StudyDate = "20240511"
    ds.StudyTime = "093015"
    ds.SeriesDate = "20240511"
    ds.ContentDate = "20240511"
    ds.AcquisitionDateTime = "20240511093015"
    ds.DateOfLastCalibration = "20231224"  # not in the table: handled by its VR
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.PatientName = "Doe^Jane^Quinn"
    ds.PatientID = "MRN-0012345"
    ds.PatientBirthDate = "19671203"
    ds.PatientSex = "F"
    ds.PatientAge = "056Y"
    ds.PatientAddress = "12 Elm Street Springfield"
    ds.PatientTelephoneNumbers = "555-0199"
    ds.OtherPatientIDsSequence = Sequence([item(PatientID="OTHER-778899", TypeOfPatientID="TEXT")])
    ds.AccessionNumber = "ACC-20240511-77"
    ds.InstitutionName = "St Elsewhere General Hospital"
    ds.InstitutionAddress = "1 Hospital Road"
    ds.InstitutionalDepartmentName = "Radiology Dept 4"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PerformingPhysicianName = "Quinn^Michaela"
    ds.NameOfPhysiciansReadingStudy = "Kildare^James"
    ds.OperatorsName = "Operator^Olga"
    ds.StationName = "CTROOM7"
    ds.DeviceSerialNumber = "SN-4455667"
    ds.StudyDescription = "CT chest Jane Doe follow-up"
    ds.StudyID = "S-1"
    ds.RequestAttributesSequence = Sequence([item(RequestedProcedureID="RP-99881")])
    ds.ReferencedStudySequence = Sequence(
        [item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=PRIOR_STUDY_UID)]
    )
    ds.ReferencedImageSequence = Sequence(
        [item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=PRIOR_SOP_UID)]
    )
    ds.SourceImageSequence = Sequence(
        [item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=SOURCE_SOP_UID)]
    )
    nested = item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=PRIOR_SOP_UID)
    nested.PatientName = "Doe^Jane^Quinn"  # misplaced PHI two levels down
    block = nested.private_block(0x0011, "ACME NESTED", create=True)
    block.add_new(0x01, "LO", "Jane Doe in a private nested tag")
    ds.ReferencedSeriesSequence = Sequence(  # not in the table: kept, its items de-identified
        [item(SeriesInstanceUID=SERIES_UID, ReferencedInstanceSequence=Sequence([nested]))]
    )
    ds.private_block(0x0009, "ACME PHI", create=True).add_new(0x01, "LO", "Jane Doe private copy")
    ds.add_new(0x60000010, "US", 8)  # overlay rows
    ds.add_new(0x60000011, "US", 8)  # overlay columns
    ds.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data
    ds.add_new(0x60004000, "LT", "Jane Doe overlay note")  # overlay comments
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


def deidentifier(retain_uids: bool = False, retain_dates: bool = False) -> Deidentifier:
    return Deidentifier(Pseudonymizer(KEY), retain_uids=retain_uids, retain_dates=retain_dates)


def assert_absent(data: bytes, values: list[str]) -> None:
    leaked = [value for value in values if value.encode("latin-1") in data]
    assert not leaked, f"PHI left in the output: {leaked}"


def has_private(ds: Dataset) -> bool:
    found = False

    def visit(_: Dataset, elem: DataElement) -> None:
        nonlocal found
        found = found or elem.tag.is_private

    ds.walk(visit)
    return found


def test_generated_dataset_leaves_no_phi_in_the_written_bytes() -> None:
    original = generated()
    data = written(deidentifier().apply(original))
    assert_absent(data, GENERATED_PHI + GENERATED_UIDS)
    back = dcmread(io.BytesIO(data))
    assert not has_private(back)
    assert not any(elem.tag.group == 0x6000 for elem in back)


def test_nested_uids_map_like_the_top_level() -> None:
    p = Pseudonymizer(KEY)
    out = reread(deidentifier().apply(generated()))
    assert out.SeriesInstanceUID == p.uid(SERIES_UID)
    series_item = out.ReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID == out.SeriesInstanceUID
    instance_item = series_item.ReferencedInstanceSequence[0]
    assert instance_item.ReferencedSOPInstanceUID == p.uid(PRIOR_SOP_UID)
    assert instance_item.ReferencedSOPClassUID == CTImageStorage  # class UIDs are not identifying
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == p.uid(PRIOR_SOP_UID)
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == p.uid(SOURCE_SOP_UID)
    assert instance_item.PatientName != "Doe^Jane^Quinn"


def test_profile_actions_on_generated_dataset() -> None:
    out = reread(deidentifier().apply(generated()))
    assert out.AccessionNumber == "" and out.StudyID == "" and out.ReferringPhysicianName == ""  # Z
    assert out.PatientBirthDate == "" and out.PatientSex == "" and out.StudyDate == ""  # Z
    for removed in ("PatientAddress", "PatientAge", "OtherPatientIDsSequence", "InstitutionAddress"):
        assert removed not in out  # X
    assert "RequestAttributesSequence" not in out and "PerformingPhysicianName" not in out
    assert "StudyDescription" not in out and "InstitutionalDepartmentName" not in out
    assert out.InstitutionName == "ANONYMIZED" and out.StationName == "ANONYMIZED"  # X/Z/D -> D
    assert out.SeriesDate == "19000101"  # X/D -> D
    assert out.ReferencedStudySequence == Sequence()  # X/Z on a sequence -> no items
    assert out.DateOfLastCalibration == "19000101"  # unlisted date: dummy by VR
    assert out.Manufacturer == "ACME" and out.Modality == "CT"  # not in the table: kept


def test_sample_files_leave_no_phi_and_read_back() -> None:
    for name, phi in (
        ("CT_small.dcm", ["CompressedSamples^CT1", "1CT1", "JFK IMAGING CENTER", "CT01_OC0", "20040119"]),
        ("MR_small.dcm", ["CompressedSamples^MR1", "4MR1", "20040826", "CLUNIE1"]),
    ):
        original = sample(name)
        uids = [
            str(original.StudyInstanceUID),
            str(original.SeriesInstanceUID),
            str(original.SOPInstanceUID),
            str(original.FrameOfReferenceUID),
            str(original.InstanceCreatorUID),
        ]
        data = written(deidentifier().apply(original))
        assert_absent(data, phi + uids)
        back = dcmread(io.BytesIO(data))
        assert not has_private(back)
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert back.preamble == b"\x00" * 128


def test_pixel_data_unchanged() -> None:
    for original in (sample("CT_small.dcm"), sample("MR_small.dcm"), generated()):
        out = reread(deidentifier().apply(original))
        assert out.PixelData == original.PixelData
    ct = sample("CT_small.dcm")
    assert np.array_equal(reread(deidentifier().apply(ct)).pixel_array, ct.pixel_array)


def test_input_is_not_mutated() -> None:
    original = generated()
    before = copy.deepcopy(original)
    deidentifier().apply(original)
    assert original == before
    assert original.file_meta == before.file_meta
    ct = sample("CT_small.dcm")
    ct_before = copy.deepcopy(ct)
    deidentifier().apply(ct)
    assert ct == ct_before and ct.file_meta == ct_before.file_meta


def test_same_study_and_patient_map_consistently_across_instances_and_runs() -> None:
    first = reread(deidentifier().apply(generated(SOP_UID)))
    second = reread(deidentifier().apply(generated("1.2.826.0.1.3680043.2.1125.7.2003")))
    assert first.StudyInstanceUID == second.StudyInstanceUID != STUDY_UID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.PatientID == second.PatientID == str(first.PatientName)
    assert str(first.PatientID).startswith("ANON-") and len(first.PatientID) == len("ANON-") + 12
    other_key = Deidentifier(Pseudonymizer(bytes(32))).apply(generated())
    assert other_key.StudyInstanceUID != first.StudyInstanceUID
    assert other_key.PatientID != first.PatientID


def test_same_patient_same_pseudonym_across_studies() -> None:
    a = generated()
    b = generated("1.2.826.0.1.3680043.2.1125.8.3")
    b.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.8.1"
    b.PatientName = "DOE^JANE"  # spelled differently; the Patient ID decides
    out_a, out_b = deidentifier().apply(a), deidentifier().apply(b)
    assert out_a.PatientID == out_b.PatientID
    assert out_a.StudyInstanceUID != out_b.StudyInstanceUID
    c = generated()
    c.PatientID = "MRN-9999999"
    assert deidentifier().apply(c).PatientID != out_a.PatientID


def test_patient_without_id_is_keyed_on_the_name() -> None:
    ds = generated()
    ds.PatientID = ""
    out = deidentifier().apply(ds)
    assert out.PatientID == deidentifier().patient_pseudonym("Doe^Jane^Quinn")


def test_prefix_is_configurable_and_checked() -> None:
    out = Deidentifier(Pseudonymizer(KEY), patient_id_prefix="TRIAL7").apply(generated())
    assert str(out.PatientID).startswith("TRIAL7-")
    for bad in ("", "A^B", "x" * 40, "é"):
        with pytest.raises(InvalidConfig):
            Deidentifier(Pseudonymizer(KEY), patient_id_prefix=bad)


def test_retain_uids_option() -> None:
    original = generated()
    data = written(deidentifier(retain_uids=True).apply(original))
    assert_absent(data, [v for v in GENERATED_PHI])
    out = dcmread(io.BytesIO(data))
    assert out.StudyInstanceUID == STUDY_UID and out.SOPInstanceUID == SOP_UID
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == PRIOR_SOP_UID
    assert out.file_meta.MediaStorageSOPInstanceUID == SOP_UID
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113110"]
    assert "Retain UIDs Option" in list(out.DeidentificationMethod)


def test_retain_dates_option() -> None:
    out = reread(deidentifier(retain_dates=True).apply(generated()))
    assert out.StudyDate == "20240511" and out.StudyTime == "093015" and out.SeriesDate == "20240511"
    assert out.AcquisitionDateTime == "20240511093015" and out.DateOfLastCalibration == "20231224"
    assert out.PatientBirthDate == ""  # dates the patient, not the events
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106"]
    assert out.StudyInstanceUID != STUDY_UID


def test_markers_and_code_sequence() -> None:
    out = reread(deidentifier(retain_uids=True, retain_dates=True).apply(sample("CT_small.dcm")))
    assert out.PatientIdentityRemoved == "YES"
    assert list(out.DeidentificationMethod) == [
        "Basic Application Confidentiality Profile",
        "Retain UIDs Option",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ]
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113110", "DCM"), ("113106", "DCM")]
    plain = reread(deidentifier().apply(sample("CT_small.dcm")))
    assert [i.CodeValue for i in plain.DeidentificationMethodCodeSequence] == ["113100"]
    assert plain.LongitudinalTemporalInformationModified == "REMOVED"


def test_dataset_without_file_meta_gets_one() -> None:
    ds = generated()
    del ds.file_meta
    out = reread(deidentifier().apply(ds))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_compound_action_resolution() -> None:
    assert resolve("Z/D", False) is Action.DUMMY
    assert resolve("X/Z", False) is Action.ZERO
    assert resolve("X/D", False) is Action.DUMMY
    assert resolve("X/Z/D", False) is Action.DUMMY
    assert resolve("X/Z/D", True) is Action.ZERO
    assert resolve("X/Z/U*", True) is Action.CLEAN_ITEMS
    assert resolve("D", True) is Action.ZERO
    assert resolve("U", False) is Action.UID
    assert len(TABLE) > 250
