"""What an imaging pipeline concluded, independent of how it is written out (SEG, SR, FHIR).

Plain values: the pipelines fill them, the writers in this package turn them into DICOM and FHIR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medserve.clinical.dicom.images import Frames, Volume


@dataclass(frozen=True)
class Algorithm:
    """The model that produced a result, as result objects name it."""

    name: str
    version: str
    digest: str  # sha256 of the served artifact
    research_use: bool = True
    description: str = ""


@dataclass(frozen=True)
class Finding:
    """A classification finding of a 2D image: its label, probability and the decision threshold."""

    label: str
    probability: float
    threshold: float
    frame: int = 0  # index into Frames.array

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class Lesion:
    """One connected component of a segmentation: its segment label, size and centre.

    ``centroid_voxel`` is ``(slice, row, column)``; ``centroid_patient`` is in patient LPS mm.
    """

    number: int
    segment: int
    voxels: int
    volume_ml: float
    centroid_voxel: tuple[float, float, float]
    centroid_patient: tuple[float, float, float]
    max_diameter_mm: float = 0.0


@dataclass(frozen=True)
class Segment:
    """A segment of a label map: its label value and what it shows (SNOMED CT where one fits)."""

    label: int
    name: str
    category: tuple[str, str, str] = ("49755003", "SCT", "Morphologically Altered Structure")
    property_type: tuple[str, str, str] = ("4147007", "SCT", "Mass")


@dataclass(frozen=True)
class Explanation:
    """An attribution map of one finding of a 2D result (written as a DICOM Parametric Map).

    ``finding`` indexes ``ImagingResult.findings``; ``values`` is float, ``(rows, columns)`` on the
    grid of the image the model was given (the frame resized to the model's input); ``method`` names
    the attribution method (``occlusion``, ``integrated_gradients``, ...) and ``parameters`` the
    values it ran with (window, stride, baseline, steps), as text for the map's description.
    """

    finding: int
    method: str
    values: np.ndarray
    parameters: str = ""


@dataclass(frozen=True)
class ImagingResult:
    """Everything a pipeline concluded about one series.

    Exactly one of ``volume`` (3D pipelines) and ``frames`` (2D pipelines) is set. ``label_map`` is
    uint8 with the shape of ``volume.array`` (0 = background) when the pipeline segments.
    ``explanations``: attribution maps of some ``findings``, when the pipeline was asked for them.
    """

    pipeline: str
    algorithm: Algorithm
    study_instance_uid: str
    series_instance_uid: str
    volume: Volume | None = None
    frames: Frames | None = None
    findings: tuple[Finding, ...] = ()
    segments: tuple[Segment, ...] = ()
    label_map: np.ndarray | None = None
    lesions: tuple[Lesion, ...] = ()
    explanations: tuple[Explanation, ...] = ()
    summary: str = ""
    extra: dict[str, float] = field(default_factory=dict)
