"""A 3D imaging result's label map as a DICOM Segmentation (SEG) instance, with highdicom.

Choices:

- **BINARY, not LABELMAP.** LABELMAP is a separate, recent SOP class (Label Map Segmentation
  Storage, 1.2.840.10008.5.1.4.1.1.66.7) that many PACS, viewers and toolkits do not yet accept;
  BINARY (Segmentation Storage, ...66.4) is read by every SEG-capable system. BINARY stores one
  bit-packed frame per segment and slice, and empty frames are omitted, so it stays small.
- **Segment numbers** are 1..N in the order of ``result.segments`` (DICOM requires them consecutive
  from 1); ``segment_numbers`` maps label values to them, and the SR writer uses the same map.
- **Source images without pixel data**: highdicom only reads the headers of the source images
  (geometry, UIDs, patient and study), so ``Volume.sources`` are passed as they are.
- **Empty label maps** still give a valid SEG: one empty frame per segment on the first source slice
  (highdicom would otherwise write every slice of every segment, all empty).
- **The model**: every segment's AlgorithmIdentificationSequence names it (AlgorithmName,
  AlgorithmVersion, family DCM 123110 "Artificial Intelligence", AlgorithmSource = ``manufacturer``)
  and carries the artifact digest as the parameter ``model_sha256=<hex>``; AlgorithmSource is LO
  (64 characters), too short for ``sha256:`` plus 64 hex digits. ManufacturerModelName is the model
  name and DeviceSerialNumber defaults to the digest's 64 hex digits.
- **Research use** (``algorithm.research_use``): SeriesDescription starts with "RESEARCH USE ONLY",
  ContentDescription says so, ImageComments gives the statement in full with the model and digest,
  and Content Qualification (0018,9004) is RESEARCH (the standard attribute enhanced image objects
  use to flag research content; a Type 3 addition here).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import medserve
from medserve.clinical.dicom.images import Volume
from medserve.clinical.dicom.results import ImagingResult
from medserve.clinical.fhir_report import RESEARCH_USE_ONLY, model_digest

SEG_SERIES_NUMBER = 9001
_LO = 64  # maximum length of DICOM LO values (descriptions, names, versions)


def segment_numbers(result: ImagingResult) -> dict[int, int]:
    """Label value in ``result.label_map`` -> SEG segment number (1-based, in ``result.segments`` order)."""
    numbers: dict[int, int] = {}
    for number, segment in enumerate(result.segments, start=1):
        if not 1 <= segment.label <= 255:
            raise ValueError(f"segment label must be 1..255, got {segment.label}")
        if segment.label in numbers:
            raise ValueError(f"segment label {segment.label} is described twice")
        numbers[segment.label] = number
    return numbers


def _text(value: str, limit: int = _LO) -> str:
    return value[:limit]


def series_description(kind: str, result: ImagingResult) -> str:
    """SeriesDescription (LO, at most 64 characters) of a derived ``kind`` series ("AI SEG", "AI SR")."""
    algorithm = result.algorithm
    text = f"{kind} {algorithm.name} {algorithm.version}"
    return _text(f"{RESEARCH_USE_ONLY} {text}" if algorithm.research_use else text)


def research_statement(result: ImagingResult) -> str:
    """One sentence naming the model, its version and digest, and (when so) its research-only status."""
    algorithm = result.algorithm
    text = (
        f"Generated automatically by {algorithm.name} version {algorithm.version} "
        f"(model sha256:{model_digest(algorithm)}); not reviewed by a clinician."
    )
    return f"{RESEARCH_USE_ONLY}, not for diagnostic use. {text}" if algorithm.research_use else text


def algorithm_identification(result: ImagingResult, source: str) -> hd.AlgorithmIdentificationSequence:
    """The AlgorithmIdentificationSequence naming ``result.algorithm`` and its digest."""
    algorithm = result.algorithm
    return hd.AlgorithmIdentificationSequence(
        name=_text(algorithm.name),
        family=codes.DCM.ArtificialIntelligence,
        version=_text(algorithm.version),
        source=_text(source),
        parameters={"model_sha256": model_digest(algorithm)},
    )


def _label_array(result: ImagingResult, numbers: dict[int, int]) -> tuple[Volume, np.ndarray]:
    """The result's volume and its label map recoded to segment numbers, after checking both."""
    volume, label_map = result.volume, result.label_map
    if volume is None or label_map is None:
        raise ValueError("write_seg needs a result with a volume and a label_map")
    if label_map.shape != volume.array.shape:
        raise ValueError(f"label_map shape {label_map.shape} differs from the volume's {volume.array.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must hold integers, got {label_map.dtype}")
    if len(volume.sources) != label_map.shape[0]:
        raise ValueError(f"{len(volume.sources)} source headers for {label_map.shape[0]} slices")
    found = {int(value) for value in np.unique(label_map)} - {0}
    unknown = sorted(found - numbers.keys())
    if unknown:
        raise ValueError(f"label_map holds labels {unknown} that result.segments does not describe")
    sources = volume.sources
    if any(ds.StudyInstanceUID != result.study_instance_uid for ds in sources):
        raise ValueError("the source headers belong to another study than result.study_instance_uid")
    if any(ds.SeriesInstanceUID != result.series_instance_uid for ds in sources):
        raise ValueError("the source headers belong to another series than result.series_instance_uid")
    lut = np.zeros(256, dtype=np.uint8)
    for label, number in numbers.items():
        lut[label] = number
    return volume, lut[label_map.astype(np.intp)]


def write_seg(
    result: ImagingResult,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    manufacturer: str = "medserve",
    software_versions: str = medserve.__version__,
    device_serial: str | None = None,
) -> hd.seg.Segmentation:
    """The BINARY DICOM SEG of ``result.label_map`` over ``result.volume``: a segment per ``result.segments``.

    The SEG joins the source study (same StudyInstanceUID, patient and frame of reference) and
    references every source slice. UIDs are generated when not given; ``device_serial`` defaults to
    the model digest. Raises ValueError when the result has no volume or label map, when the label
    map does not match the volume or its headers, or when it holds labels that no segment describes.
    """
    numbers = segment_numbers(result)
    if not numbers:
        raise ValueError("write_seg needs at least one segment in result.segments")
    volume, pixels = _label_array(result, numbers)
    algorithm = result.algorithm
    identification = algorithm_identification(result, manufacturer)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=numbers[segment.label],
            segment_label=_text(segment.name),
            segmented_property_category=Code(*segment.category),
            segmented_property_type=Code(*segment.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for segment in result.segments
    ]
    empty = not pixels.any()
    positions = None
    if empty:
        # One empty frame per segment, placed on the first slice, instead of every slice.
        pixels = pixels[:1]
        origin = volume.sources[0].ImagePositionPatient
        positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, origin)]
    content = "AI segmentation, not for diagnostic use" if algorithm.research_use else "AI segmentation"
    seg = hd.seg.Segmentation(
        source_images=list(volume.sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=_text(manufacturer),
        manufacturer_model_name=_text(algorithm.name),
        software_versions=software_versions,
        device_serial_number=device_serial or model_digest(algorithm),
        content_description=_text(f"{RESEARCH_USE_ONLY} {content}" if algorithm.research_use else content),
        content_label="AI_SEGMENTATION",
        plane_positions=positions,
        omit_empty_frames=not empty,
        series_description=series_description("AI SEG", result),
        content_qualification=hd.ContentQualificationValues.RESEARCH if algorithm.research_use else None,
    )
    seg.ImageComments = research_statement(result)
    return seg
