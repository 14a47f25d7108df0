"""An explanation of a 2D finding as a DICOM Parametric Map, with highdicom.

What is written:

- **One Parametric Map per explained finding**, one frame over the source image's full pixel matrix
  (the attribution map, computed on the model's input grid, is resized bilinearly to the source's rows
  and columns), **32-bit float pixel data** (Float Pixel Data), so the values are the method's own:
  for occlusion, how much the finding's probability dropped when that region was hidden (positive:
  the model relied on it; negative: hiding it raised the probability); for Integrated Gradients,
  each pixel's share of ``p(image) - p(baseline)``.
- **Real World Value Mapping**: identity (slope 1, intercept 0) from stored to real values, unit UCUM
  ``1`` (a probability difference has no unit), quantity DCM 130404 *Saliency* (DCM 130403
  *Gradient-weighted class activation* for GradCAM), LUT Label the method (``OCCLUSION``, ``IG``,
  ``GRADCAM``) and LUT Explanation what a value means, e.g. ``drop in p(Mass) when hidden (occlusion)``.
- **A symmetric window** (VOI LUT Function LINEAR_EXACT, centre 0, width twice the largest magnitude),
  so 0 is mid-grey wherever the map is shown as an image.
- **References**: the source image (Derivation Image / Source Image Sequence), the source's study,
  patient and **Frame of Reference**. Projection radiographs usually have no Frame of Reference and
  no patient geometry; the IOD requires both, so the map then gets a Frame of Reference of its own
  (a UID derived from the source's SOP Instance UID: the same image always gives the same one) with
  the pixel grid of the source (row and column direction of the image, the source's pixel spacing):
  the map overlays its source pixel for pixel, which the Source Image Sequence says, and claims no
  position in the patient.
- **The model and research use** as in the SEG: manufacturer model name, device serial number (the
  artifact digest), SeriesDescription ``RESEARCH USE ONLY AI MAP ...``, ContentQualification RESEARCH,
  ImageComments naming the model, its digest and what the map does not show.

Only single-frame source images are explained (a multi-frame ultrasound frame is not).
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import medserve
from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.results import Explanation, ImagingResult
from medserve.clinical.dicom.seg_writer import research_statement, series_description
from medserve.clinical.fhir_report import RESEARCH_USE_ONLY, model_digest

PM_SERIES_NUMBER = 9003
NO_UNITS = Code("1", "UCUM", "no units")

#: Method -> (LUT Label (SH, 16 characters), what a value means, quantity).
METHOD_LABELS: dict[str, tuple[str, str, Code]] = {
    "occlusion": ("OCCLUSION", "drop in p({label}) when hidden (occlusion)", codes.DCM.Saliency),
    "feature_ablation": ("ABLATION", "drop in p({label}) when a pixel is removed", codes.DCM.Saliency),
    "integrated_gradients": (
        "IG",
        "share of p({label}) vs baseline (integrated gradients)",
        codes.DCM.Saliency,
    ),
    "grad_cam": ("GRADCAM", "Grad-CAM activation for {label}", codes.DCM.GradientWeightedClassActivation),
}


def map_description(method: str, label: str) -> tuple[str, str, Code]:
    """(LUT Label, LUT Explanation, quantity) of a ``method``'s map of finding ``label``."""
    lut_label, meaning, quantity = METHOD_LABELS.get(
        method, (method.upper()[:16], f"{method} attribution to p({{label}})", codes.DCM.Saliency)
    )
    return lut_label, meaning.format(label=label)[:64], quantity


