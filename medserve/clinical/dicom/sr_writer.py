"""An imaging result as a DICOM Comprehensive 3D SR: a TID 1500 Measurement Report, as IHE AIR asks.

Layout of the report (highdicom's TID 1500 classes):

- **Observation context**: a DEVICE observer (TID 1004) for the model: Device Observer UID derived
  from the artifact digest (the same model always has the same UID), name "<name> version
  <version>", manufacturer, model name = the model name and **serial number ``sha256:<hex>``**, the
  artifact digest. Every measurement group also carries TID 4019 Algorithm Identification (name,
  version, parameters ``sha256:<hex>`` and, for classifiers, ``threshold=<t>``).
- **Segmentation results** (``result.label_map``): per segment, a volumetric group (TID 1411) with
  the number of lesions (SCT 246206008, ``{lesions}``) and the segment's total volume; per lesion,
  a volumetric group with its volume (SCT 118565006, UCUM ``ml``) and, when known, its maximum
  diameter (``mm``). With a SEG, the groups reference its segment (and the source series); without
  one, lesions become image-level groups (TID 1501) referencing the slice of their centroid. A
  segment may hold several lesions and SEG segments cannot tell them apart, so a lesion group names
  its segment, not its voxels; its Tracking Identifier is "Lesion <n> (<segment>)".
- **Classification results** (``result.findings``): an Image Library of the source images and per
  finding an image-level group (TID 1501): finding type = the finding, measurement "Probability"
  (DCM 122157, UCUM ``1``) referencing the source image and frame, and a qualitative evaluation
  Present / Absent at the model's threshold.
- Tracking UIDs come from ``medserve.clinical.fhir_report.tracking_uid``, so FHIR Observations carry
  the same UIDs. Labels without a SNOMED CT code are coded in the private scheme ``99MEDSERVE``,
  declared in the Coding Scheme Identification Sequence.
- The SR joins the source study, records the sources (and the SEG) as evidence, and is PARTIAL,
  UNVERIFIED and PRELIMINARY: nobody has confirmed it. Research use is marked in SeriesDescription
  and Content Qualification RESEARCH, as in the SEG.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import medserve
from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult, Lesion, Segment
from medserve.clinical.dicom.seg_writer import segment_numbers, series_description
from medserve.clinical.dicom.sr_document import comprehensive_3d_sr
from medserve.clinical.fhir_report import finding_label_code, finding_snomed, model_digest, tracking_uid

SR_SERIES_NUMBER = 9002
PRIVATE_SCHEME = "99MEDSERVE"

ML = Code("ml", "UCUM", "milliliter")
MM = Code("mm", "UCUM", "millimeter")
NO_UNITS = Code("1", "UCUM", "no units")
LESIONS = Code("{lesions}", "UCUM", "lesions")

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)

_PROCEDURES = {
    "CT": codes.SCT.ComputedTomography,
    "CR": codes.SCT.PlainRadiography,
    "DX": codes.SCT.PlainRadiography,
    "US": codes.SCT.Ultrasonography,
    "MG": codes.SCT.Mammography,
}


def finding_concept(label: str) -> Code:
    """The coded concept of a classification label: SNOMED CT when known, else ``99MEDSERVE``."""
    snomed = finding_snomed(label)
    if snomed is not None:
        return Code(snomed[0], "SCT", snomed[1])
    value, meaning = finding_label_code(label)
    return Code(value, PRIVATE_SCHEME, meaning)


# The model's parts of a report are the same in every report of the model: built once and shared, as
# highdicom shares the items of one template across the groups given it (nothing changes them).
@functools.lru_cache(maxsize=64)
def _device_observer_of(algorithm: Algorithm, manufacturer: str) -> hd.sr.ObserverContext:
    digest = model_digest(algorithm)
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["medserve device observer", digest]),
            name=f"{algorithm.name} version {algorithm.version}",
            manufacturer_name=manufacturer,
            model_name=algorithm.name,
            serial_number=f"sha256:{digest}",
        ),
    )


def _device_observer(result: ImagingResult, manufacturer: str) -> hd.sr.ObserverContext:
    return _device_observer_of(result.algorithm, manufacturer)


@functools.lru_cache(maxsize=256)
def _algorithm_id_of(algorithm: Algorithm, parameters: tuple[str, ...]) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"sha256:{model_digest(algorithm)}", *parameters],
    )


def _algorithm_id(result: ImagingResult, *parameters: str) -> hd.sr.AlgorithmIdentification:
    return _algorithm_id_of(result.algorithm, parameters)


def _tracking(result: ImagingResult, kind: str, number: int, identifier: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=tracking_uid(result, kind, number), identifier=identifier)


class _Groups:
    """Builds the measurement groups of one segmentation result; shared arguments live here."""

    def __init__(self, result: ImagingResult, seg: Dataset | None) -> None:
        self.result = result
        self.seg = seg
        self.sources = result.volume.sources if result.volume is not None else ()
        self.algorithm_id = _algorithm_id(result)

    def volumetric(
        self,
        tracking: hd.sr.TrackingIdentifier,
        segment: Segment,
        number: int,
        measurements: list[hd.sr.Measurement],
        lesion: Lesion | None = None,
    ) -> Group:
        """A TID 1411 group referencing SEG segment ``number``, or without a SEG a TID 1501 group."""
        if self.seg is None:
            return hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=Code(*segment.property_type),
                finding_category=Code(*segment.category),
                algorithm_id=self.algorithm_id,
                measurements=measurements,
                source_images=self._centroid_image(lesion) if lesion is not None else None,
            )
        # The segment number alone: a Referenced Segment item carrying both ReferencedSegmentNumber
        # and ReferencedFrameNumber is invalid (PS3.3 Image SOP Instance Reference Macro as used by
        # TID 1411), and the SEG's frames of a segment follow from its number.
        reference = hd.sr.ReferencedSegment(
            sop_class_uid=self.seg.SOPClassUID,
            sop_instance_uid=self.seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(self.result.series_instance_uid),
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=reference,
            finding_type=Code(*segment.property_type),
            finding_category=Code(*segment.category),
            algorithm_id=self.algorithm_id,
            measurements=measurements,
        )

    def _centroid_image(self, lesion: Lesion) -> list[hd.sr.SourceImageForMeasurementGroup]:
        if not self.sources:
            raise ValueError("lesions need the result's volume and its source headers")
        index = min(max(round(lesion.centroid_voxel[0]), 0), len(self.sources) - 1)
        return [hd.sr.SourceImageForMeasurementGroup.from_source_image(self.sources[index])]


def _segment_groups(result: ImagingResult, seg: Dataset | None) -> list[Group]:
    numbers = segment_numbers(result)
    orphans = sorted({lesion.segment for lesion in result.lesions} - numbers.keys())
    if orphans:
        raise ValueError(f"lesions refer to segment labels {orphans} that result.segments does not describe")
    groups: list[Group] = []
    builder = _Groups(result, seg)
    for segment in result.segments:
        number = numbers[segment.label]
        lesions = [lesion for lesion in result.lesions if lesion.segment == segment.label]
        total = hd.sr.Measurement(name=codes.SCT.Volume, value=sum(x.volume_ml for x in lesions), unit=ML)
        count = hd.sr.Measurement(name=codes.SCT.NumberOfLesions, value=len(lesions), unit=LESIONS)
        tracking = _tracking(result, "segment", segment.label, segment.name)
        groups.append(builder.volumetric(tracking, segment, number, [count, total]))
        for lesion in lesions:
            measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=lesion.volume_ml, unit=ML)]
            if lesion.max_diameter_mm > 0:
                diameter = hd.sr.Measurement(name=codes.SCT.Diameter, value=lesion.max_diameter_mm, unit=MM)
                measurements.append(diameter)
            kind = f"segment-{segment.label}-lesion"
            tracking = _tracking(result, kind, lesion.number, f"Lesion {lesion.number} ({segment.name})")
            groups.append(builder.volumetric(tracking, segment, number, measurements, lesion))
    return groups


def _finding_image(result: ImagingResult, finding: Finding) -> tuple[Dataset | None, list[int] | None]:
    """The source image (and frame numbers, for multi-frame images) a 2D finding was made on.

    A finding of a 3D result (a volume, no frames) concerns the whole series: no image is returned,
    and the finding is referenced through the SR's evidence only.
    """
    frames = result.frames
    if frames is None:
        return None, None
    if not 0 <= finding.frame < len(frames.refs):
        raise ValueError(f"finding {finding.label!r} refers to frame {finding.frame}, which the result lacks")
    ref = frames.refs[finding.frame]
    image = next((ds for ds in frames.sources if ds.SOPInstanceUID == ref.sop_instance_uid), None)
    if image is None:
        raise ValueError(f"no source header for SOP instance {ref.sop_instance_uid}")
    multi_frame = int(image.get("NumberOfFrames", 1) or 1) > 1
    return image, [ref.frame_number] if multi_frame else None


def _finding_group(
    result: ImagingResult, index: int, finding: Finding, explanation: Dataset | None = None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    image, frame_numbers = _finding_image(result, finding)
    concept = finding_concept(finding.label)
    probability = hd.sr.Measurement(
        name=codes.DCM.Probability,
        value=finding.probability,
        unit=NO_UNITS,
        referenced_images=(
            [hd.sr.SourceImageForMeasurement.from_source_image(image, frame_numbers)] if image else None
        ),
    )
    verdict = codes.SCT.Present if finding.present else codes.SCT.Absent
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(image, frame_numbers)] if image else []
    if explanation is not None:  # the finding's explanation map, as a further source image
        sources.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(explanation))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(result, "finding", index, finding.label),
        finding_type=concept,
        algorithm_id=_algorithm_id(result, f"threshold={finding.threshold:g}"),
        measurements=[probability],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=concept, value=verdict)],
        source_images=sources or None,
    )


_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
_CROSS_SECTIONAL = ("CT", "MR", "PT")


def _library_header(image: Dataset) -> Dataset:
    """``image`` as the Image Library should describe it.

    highdicom adds the modality descriptors (TID 1603 for projection images: patient orientation
    and imager pixel spacing; TID 1604 for CT, MR, PET: geometry) whenever the Modality is one of
    theirs, and fails when the header lacks an attribute they use; many CR headers have no
    ImagerPixelSpacing or an empty PatientOrientation. DICOM does not require these descriptors, so
    such images are described by the common ones only (modality, coded from the SOP class; frame of
    reference; rows and columns): highdicom gets a header copy whose Modality it does not recognise.
    """
    modality = image.get("Modality", "")
    if modality in _PROJECTION:
        needed = {"PatientOrientation": 2, "ImagerPixelSpacing": 2}
    elif modality in _CROSS_SECTIONAL:
        needed = {
            "PixelSpacing": 2,
            "ImageOrientationPatient": 6,
            "ImagePositionPatient": 3,
            "SliceThickness": 1,
        }
    else:
        return image
    if all(_count(image.get(name)) == n for name, n in needed.items()):
        return image
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        if keyword in image:
            setattr(header, keyword, image.get(keyword))
    header.Modality = "OT"  # read by highdicom only to choose the optional descriptors; not written
    return header


def _count(value: object) -> int:
    """How many values a header element holds (0 when absent or empty)."""
    if value is None or value == "":
        return 0
    if isinstance(value, Sequence) and not isinstance(value, str):
        return len(value)
    return 1


def _evidence(result: ImagingResult) -> list[Dataset]:
    sources = result.volume.sources if result.volume is not None else ()
    if result.frames is not None:
        sources = result.frames.sources
    if not sources:
        raise ValueError("write_sr needs a result with a volume or frames and their source headers")
    if any(ds.StudyInstanceUID != result.study_instance_uid for ds in sources):
        raise ValueError("the source headers belong to another study than result.study_instance_uid")
    return list(sources)


def write_sr(
    result: ImagingResult,
    *,
    seg: Dataset | None = None,
    series_number: int = SR_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    manufacturer: str = "medserve",
    software_versions: str = medserve.__version__,
    highdicom_document: bool = False,
    explanation_maps: Mapping[int, Dataset] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR (TID 1500 Measurement Report) of ``result``; see the module docstring.

    ``seg`` is the SEG written for the same result (``write_seg``); its segments are then referenced
    and it is recorded as evidence. UIDs are generated when not given. Raises ValueError when the
    result lacks the images its findings or lesions refer to, or its headers are of another study.
    ``highdicom_document``: build the document with ``hd.sr.Comprehensive3DSR`` itself, the reference
    that the faster ``sr_document.comprehensive_3d_sr`` (the default) is tested against.
    ``explanation_maps``: finding index -> the Parametric Map explaining that finding
    (``parametric_map_writer``), referenced as a further source image of the finding's group and
    recorded as evidence.
    """
    maps = dict(explanation_maps or {})
    evidence = _evidence(result)
    if seg is not None and seg.StudyInstanceUID != result.study_instance_uid:
        raise ValueError("the SEG belongs to another study than the result")
    groups: list[Group] = [
        _finding_group(result, index, finding, maps.get(index))
        for index, finding in enumerate(result.findings)
    ]
    if result.segments:
        groups += _segment_groups(result, seg)
    modality = evidence[0].get("Modality", "")
    library = bool(result.findings) and result.frames is not None  # 2D results: the few images seen
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=_device_observer(result, manufacturer)
        ),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=groups or None,
        referenced_images=[_library_header(ds) for ds in evidence] if library else None,
    )
    private = any(finding_concept(f.label).scheme_designator == PRIVATE_SCHEME for f in result.findings)
    schemes = (
        [CodingSchemeIdentificationItem(PRIVATE_SCHEME, name="medserve finding labels")] if private else None
    )
    algorithm = result.algorithm
    document: dict[str, Any] = dict(
        evidence=[*evidence, *([seg] if seg is not None else []), *maps.values()],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=series_description("AI SR", result),
        manufacturer_model_name=algorithm.name[:64],
        software_versions=software_versions,
        coding_schemes=schemes,
        content_qualification=hd.ContentQualificationValues.RESEARCH if algorithm.research_use else None,
    )
    if highdicom_document:
        return hd.sr.Comprehensive3DSR(content=report[0], **document)
    return comprehensive_3d_sr(content=report, **document)
