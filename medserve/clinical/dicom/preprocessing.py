"""Pixel arrays to model tensors and model outputs back to findings: numpy and scipy only.

Intensity (``window``, ``normalize_mr``, ``scale_to_unit``), geometry (``resample``,
``resample_label_map_back``, ``resize_2d``), sliding-window inference (``pad_to``,
``sliding_window_patches``, ``PatchAccumulator``) and lesion measurement (``connected_components``).
All functions are pure: they return new arrays and never change their arguments. Bad arguments (a
pipeline's bug, not the series') raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from medserve.clinical.dicom.results import Lesion

Window = tuple[slice, ...]


def window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values mapped linearly from ``[low, high]`` (e.g. HU) to ``[0, 1]`` and clipped, as float32."""
    if not high > low:
        raise ValueError(f"window needs high > low, got low={low} high={high}")
    out = np.asarray(array, dtype=np.float32) - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def window_from_center_width(center: float, width: float) -> tuple[float, float]:
    """(low, high) of a WindowCenter/WindowWidth pair, e.g. (40, 400) for soft tissue: (-160, 240)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return center - width / 2, center + width / 2


def _shape_for(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    if len(shape) != len(spacing) or len(shape) != len(target):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and target {tuple(target)} differ")
    if any(s <= 0 for s in spacing) or any(t <= 0 for t in target):
        raise ValueError(f"spacings must be positive, got {tuple(spacing)} and {tuple(target)}")
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))


def resample(
    volume_array: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    order: int = 1,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """``volume_array`` resampled to about ``target_spacing`` (``order`` 0 nearest, 1 linear, 3 cubic).

    Each axis gets ``round(n * spacing / target)`` samples covering the same extent (voxel edges stay
    where they were), so the returned spacing, ``spacing * n / new_n``, is exact for the grid and within
    half a voxel of the target over the whole extent. The first voxel centre moves by
    ``(new_spacing - spacing) / 2`` along each axis. Returns float32 for ``order`` > 0, the input dtype
    for nearest.
    """
    shape = _shape_for(volume_array.shape, spacing, target_spacing)
    new_spacing = tuple(float(s) * n / m for s, n, m in zip(spacing, volume_array.shape, shape))
    if shape == volume_array.shape:
        return np.array(volume_array, dtype=np.float32 if order else volume_array.dtype), new_spacing
    if order == 0:
        return _nearest(volume_array, shape), new_spacing
    factors = [m / n for n, m in zip(volume_array.shape, shape)]
    out = ndimage.zoom(
        np.asarray(volume_array, dtype=np.float32), factors, order=order, mode="nearest", grid_mode=True
    )
    return out, new_spacing


def _nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize by voxel-centre mapping (exact, dtype kept, no interpolation artefacts)."""
    index = [
        np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.intp), n - 1) for n, m in zip(array.shape, shape)
    ]
    return array[np.ix_(*index)]


