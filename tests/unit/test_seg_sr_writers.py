"""SEG and SR writers: synthetic CT and CR studies in, DICOM out, read back with pydicom and highdicom."""

from __future__ import annotations

import copy
from dataclasses import replace
from io import BytesIO
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medserve.clinical.dicom.images import FrameRef, Frames, Volume
from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult, Lesion, Segment
from medserve.clinical.dicom.seg_writer import segment_numbers, write_seg
from medserve.clinical.dicom.sr_writer import PRIVATE_SCHEME, write_sr
from medserve.clinical.fhir_report import diagnostic_report

DIGEST = "3f" * 32
SLICES = 12
SLICE_SPACING = 2.5
LIVER = Segment(label=1, name="Liver lesion")
CYST = Segment(label=3, name="Cyst", property_type=("27925004", "SCT", "Nodule"))


def _algorithm(research_use: bool = True) -> Algorithm:
    return Algorithm(name="lesion_seg", version="4", digest=DIGEST, research_use=research_use)


def _ct_series(slices: int = SLICES) -> list[Dataset]:
    """``slices`` headers (no PixelData) of one synthetic CT series, ``SLICE_SPACING`` mm apart."""
    base = pydicom.dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    del base.PixelData
    series_uid, x, y, z = generate_uid(), *map(float, base.ImagePositionPatient)
    headers: list[Dataset] = []
    for k in range(slices):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, z + SLICE_SPACING * k]
        ds.SliceThickness = SLICE_SPACING
        headers.append(ds)
    return headers


def _sphere(
    shape: tuple[int, int, int], centre: tuple[int, int, int], radius_mm: float, spacing: np.ndarray
) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    distance = np.linalg.norm((grid - np.asarray(centre)) * spacing, axis=-1)
    inside: np.ndarray = distance <= radius_mm
    return inside


def ct_result(*, empty: bool = False, research_use: bool = True) -> ImagingResult:
    """A CT segmentation result: two spheres labelled ``LIVER`` and a described but absent ``CYST``."""
    sources = _ct_series()
    first = sources[0]
    row, column = map(float, first.PixelSpacing)
    spacing = (SLICE_SPACING, row, column)
    shape = (SLICES, int(first.Rows), int(first.Columns))
    label_map = np.zeros(shape, dtype=np.uint8)
    lesions: list[Lesion] = []
    volume = Volume(
        array=np.zeros(shape, dtype=np.float32),
        spacing=spacing,
        origin=tuple(map(float, first.ImagePositionPatient)),  # type: ignore[arg-type]
        direction=np.eye(3),
        sources=tuple(sources),
        modality="CT",
    )
    if not empty:
        for number, centre in enumerate([(4, 40, 40), (7, 90, 85)], start=1):
            mask = _sphere(shape, centre, 6.0 + 2 * number, np.asarray(spacing))
            label_map[mask] = LIVER.label
            voxels = int(mask.sum())
            lesions.append(
                Lesion(
                    number=number,
                    segment=LIVER.label,
                    voxels=voxels,
                    volume_ml=voxels * volume.voxel_volume_ml,
                    centroid_voxel=tuple(float(v) for v in centre),  # type: ignore[arg-type]
                    centroid_patient=(0.0, 0.0, 0.0),
                    max_diameter_mm=2 * (6.0 + 2 * number),
                )
            )
    return ImagingResult(
        pipeline="ct_lesions",
        algorithm=_algorithm(research_use),
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        volume=volume,
        segments=(LIVER, CYST),
        label_map=label_map,
        lesions=tuple(lesions),
    )


def _cr_image(orientation: bool = True) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "SYNTHETIC^TEST"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 256
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagerPixelSpacing = [0.7, 0.7]
    ds.PatientOrientation = ["L", "F"] if orientation else ""
    return ds


def cr_result(research_use: bool = True, orientation: bool = True) -> ImagingResult:
    """A chest radiograph classified for three findings, one of them above its threshold."""
    image = _cr_image(orientation)
    frames = Frames(
        array=np.zeros((1, 256, 256), dtype=np.float32),
        refs=(FrameRef(image.SOPInstanceUID),),
        sources=(image,),
        pixel_spacing=(0.7, 0.7),
        modality="CR",
    )
    findings = (
        Finding("Pneumothorax", probability=0.91, threshold=0.5),
        Finding("Atelectasis", probability=0.12, threshold=0.4),
        Finding("Pleural_Thickening", probability=0.55, threshold=0.6),
    )
    return ImagingResult(
        pipeline="chest_xray",
        algorithm=Algorithm(
            name="chest_xray_classifier", version="1", digest=DIGEST, research_use=research_use
        ),
        study_instance_uid=image.StudyInstanceUID,
        series_instance_uid=image.SeriesInstanceUID,
        frames=frames,
        findings=findings,
    )


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    back = pydicom.dcmread(buffer)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    return back


