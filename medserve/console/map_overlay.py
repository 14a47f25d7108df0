"""The result viewer's explanation overlay: a Parametric Map (``clinical.dicom.parametric_map_writer``)
drawn over the source image it was derived from.

The map's frame names its source instance (Derivation Image Sequence); the map has the source's
rows and columns, so it is drawn pixel for pixel. The source is windowed as the SEG viewer does.
Positive values (hiding the region lowered the finding's probability: the model relied on it) are
drawn from red to yellow, negative ones in blue, each with an opacity that grows with the value's
magnitude; values under a fifth of the largest magnitude are not drawn, so the image stays readable.
The map's peak (the point the pointing game scores) is marked with a green cross.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medserve.console.png import encode_png
from medserve.console.viewer import _window
from medserve.values.errors import InvalidInput

_FLOOR = 0.2
_ALPHA = 0.65


@dataclass(frozen=True)
class MapImage:
    png: bytes
    explanation: str
    """What a value means (the map's LUT Explanation)."""
    peak: tuple[int, int]
    """(row, column) of the map's largest value."""


def _source_uid(pm: pydicom.Dataset) -> str:
    for group in (*pm.get("PerFrameFunctionalGroupsSequence", [])[:1], pm):
        try:
            derivation = group.DerivationImageSequence[0]
            return str(derivation.SourceImageSequence[0].ReferencedSOPInstanceUID)
        except (AttributeError, IndexError):
            continue
    raise InvalidInput("the explanation map names no source image")


def _mapping(pm: pydicom.Dataset) -> str:
    for group in (
        *pm.get("SharedFunctionalGroupsSequence", []),
        *pm.get("PerFrameFunctionalGroupsSequence", []),
    ):
        mappings = group.get("RealWorldValueMappingSequence")
        if mappings:
            return str(mappings[0].get("LUTExplanation", ""))
    return ""


def peak_of(values: np.ndarray) -> tuple[int, int]:
    """The (row, column) of the largest value; where several pixels share it (a window's plateau),
    the one nearest their centroid."""
    top = float(values.max())
    rows, columns = np.nonzero(values >= top - 1e-12 * max(abs(top), 1.0))
    centre_r, centre_c = rows.mean(), columns.mean()
    k = int(np.argmin((rows - centre_r) ** 2 + (columns - centre_c) ** 2))
    return int(rows[k]), int(columns[k])


def colour_overlay(grey: np.ndarray, values: np.ndarray, peak: tuple[int, int] | None) -> np.ndarray:
    """``grey`` (0..255, 2D) with ``values`` (same shape) drawn over it, as the module docstring says."""
    rgb = np.repeat(grey.astype(np.float64)[..., np.newaxis], 3, axis=2)
    extent = float(np.abs(values).max())
    if extent > 0:
        strength = np.clip(values / extent, -1.0, 1.0)
        positive = np.clip((strength - _FLOOR) / (1 - _FLOOR), 0.0, 1.0)
        negative = np.clip((-strength - _FLOOR) / (1 - _FLOOR), 0.0, 1.0)
        heat = np.stack([np.full_like(positive, 255.0), 255.0 * positive, np.zeros_like(positive)], axis=-1)
        cold = np.zeros_like(heat)
        cold[..., 2] = 255.0
        for weight, colour in ((positive, heat), (negative, cold)):
            alpha = (_ALPHA * weight)[..., np.newaxis]
            rgb = rgb * (1 - alpha) + colour * alpha
    if peak is not None:
        r, c = peak
        arm = max(3, min(grey.shape) // 40)
        rgb[max(r - arm, 0) : r + arm + 1, max(c - 1, 0) : c + 2] = (40, 230, 40)
        rgb[max(r - 1, 0) : r + 2, max(c - arm, 0) : c + arm + 1] = (40, 230, 40)
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.uint8)


def render_map_overlay(pm_path: Path, source_paths: Sequence[Path], overlay: bool = True) -> MapImage:
    """The source image of the map at ``pm_path`` with the map drawn over it (or without, ``overlay``
    False, for comparison)."""
    pm = pydicom.dcmread(pm_path)
    uid = _source_uid(pm)
    source = next(
        (p for p in source_paths if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) == uid),
        None,
    )
    if source is None:
        raise InvalidInput("the source image of this explanation map is no longer stored")
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise InvalidInput("the viewer shows explanation maps of single-frame greyscale images only")
    if (int(pm.Rows), int(pm.Columns)) != pixels.shape:
        raise InvalidInput("the explanation map does not have its source image's rows and columns")
    values = np.asarray(pm.pixel_array, dtype=np.float32).reshape(-1, *pixels.shape)[0]
    grey = _window(ds, pixels)
    peak = peak_of(values)
    rgb = colour_overlay(grey, values, peak) if overlay else colour_overlay(grey, np.zeros_like(values), None)
    return MapImage(encode_png(rgb), _mapping(pm), peak)