def resample_label_map_back(label_map: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A label map predicted on a ``resample``-d grid, brought back to the original ``shape`` (nearest)."""
    if len(shape) != label_map.ndim or any(n < 1 for n in shape):
        raise ValueError(f"cannot bring a {label_map.shape} label map back to shape {tuple(shape)}")
    return _nearest(label_map, shape)


def normalize_mr(
    array: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """MR intensities clipped to foreground percentiles, then z-scored over the foreground (float32).

    The foreground is ``mask`` when given, else voxels above the image mean (air is dark on MR). An
    image without foreground, or a constant one, comes back as zeros.
    """
    data = np.asarray(array, dtype=np.float32)
    foreground = data > data.mean() if mask is None else np.asarray(mask, dtype=bool)
    if foreground.shape != data.shape:
        raise ValueError(f"mask shape {foreground.shape} differs from the image's {data.shape}")
    values = data[foreground]
    if values.size == 0:
        return np.zeros_like(data)
    low, high = (float(v) for v in np.percentile(values, percentiles))
    out = np.clip(data, low, high)
    values = out[foreground]
    std = float(values.std())
    out -= np.float32(values.mean())
    if std > 0:
        out /= np.float32(std)
    return out


def resize_2d(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Frames ``(…, row, column)`` resized to ``size`` (rows, columns), linear, float32.

    When shrinking, each axis is first smoothed with a Gaussian of sigma ``(factor - 1) / 2`` (as
    scikit-image's anti-aliasing) so fine patterns do not alias into the smaller image.
    """
    rows, columns = (size, size) if isinstance(size, int) else size
    if rows < 1 or columns < 1 or frames.ndim < 2:
        raise ValueError(f"cannot resize frames of shape {frames.shape} to {rows}x{columns}")
    data = np.asarray(frames, dtype=np.float32)
    lead = data.ndim - 2
    factors = [1.0] * lead + [rows / data.shape[-2], columns / data.shape[-1]]
    sigmas = [0.0] * lead + [max(0.0, (1 / f - 1) / 2) for f in factors[lead:]]
    if any(sigmas):
        data = ndimage.gaussian_filter(data, sigmas, mode="nearest")
    out: np.ndarray = ndimage.zoom(data, factors, order=1, mode="nearest", grid_mode=True)
    if out.shape[-2:] != (rows, columns):  # zoom rounds; never expected, but do not hand back a wrong size
        raise ValueError(f"resize produced {out.shape[-2:]}, not {(rows, columns)}")
    return out


def scale_to_unit(frames: np.ndarray, percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """Each 2D image of ``frames`` (``(row, column)`` or ``(frame, row, column)``) scaled to ``[0, 1]``.

    The image's ``percentiles`` (default min and max) map to 0 and 1, values beyond are clipped; a
    constant image becomes zeros. Returns float32.
    """
    data = np.asarray(frames, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected (row, column) or (frame, row, column), got shape {data.shape}")
    out = np.empty_like(data)
    for image, target in zip(data.reshape(-1, *data.shape[-2:]), out.reshape(-1, *data.shape[-2:])):
        low, high = (float(v) for v in np.percentile(image, percentiles))
        if high > low:
            np.clip((image - low) / (high - low), 0.0, 1.0, out=target)
        else:
            target.fill(0.0)
    return out


def pad_to(
    array: np.ndarray, patch: Sequence[int], *, mode: str = "constant", value: float = 0.0
) -> tuple[np.ndarray, Window]:
    """``array`` padded (evenly on both sides) so its last ``len(patch)`` axes are at least ``patch``.

    Returns the padded array and the crop that undoes it: ``padded[crop]`` equals ``array``, and so
    does ``output[crop]`` for an output on the padded grid. ``mode`` is numpy.pad's (``constant`` with
    ``value``, ``edge``, ``reflect``...); use e.g. ``value=-1024`` for CT air.
    """
    lead = array.ndim - len(patch)
    if lead < 0:
        raise ValueError(f"patch {tuple(patch)} has more axes than the array {array.shape}")
    widths = [(0, 0)] * lead
    for n, p in zip(array.shape[lead:], patch):
        extra = max(0, p - n)
        widths.append((extra // 2, extra - extra // 2))
    crop = tuple(slice(before, before + n) for (before, _), n in zip(widths, array.shape))
    if not any(before or after for before, after in widths):
        return array.copy(), crop
    if mode == "constant":
        return np.pad(array, widths, mode="constant", constant_values=value), crop
    return np.pad(array, widths, mode=mode), crop  # type: ignore[call-overload]


def _starts(size: int, patch: int, overlap: float) -> list[int]:
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def sliding_window_patches(shape: Sequence[int], patch: Sequence[int], overlap: float = 0.25) -> list[Window]:
    """Windows of size ``patch`` covering every voxel of ``shape``, neighbours overlapping by ``overlap``.

    The step is ``patch * (1 - overlap)`` per axis and the last window is moved back to end on the
    border, so all windows lie inside. ``shape`` must be at least ``patch`` on every axis: pad smaller
    arrays with ``pad_to`` first. Windows come in C order (last axis fastest).
    """
    if len(shape) != len(patch) or any(p < 1 for p in patch):
        raise ValueError(f"patch {tuple(patch)} does not fit an array of shape {tuple(shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if any(n < p for n, p in zip(shape, patch)):
        raise ValueError(f"shape {tuple(shape)} is smaller than the patch {tuple(patch)}; pad_to it first")
    starts = [_starts(n, p, overlap) for n, p in zip(shape, patch)]
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch)) for corner in itertools.product(*starts)]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Patch weights peaking (1.0) at the centre with sigma ``sigma_scale * patch``, at least ``floor``."""
    weights = np.ones(tuple(patch), dtype=np.float32)
    for axis, p in enumerate(patch):
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2
        profile = np.exp(-0.5 * (x / max(sigma_scale * p, 1e-6)) ** 2).astype(np.float32)
        weights *= profile.reshape([-1 if a == axis else 1 for a in range(len(patch))])
    result: np.ndarray = np.maximum(weights / weights.max(), np.float32(floor))
    return result


class PatchAccumulator:
    """Sums patch outputs into a full array with per-voxel weights and divides at the end.

    ``shape`` is the output's full shape; its last ``len(patch)`` axes are spatial, leading ones (e.g.
    class channels) are carried along. ``weighting`` is ``gaussian`` (centre voxels count more, the
    usual choice for overlapping segmentation windows) or ``constant`` (plain average).
    """

    def __init__(
        self,
        shape: Sequence[int],
        patch: Sequence[int],
        weighting: str = "gaussian",
        sigma_scale: float = 0.125,
    ) -> None:
        if weighting not in ("gaussian", "constant"):
            raise ValueError(f"weighting must be 'gaussian' or 'constant', got {weighting!r}")
        if len(patch) > len(shape):
            raise ValueError(f"patch {tuple(patch)} has more axes than the output {tuple(shape)}")
        self.shape = tuple(shape)
        self.patch = tuple(patch)
        self._lead = len(shape) - len(patch)
        self._weights = (
            gaussian_weights(patch, sigma_scale)
            if weighting == "gaussian"
            else np.ones(self.patch, np.float32)
        )
        self._sum = np.zeros(self.shape, dtype=np.float32)
        self._weight_sum = np.zeros(self.shape[self._lead :], dtype=np.float32)

    def add(self, window: Window, values: np.ndarray) -> None:
        """Add one patch output (``(*leading, *patch)``) at ``window`` (spatial slices of ``shape``)."""
        expected = self.shape[: self._lead] + self.patch
        if values.shape != expected:
            raise ValueError(f"patch output has shape {values.shape}, expected {expected}")
        region = self._weight_sum[window]
        if region.shape != self.patch:
            raise ValueError(f"window {window} does not select a {self.patch} patch of {self.shape}")
        everything: tuple[Any, ...] = (Ellipsis, *window)  # leading (channel) axes, then the window
        self._sum[everything] += values * self._weights
        self._weight_sum[window] += self._weights

    def result(self) -> np.ndarray:
        """The weighted average of every patch over each voxel; every voxel must have been covered."""
        if not np.all(self._weight_sum > 0):
            missing = int(np.count_nonzero(self._weight_sum == 0))
            raise ValueError(f"{missing} voxels were not covered by any patch")
        return self._sum / self._weight_sum


def accumulate_patches(
    shape: Sequence[int],
    patch: Sequence[int],
    outputs: Iterable[tuple[Window, np.ndarray]],
    weighting: str = "gaussian",
) -> np.ndarray:
    """``PatchAccumulator`` in one call: (window, output) pairs to the weighted average over ``shape``."""
    accumulator = PatchAccumulator(shape, patch, weighting)
    for where, values in outputs:
        accumulator.add(where, values)
    return accumulator.result()


def _max_diameter(points: np.ndarray) -> float:
    """Largest distance between voxel centres (mm): between convex hull vertices, in blocks of rows."""
    if len(points) < 2:
        return 0.0
    if len(points) > 8:
        try:
            points = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # flat: joggled hull; collinear or worse: keep every point
            with contextlib.suppress(QhullError, ValueError):
                points = points[ConvexHull(points, qhull_options="QJ").vertices]
    return max(float(cdist(points[i : i + 256], points).max()) for i in range(0, len(points), 256))


def connected_components(
    mask: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    min_voxels: int = 1,
) -> list[Lesion]:
    """Lesions of a 3D mask or label map ``(slice, row, column)``: 26-connected components per label.

    Each nonzero label value is a segment; components smaller than ``min_voxels`` are dropped. Lesions
    are numbered from 1 by segment, then largest first. ``spacing``, ``origin`` and ``direction`` are
    a ``Volume``'s (direction columns: row direction, column direction, slice normal), giving the
    centroid in patient coordinates and the maximum diameter (between voxel centres) in mm.
    """
    labels = np.asarray(mask)
    if labels.ndim != 3 or len(spacing) != 3 or len(origin) != 3 or np.shape(direction) != (3, 3):
        raise ValueError("connected_components needs a 3D mask with 3D spacing, origin and a 3x3 direction")
    slice_mm, row_mm, column_mm = (float(s) for s in spacing)
    # index (slice, row, column) -> patient: column index moves along the row direction, and so on
    to_patient = np.column_stack(
        [direction[:, 2] * slice_mm, direction[:, 1] * row_mm, direction[:, 0] * column_mm]
    )
    start = np.asarray(origin, dtype=np.float64)
    structure = ndimage.generate_binary_structure(3, 3)
    found: list[tuple[int, int, tuple[float, float, float], tuple[float, float, float], float]] = []
    for segment in (int(v) for v in np.unique(labels) if v != 0):
        components, count = ndimage.label(labels == segment, structure=structure)
        for number, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            inside = components[box] == number
            voxels = int(np.count_nonzero(inside))
            if voxels < min_voxels:
                continue
            index = np.argwhere(inside).astype(np.float64) + [b.start for b in box]
            centroid = index.mean(axis=0)
            surface = inside & ~ndimage.binary_erosion(inside, structure=structure, border_value=0)
            rim = (np.argwhere(surface) + [b.start for b in box]) @ to_patient.T
            patient = start + to_patient @ centroid
            found.append(
                (
                    segment,
                    voxels,
                    (float(centroid[0]), float(centroid[1]), float(centroid[2])),
                    (float(patient[0]), float(patient[1]), float(patient[2])),
                    _max_diameter(rim),
                )
            )
    found.sort(key=lambda item: (item[0], -item[1]))
    voxel_ml = slice_mm * row_mm * column_mm / 1000.0
    return [
        Lesion(
            number=n,
            segment=segment,
            voxels=voxels,
            volume_ml=voxels * voxel_ml,
            centroid_voxel=centroid,
            centroid_patient=patient,
            max_diameter_mm=diameter,
        )
        for n, (segment, voxels, centroid, patient, diameter) in enumerate(found, start=1)
    ]