def source_image(result: ImagingResult, explanation: Explanation) -> Dataset:
    """The header of the single-frame source image ``explanation``'s finding was made on."""
    frames = result.frames
    if frames is None:
        raise ValueError("explanations are written for 2D results (frames) only")
    if not 0 <= explanation.finding < len(result.findings):
        raise ValueError(f"the explanation refers to finding {explanation.finding}, which the result lacks")
    finding = result.findings[explanation.finding]
    if not 0 <= finding.frame < len(frames.refs):
        raise ValueError(f"finding {finding.label!r} refers to frame {finding.frame}, which the result lacks")
    ref = frames.refs[finding.frame]
    image = next((ds for ds in frames.sources if ds.SOPInstanceUID == ref.sop_instance_uid), None)
    if image is None:
        raise ValueError(f"no source header for SOP instance {ref.sop_instance_uid}")
    if int(image.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("explanations of a frame of a multi-frame image are not written")
    if image.StudyInstanceUID != result.study_instance_uid:
        raise ValueError("the source header belongs to another study than the result")
    return image


def _count(value: object) -> int:
    if value is None or value == "":
        return 0
    return len(value) if isinstance(value, list | tuple) or hasattr(value, "__len__") else 1


def _geometry_header(image: Dataset) -> Dataset:
    """A copy of ``image``'s header with the plane geometry highdicom needs (see the module docstring)."""
    header = copy.deepcopy(image)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    placed = (
        "FrameOfReferenceUID" in header
        and _count(header.get("ImageOrientationPatient")) == 6
        and _count(header.get("ImagePositionPatient")) == 3
        and _count(header.get("PixelSpacing")) == 2
    )
    if not placed:
        header.FrameOfReferenceUID = generate_uid(
            entropy_srcs=["medserve explanation frame of reference", str(image.SOPInstanceUID)]
        )
        header.PositionReferenceIndicator = ""
        header.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        header.ImagePositionPatient = [0, 0, 0]
        spacing = image.get("PixelSpacing") or image.get("ImagerPixelSpacing") or [1, 1]
        header.PixelSpacing = [float(v) for v in spacing]
    if _count(header.get("SliceThickness")) != 1:
        header.SliceThickness = 1  # nominal: one plane (the Pixel Measures macro asks for a value)
    return header


def _frame_anatomy(pm: Dataset, image: Dataset) -> None:
    """The Frame Anatomy functional group from the source's anatomy (its AnatomicRegionSequence, or
    BodyPartExamined CHEST), which also stands for the series' Laterality; without a known anatomy,
    Laterality (Type 2C) is written empty."""
    region = image.get("AnatomicRegionSequence")
    if region:
        code = copy.deepcopy(region[0])
    elif str(image.get("BodyPartExamined", "")).upper() == "CHEST":
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "51185008", "SCT", "Chest"
    else:
        if "Laterality" not in pm:
            pm.Laterality = ""
        return
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [code]
    laterality = str(image.get("ImageLaterality", "") or image.get("Laterality", "") or "U")
    anatomy.FrameLaterality = laterality if laterality in ("R", "L", "B", "U") else "U"
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]


def write_parametric_map(
    result: ImagingResult,
    explanation: Explanation,
    *,
    series_number: int = PM_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = "medserve",
    software_versions: str = medserve.__version__,
) -> hd.pm.ParametricMap:
    """The Parametric Map of ``explanation`` (of ``result.findings[explanation.finding]``).

    Raises ValueError when the result has no such finding or source image, when the source is a
    multi-frame image, or when the values are not a finite 2D array.
    """
    image = source_image(result, explanation)
    values = np.asarray(explanation.values, dtype=np.float32)
    if values.ndim != 2 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"explanation values must be a finite 2D array, got shape {values.shape}")
    rows, columns = int(image.Rows), int(image.Columns)
    pixels = values if values.shape == (rows, columns) else prep.resize_2d(values, (rows, columns))
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    finding = result.findings[explanation.finding]
    lut_label, meaning, quantity = map_description(explanation.method, finding.label)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        low, high = low - 1.0, high + 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=lut_label,
        lut_explanation=meaning,
        unit=NO_UNITS,
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
        quantity_definition=quantity,
    )
    extent = max(abs(low), abs(high), 1e-6)
    window = hd.VOILUTTransformation(
        window_center=0.0,
        window_width=2.0 * extent,
        window_explanation="symmetric about 0",
        voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,
    )
    algorithm = result.algorithm
    content = f"{explanation.method} map of {finding.label} (p={finding.probability:.2f})"
    pm = hd.pm.ParametricMap(
        source_images=[_geometry_header(image)],
        pixel_array=pixels[np.newaxis],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer[:64],
        manufacturer_model_name=algorithm.name[:64],
        software_versions=software_versions,
        device_serial_number=model_digest(algorithm),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_description=(f"{RESEARCH_USE_ONLY} {content}" if algorithm.research_use else content)[:64],
        content_label="AI_EXPLANATION",
        content_qualification=(
            hd.ContentQualificationValues.RESEARCH
            if algorithm.research_use
            else hd.ContentQualificationValues.PRODUCT
        ),
    )
    _frame_anatomy(pm, image)
    pm.SeriesDescription = series_description("AI MAP", result)
    details = f" Parameters: {explanation.parameters}." if explanation.parameters else ""
    pm.ImageComments = (
        f"{research_statement(result)} {meaning}.{details} The map shows where changing the image "
        "changed the model's output; it does not show why, nor that the region is abnormal."
    )[:10240]
    return pm