def _seg_back(result: ImagingResult) -> hd.seg.Segmentation:
    return hd.seg.Segmentation.from_dataset(_roundtrip(write_seg(result)))


# --- SEG -----------------------------------------------------------------------------------------


def test_seg_from_headers_without_pixel_data_references_the_source_series() -> None:
    result = ct_result()
    assert result.volume is not None
    assert all("PixelData" not in ds for ds in result.volume.sources)
    seg = _seg_back(result)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # BINARY: Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == result.study_instance_uid
    assert seg.FrameOfReferenceUID == result.volume.sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != result.series_instance_uid
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    assert referenced == {ds.SOPInstanceUID for ds in result.volume.sources}
    assert {uids[1] for uids in seg.get_source_image_uids()} == {result.series_instance_uid}


def test_seg_segments_pixels_and_algorithm() -> None:
    result = ct_result()
    assert result.volume is not None and result.label_map is not None
    seg = _seg_back(result)
    assert segment_numbers(result) == {1: 1, 3: 2}
    assert seg.get_segment_numbers() == [1, 2]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Liver lesion", "Cyst"]
    description = seg.get_segment_description(2)
    assert description.segmented_property_type.value == "27925004"
    assert description.algorithm_identification is not None
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "lesion_seg"
    assert algorithm.AlgorithmVersion == "4"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
    assert algorithm.AlgorithmParameters == f"model_sha256={DIGEST}"
    assert seg.ManufacturerModelName == "lesion_seg"
    assert seg.DeviceSerialNumber == DIGEST

    uids = [ds.SOPInstanceUID for ds in result.volume.sources]
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True, dtype=np.uint8
    )
    assert np.array_equal(pixels, result.label_map)  # label 1 is segment 1; no voxel carries label 3
    for lesion in result.lesions:
        assert lesion.volume_ml == pytest.approx(lesion.voxels * result.volume.voxel_volume_ml)
    # Only frames with content are stored: the two spheres, segment 1 only.
    assert seg.NumberOfFrames == int(result.label_map.any(axis=(1, 2)).sum())


def test_seg_marks_research_use() -> None:
    seg = _seg_back(ct_result())
    assert seg.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert len(seg.SeriesDescription) <= 64
    assert seg.ContentDescription.startswith("RESEARCH USE ONLY")
    assert seg.ContentQualification == "RESEARCH"
    assert seg.ImageComments.startswith("RESEARCH USE ONLY")
    assert f"sha256:{DIGEST}" in seg.ImageComments

    clinical = _seg_back(ct_result(research_use=False))
    assert "RESEARCH" not in clinical.SeriesDescription
    assert "ContentQualification" not in clinical
    assert "RESEARCH" not in clinical.ImageComments


def test_empty_label_map_gives_a_small_valid_seg() -> None:
    result = ct_result(empty=True)
    assert result.volume is not None
    seg = _seg_back(result)
    assert seg.NumberOfFrames == 2  # one empty frame per segment
    assert seg.get_segment_numbers() == [1, 2]
    uids = [ds.SOPInstanceUID for ds in result.volume.sources]
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert pixels.shape == (SLICES, 128, 128) and not pixels.any()
    assert {uids[2] for uids in seg.get_source_image_uids()} == set(uids)


def test_seg_refuses_inconsistent_results() -> None:
    result = ct_result()
    assert result.label_map is not None
    with pytest.raises(ValueError, match="does not describe"):
        write_seg(replace(result, segments=(CYST,)))
    with pytest.raises(ValueError, match="shape"):
        write_seg(replace(result, label_map=result.label_map[:-1]))
    with pytest.raises(ValueError, match="volume and a label_map"):
        write_seg(replace(result, label_map=None))
    with pytest.raises(ValueError, match="at least one segment"):
        write_seg(replace(result, segments=(), label_map=np.zeros_like(result.label_map)))
    with pytest.raises(ValueError, match="another study"):
        write_seg(replace(result, study_instance_uid=generate_uid()))
    with pytest.raises(ValueError, match="sha256"):
        write_seg(replace(result, algorithm=Algorithm(name="x", version="1", digest="not-a-digest")))


