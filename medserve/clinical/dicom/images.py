"""The pixel data of a DICOM series, ready for a model: a 3D ``Volume`` or a stack of 2D ``Frames``.

Both keep the source headers (without pixel data) in order, so result writers can reference the
instances and frames the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset


@dataclass(frozen=True)
class Volume:
    """A cross-sectional series (CT, MR) as one 3D array in modality units (HU for CT).

    ``array`` is float32 indexed ``(slice, row, column)``; slices are ordered by their position along
    the slice normal, and ``sources[k]`` is the header of slice ``k``. ``spacing`` is
    ``(slice, row, column)`` in millimetres (the row spacing is the distance between rows, i.e. the
    first value of PixelSpacing). ``origin`` is ImagePositionPatient of slice 0 (patient LPS, mm);
    ``direction`` is 3 x 3 with columns: the row direction, the column direction and the slice normal
    (the first two from ImageOrientationPatient).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sources: tuple[Dataset, ...]
    modality: str = ""

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class FrameRef:
    """Where a 2D frame came from: the instance and its 1-based frame number."""

    sop_instance_uid: str
    frame_number: int = 1


@dataclass(frozen=True)
class Frames:
    """Projection or ultrasound images (CR, DX, US, single- or multi-frame) as ``(frame, row, column)``.

    ``array`` is float32 after the modality LUT (rescale) and, for MONOCHROME1, inverted so that
    higher means brighter; colour ultrasound is converted to luminance. ``refs[k]`` says which
    instance and frame ``array[k]`` came from; ``pixel_spacing`` is (row, column) mm when known.
    """

    array: np.ndarray
    refs: tuple[FrameRef, ...]
    sources: tuple[Dataset, ...]
    pixel_spacing: tuple[float, float] | None = None
    modality: str = ""
    photometric: tuple[str, ...] = field(default=())
