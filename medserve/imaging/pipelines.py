"""Imaging pipelines: a DICOM series in, an ``ImagingResult`` out, with inference through the core.

Two kinds, each parameterised by its model's configuration metadata so a new model needs no code:

- ``classification_2d`` (X-ray, ultrasound frames): frames → modality LUT / MONOCHROME1 inversion →
  resize → intensities to [0, 1] → one request per frame → findings above each label's threshold.
- ``segmentation_3d`` (CT, MR): slices → volume ordered along the slice normal → HU window (CT) or
  z-score (MR) → resample to the model's spacing → padded to a patch where smaller (by repeating the
  edge voxels unless the model says otherwise) → sliding-window patches, one request each → argmax
  → label map back on the original grid → connected components with volumes.

They run in a worker thread: decoding and array work stay off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom

from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.criteria import Criteria
from medserve.clinical.dicom.results import Algorithm, Explanation, Finding, ImagingResult, Segment
from medserve.clinical.dicom.series_to_volume import SeriesRejected, series_to_frames, series_to_volume
from medserve.imaging.explain import ExplainConfig, explain_findings
from medserve.imaging.model_client import ModelClient, ModelInfo
from medserve.values.errors import InvalidConfig

KINDS = ("classification_2d", "segmentation_3d")
PADDING_MODES = ("edge", "reflect", "constant")
"""How a volume smaller than a patch is padded (``metadata.preprocessing.padding``; numpy.pad's modes,
``constant`` pads with 0 on the model's intensity scale). The default, ``edge``, repeats the outer
voxels: a scan's field of view ends mid-body, and air beyond the last slice is an edge the model never
saw in training (a zero-padded short CT gave the example model false lesions on its first slice)."""


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline from the imaging configuration: its kind, model and optional overrides."""

    name: str
    kind: str
    model: str
    threshold: float | None = None
    min_lesion_voxels: int = 10
    priority_class: str = "bulk"
    intended_use: Criteria | None = None
    """What the pipeline's model may be given (beside what the model's metadata declares)."""
    explain: ExplainConfig | None = None
    """Explanations of the findings to compute (``classification_2d`` only; ``imaging.explain``)."""


class OutsideIntendedUse(SeriesRejected):
    """The series matched a route, but is not what the pipeline's model is meant for (``unmatched``)."""


def intended_use_failure(
    spec: PipelineSpec, metadata: dict[str, Any] | None, attributes: dict[str, Any], instances: int
) -> str | None:
    """Why the series is outside the pipeline's intended use, or None when it is within it.

    Checked: the pipeline's ``intended_use`` and, when ``metadata`` (the model's) is given, its
    ``intended_use_criteria``. A model whose criteria cannot be read is refused, not trusted.
    """
    checks: list[tuple[str, Criteria]] = []
    if spec.intended_use is not None:
        checks.append((f"pipeline '{spec.name}'", spec.intended_use))
    declared = (metadata or {}).get("intended_use_criteria")
    if declared is not None:
        try:
            checks.append((f"model '{spec.model}'", Criteria.model_validate(declared)))
        except ValueError as exc:
            raise InvalidConfig(
                f"model '{spec.model}': metadata.intended_use_criteria is not valid: {exc}"
            ) from None
    for whose, criteria in checks:
        failure = criteria.first_failure(attributes, instances)
        if failure is not None:
            return f"outside the intended use of {whose}: {failure}"
    return None


def _algorithm(info: ModelInfo) -> Algorithm:
    meta = info.metadata
    research = bool(meta.get("research_use", True))
    return Algorithm(info.name, info.version, info.digest, research, str(meta.get("description", ""))[:500])


def _uids(datasets: Sequence[pydicom.Dataset]) -> tuple[str, str]:
    first = datasets[0]
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def run_pipeline(
    spec: PipelineSpec, datasets: Sequence[pydicom.Dataset], models: ModelClient
) -> ImagingResult:
    if spec.kind == "classification_2d":
        return classify_2d(spec, datasets, models)
    if spec.kind == "segmentation_3d":
        return segment_3d(spec, datasets, models)
    raise InvalidConfig(f"pipeline '{spec.name}': unknown kind '{spec.kind}' (one of {', '.join(KINDS)})")


def _preprocessing(info: ModelInfo) -> dict[str, Any]:
    value = info.metadata.get("preprocessing", {})
    return dict(value) if isinstance(value, dict) else {}


def _padding(spec: PipelineSpec, settings: dict[str, Any]) -> str:
    mode = str(settings.get("padding", "edge"))
    if mode not in PADDING_MODES:
        raise InvalidConfig(
            f"pipeline '{spec.name}': model '{spec.model}' asks for padding '{mode}' "
            f"(one of {', '.join(PADDING_MODES)})"
        )
    return mode


def classify_2d(
    spec: PipelineSpec, datasets: Sequence[pydicom.Dataset], models: ModelClient
) -> ImagingResult:
    info = models.info(spec.model)
    frames = series_to_frames(datasets)
    size = int(_preprocessing(info).get("image_size", 224))
    images = prep.scale_to_unit(prep.resize_2d(frames.array, (size, size)))
    outputs = models.infer_each(spec.model, [image[None] for image in images], spec.priority_class)
    labels = [str(label) for label in info.metadata.get("labels", [])]
    thresholds = info.metadata.get("thresholds", {})
    findings: list[Finding] = []
    for index, probabilities in enumerate(outputs):
        for k, p in enumerate(np.asarray(probabilities, dtype=np.float64).ravel()):
            label = labels[k] if k < len(labels) else f"output_{k}"
            threshold = spec.threshold if spec.threshold is not None else float(thresholds.get(label, 0.5))
            findings.append(Finding(label, float(p), threshold, index))
    explanations: tuple[Explanation, ...] = ()
    if spec.explain is not None:  # whole single-frame images only (no frame of a cine loop)
        frame_counts = {
            str(ds.SOPInstanceUID): int(ds.get("NumberOfFrames", 1) or 1) for ds in frames.sources
        }
        single = {k for k, ref in enumerate(frames.refs) if frame_counts.get(ref.sop_instance_uid, 1) == 1}
        explanations = explain_findings(spec.explain, spec.model, models, images, findings, labels, single)
    study, series = _uids(datasets)
    present = sorted({f.label for f in findings if f.present})
    summary = f"{len(frames.refs)} image(s); findings above threshold: {', '.join(present) or 'none'}"
    return ImagingResult(
        spec.name,
        _algorithm(info),
        study,
        series,
        frames=frames,
        findings=tuple(findings),
        explanations=explanations,
        summary=summary,
    )


def segment_3d(spec: PipelineSpec, datasets: Sequence[pydicom.Dataset], models: ModelClient) -> ImagingResult:
    info = models.info(spec.model)
    settings = _preprocessing(info)
    volume = series_to_volume(datasets)
    array = volume.array
    if "window" in settings:
        low, high = (float(v) for v in settings["window"])
        array = prep.window(array, low, high)
    else:
        array = prep.normalize_mr(array)
    spacing: tuple[float, ...] = volume.spacing
    target = settings.get("spacing_mm")
    if target is not None:
        target_spacing = tuple(float(v) for v in (target if isinstance(target, list) else [target] * 3))
        array, spacing = prep.resample(array, volume.spacing, target_spacing)
    patch = tuple(int(v) for v in settings.get("patch_size", [64, 64, 64]))
    overlap = float(settings.get("overlap", 0.25))
    padded, crop = prep.pad_to(array, patch, mode=_padding(spec, settings))
    windows = prep.sliding_window_patches(padded.shape, patch, overlap)
    outputs = models.infer_each(spec.model, [padded[w][None] for w in windows], spec.priority_class)
    accumulator = prep.PatchAccumulator((int(outputs[0].shape[0]), *padded.shape), patch)
    for w, out in zip(windows, outputs):
        accumulator.add(w, out)
    scores = accumulator.result()
    labels_here = np.argmax(scores, axis=0).astype(np.uint8)[crop]
    label_map = prep.resample_label_map_back(labels_here, volume.array.shape)
    labels = [str(v) for v in info.metadata.get("labels", ["background", "lesion"])]
    segments = tuple(
        Segment(k, labels[k] if k < len(labels) else f"label {k}") for k in range(1, len(labels))
    )
    lesions = prep.connected_components(
        label_map, volume.spacing, volume.origin, volume.direction, spec.min_lesion_voxels
    )
    study, series = _uids(datasets)
    total = sum(lesion.volume_ml for lesion in lesions)
    summary = f"{len(lesions)} lesion(s), total volume {total:.1f} mL"
    return ImagingResult(
        spec.name,
        _algorithm(info),
        study,
        series,
        volume=volume,
        segments=segments,
        label_map=label_map,
        lesions=tuple(lesions),
        summary=summary,
        extra={"patches": float(len(windows))},
    )