# --- SR ------------------------------------------------------------------------------------------


def _sr_back(result: ImagingResult, seg: Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    back = _roundtrip(write_sr(result, seg=seg))
    return hd.sr.Comprehensive3DSR.from_dataset(back)


def _content(sr: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    return cast(hd.sr.MeasurementReport, sr.content)


def _evidence(sr: Dataset) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for study in sr.CurrentRequestedProcedureEvidenceSequence:
        assert study.StudyInstanceUID == sr.StudyInstanceUID
        for series in study.ReferencedSeriesSequence:
            uids = {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence}
            found.setdefault(series.SeriesInstanceUID, set()).update(uids)
    return found


def _device(sr: hd.sr.Comprehensive3DSR) -> hd.sr.DeviceObserverIdentifyingAttributes:
    [observer] = _content(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    return attributes


def test_sr_for_segmentation_references_seg_segments_and_lesion_volumes() -> None:
    result = ct_result()
    assert result.volume is not None
    seg = write_seg(result)
    sr = _sr_back(result, seg)
    assert sr.StudyInstanceUID == result.study_instance_uid
    assert sr.PatientID == result.volume.sources[0].PatientID
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    evidence = _evidence(sr)
    assert evidence[result.series_instance_uid] == {ds.SOPInstanceUID for ds in result.volume.sources}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}

    device = _device(sr)
    assert device.model_name == "lesion_seg"
    assert device.name == "lesion_seg version 4"
    assert device.manufacturer_name == "medserve"
    assert device.serial_number == f"sha256:{DIGEST}"

    groups = _content(sr).get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "Liver lesion",
        "Lesion 1 (Liver lesion)",
        "Lesion 2 (Liver lesion)",
        "Cyst",
    ]
    for group in groups:
        assert group.referenced_segment is not None
        [item] = [node for node in group.referenced_segment if node.ValueType == "IMAGE"]
        reference = item.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        segment = 2 if group.tracking_identifier == "Cyst" else 1
        assert reference.ReferencedSegmentNumber == segment
        [source] = [node for node in group.referenced_segment if node.ValueType == "UIDREF"]
        assert result.series_instance_uid == source.UID
        # TID 4019 Algorithm Identification, with the digest as a parameter, is in every group.
        assert any(getattr(node, "TextValue", "") == f"sha256:{DIGEST}" for node in _walk(group))

    def measured(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations, code: object) -> float:
        [measurement] = group.get_measurements(name=code)  # type: ignore[arg-type]
        return float(measurement.value)

    liver, first, second, cyst = groups
    assert measured(liver, codes.SCT.NumberOfLesions) == 2
    assert measured(cyst, codes.SCT.NumberOfLesions) == 0
    for group, lesion in zip((first, second), result.lesions):
        assert measured(group, codes.SCT.Volume) == pytest.approx(lesion.volume_ml)
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        assert volume.unit.value == "ml"
        assert measured(group, codes.SCT.Diameter) == pytest.approx(lesion.max_diameter_mm)
    total = sum(lesion.volume_ml for lesion in result.lesions)
    assert measured(liver, codes.SCT.Volume) == pytest.approx(total)
    assert sr.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert sr.ContentQualification == "RESEARCH"


def _libraries(sr: Dataset) -> list[Dataset]:
    """The Image Library containers (DCM 111028) of an SR."""
    return [
        node
        for node in _walk(sr.ContentSequence)
        if node.ConceptNameCodeSequence[0].get("CodeValue") == "111028"
    ]


def _walk(items: object) -> list[Dataset]:
    found: list[Dataset] = []
    for item in items:  # type: ignore[attr-defined]
        found.append(item)
        found.extend(_walk(item.get("ContentSequence", [])))
    return found


def test_sr_without_seg_uses_image_level_groups_on_the_centroid_slice() -> None:
    result = ct_result()
    assert result.volume is not None
    sr = _sr_back(result)
    assert not _content(sr).get_volumetric_roi_measurement_groups()
    groups = _content(sr).get_image_measurement_groups()
    assert len(groups) == 4
    lesion_group = groups[1]
    slice_uid = result.volume.sources[4].SOPInstanceUID  # lesion 1 is centred on slice 4
    texts = [node for node in _walk(lesion_group) if node.ValueType == "IMAGE"]
    assert [node.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for node in texts] == [slice_uid]


def test_sr_for_classification_has_probabilities_and_presence() -> None:
    result = cr_result()
    assert result.frames is not None
    image = result.frames.sources[0]
    sr = _sr_back(result)
    assert sr.StudyInstanceUID == result.study_instance_uid
    assert _evidence(sr) == {result.series_instance_uid: {image.SOPInstanceUID}}
    library = _libraries(sr)
    assert library, "the report has an Image Library"
    groups = _content(sr).get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Pneumothorax", "Atelectasis", "Pleural_Thickening"]
    for group, finding in zip(groups, result.findings):
        [probability] = group.get_measurements(name=codes.DCM.Probability)
        assert float(probability.value) == pytest.approx(finding.probability)
        assert probability.unit.value == "1"
        [referenced] = probability.referenced_images
        assert referenced.referenced_sop_instance_uid == image.SOPInstanceUID
        [evaluation] = group.get_qualitative_evaluations()
        expected = codes.SCT.Present if finding.present else codes.SCT.Absent
        assert evaluation.value == expected
        assert evaluation.name == group.finding_type
    pneumothorax, atelectasis = groups[0].finding_type, groups[1].finding_type
    assert pneumothorax is not None and pneumothorax.value == "36118008"  # SNOMED CT Pneumothorax
    assert atelectasis is not None and atelectasis.scheme_designator == PRIVATE_SCHEME
    assert sr.CodingSchemeIdentificationSequence[-1].CodingSchemeDesignator == PRIVATE_SCHEME
    assert _device(sr).serial_number == f"sha256:{DIGEST}"
    assert sr.SeriesDescription == "RESEARCH USE ONLY AI SR chest_xray_classifier 1"
    assert "RESEARCH" not in _sr_back(cr_result(research_use=False)).SeriesDescription


def _library_descriptors(sr: Dataset) -> set[str]:
    [library] = _libraries(sr)
    return {node.ConceptNameCodeSequence[0].CodeMeaning for node in _walk(library.ContentSequence)}


def test_image_library_describes_projection_images_when_their_header_allows() -> None:
    full = _library_descriptors(_sr_back(cr_result()))
    assert {"Modality", "Patient Orientation Row", "Horizontal Pixel Spacing"} <= full
    # An empty PatientOrientation (type 2) leaves only the descriptors every image has.
    bare = _library_descriptors(_sr_back(cr_result(orientation=False)))
    assert "Modality" in bare and "Pixel Data Rows" in bare
    assert "Patient Orientation Row" not in bare


def test_sr_tracking_uids_match_the_fhir_observation_identifiers() -> None:
    result = ct_result()
    seg = write_seg(result)
    sr = write_sr(result, seg=seg)
    bundle = diagnostic_report(result, sr_uid=sr.SOPInstanceUID, seg_uid=seg.SOPInstanceUID)
    observations = {
        entry["resource"]["identifier"][0]["value"].removeprefix("urn:oid:")
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "Observation"
    }
    tracked = {
        g.tracking_uid
        for g in _content(hd.sr.Comprehensive3DSR.from_dataset(sr)).get_volumetric_roi_measurement_groups()
    }
    assert tracked == observations
    [report] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["identifier"][0]["value"] == f"urn:oid:{sr.SOPInstanceUID}"


def test_sr_for_a_series_level_finding_of_a_volume() -> None:
    result = replace(ct_result(), findings=(Finding("Mass", probability=0.8, threshold=0.5),))
    sr = _sr_back(result)
    [finding, *segments] = _content(sr).get_image_measurement_groups()
    assert finding.tracking_identifier == "Mass" and len(segments) == 4
    [probability] = finding.get_measurements(name=codes.DCM.Probability)
    assert float(probability.value) == pytest.approx(0.8) and not probability.referenced_images
    assert not _libraries(sr)


def test_sr_refuses_results_without_images() -> None:
    result = cr_result()
    with pytest.raises(ValueError, match="volume or frames"):
        write_sr(replace(result, frames=None))
    bad = replace(result, findings=(Finding("Mass", 0.9, 0.5, frame=3),))
    with pytest.raises(ValueError, match="frame 3"):
        write_sr(bad)
