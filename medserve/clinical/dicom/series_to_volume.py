"""A DICOM series as model input: CT/MR slices to a ``Volume``, projection/ultrasound images to ``Frames``.

Both functions validate the series before decoding any pixels and raise ``SeriesRejected`` with a
reason a person can act on (which attribute, which instance, which values). Pixels are decoded one
instance (or frame) at a time straight into the preallocated float32 output, and the input datasets
are left untouched (nothing is cached on them), so a series costs its output array plus one slice.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import MutableSequence, Sequence
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import Tag
from pydicom.valuerep import VR

from medserve.clinical.dicom.images import FrameRef, Frames, Volume
from medserve.values.errors import InvalidInput

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = frozenset(Tag(keyword) for keyword in _PIXEL_KEYWORDS)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as YBR_FULL's Y


class SeriesRejected(InvalidInput):
    """The series cannot become model input; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def header_without_pixels(ds: Dataset) -> Dataset:
    """A copy of ``ds`` (file meta included) without its pixel data; ``ds`` itself is not changed.

    Elements not yet read stay raw and are shared (a raw element is immutable bytes that each dataset
    converts on its own when read), so a header costs a few dictionary entries instead of converting
    and deep-copying every element (a tenth of the time for a CT slice); elements already read are
    copied, their multi-valued values too, and sequences item by item. A value left in the file
    (``dcmread(defer_size=...)``) is read now (``Dataset.elements`` reads it): the header has no file.
    """
    header = Dataset()
    for element in ds.elements():  # raw elements as they are: nothing is converted
        if element.tag in _PIXEL_TAGS:
            continue
        if isinstance(element, RawDataElement):
            header[element.tag] = element
        elif element.VR == VR.SQ:
            items = [header_without_pixels(item) for item in element.value]
            header.add(DataElement(element.tag, VR.SQ, items))
        else:
            copied = copy.copy(element)
            if isinstance(element.value, MutableSequence):
                copied.value = copy.deepcopy(element.value)
            header.add(copied)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        header.file_meta = copy.deepcopy(file_meta)
    return header


def _who(ds: Dataset) -> str:
    return f"instance {ds.get('InstanceNumber', '?')} ({ds.get('SOPInstanceUID', 'no SOPInstanceUID')})"


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """The ``count`` numbers of a multi-valued attribute, or None when absent, short or not finite."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = [value] if count == 1 and not isinstance(value, Sequence | np.ndarray) else list(value)
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.all(np.isfinite(numbers)) else None


def _counted(values: Sequence[Any]) -> str:
    return ", ".join(f"{value} in {n} instance{'s' * (n > 1)}" for value, n in Counter(values).most_common())


def _check_series(datasets: Sequence[Dataset]) -> None:
    """What every series must satisfy: instances, one series, no repeats, pixel data, one image size."""
    if not datasets:
        raise SeriesRejected("the series has no instances")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise SeriesRejected(
            f"instances of {len(series)} series were given as one: {', '.join(sorted(series))}"
        )
    repeated = [
        uid for uid, n in Counter(str(ds.get("SOPInstanceUID", "")) for ds in datasets).items() if n > 1
    ]
    if repeated:
        raise SeriesRejected(
            f"the same instance was given more than once: SOPInstanceUID {', '.join(repeated)}"
        )
    without = [ds for ds in datasets if not any(k in ds for k in _PIXEL_KEYWORDS)]
    if without:
        raise SeriesRejected(
            f"missing pixel data in {len(without)} of {len(datasets)} instances (e.g. {_who(without[0])})"
        )
    sizes = [(ds.get("Rows"), ds.get("Columns")) for ds in datasets]
    if any(not isinstance(r, int) or not isinstance(c, int) or r < 1 or c < 1 for r, c in sizes):
        raise SeriesRejected("missing or invalid Rows/Columns in the series")
    if len(set(sizes)) > 1:
        raise SeriesRejected(f"mismatched Rows/Columns: {_counted([f'{r}x{c}' for r, c in sizes])}")


def _decode(ds: Dataset, index: int | None = None) -> tuple[np.ndarray, str]:
    """One frame (or the whole single-frame image) and the photometric interpretation it comes out in."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not syntax:
        raise SeriesRejected(
            f"{_who(ds)} has no TransferSyntaxUID in its file meta; its pixels cannot be read"
        )
    try:
        array, meta = get_decoder(syntax).as_array(ds, index=index, **as_pixel_options(ds))
    except MemoryError:
        raise
    except Exception as exc:  # the input's fault whatever the plugin raised: say which syntax
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        named = syntax if syntax.name == syntax else f"{syntax.name} ({syntax})"
        raise SeriesRejected(
            f"unsupported or undecodable transfer syntax {named} in {_who(ds)}: {detail}"
        ) from None
    return array, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))


def _rescale(ds: Dataset) -> tuple[float, float] | None:
    """(slope, intercept) from the instance or, for enhanced multi-frame, its shared functional groups."""
    holders = [ds]
    for shared in ds.get("SharedFunctionalGroupsSequence", []):
        holders.extend(shared.get("PixelValueTransformationSequence", []))
    for holder in holders:
        slope, intercept = _floats(holder, "RescaleSlope", 1), _floats(holder, "RescaleIntercept", 1)
        if slope is not None and intercept is not None:
            if slope[0] == 0:
                raise SeriesRejected(f"{_who(ds)} has RescaleSlope 0")
            return float(slope[0]), float(intercept[0])
    return None


def _orientation_groups(orientations: np.ndarray, tolerance: float) -> list[tuple[np.ndarray, int]]:
    groups: list[tuple[np.ndarray, int]] = []
    for iop in orientations:
        for i, (first, n) in enumerate(groups):
            if np.max(np.abs(iop - first)) <= tolerance:
                groups[i] = (first, n + 1)
                break
        else:
            groups.append((iop, 1))
    return groups


def _geometry(datasets: Sequence[Dataset], keyword: str, count: int) -> np.ndarray:
    values = [_floats(ds, keyword, count) for ds in datasets]
    missing = [ds for ds, v in zip(datasets, values) if v is None]
    if missing:
        raise SeriesRejected(
            f"missing geometry: {keyword} absent or invalid in {len(missing)} of {len(datasets)} "
            f"instances (e.g. {_who(missing[0])})"
        )
    return np.stack([v for v in values if v is not None])


def _slice_positions(
    datasets: Sequence[Dataset],
    normal: np.ndarray,
    positions: np.ndarray,
    pixel: float,
    rtol: float,
    atol: float,
) -> tuple[list[int], float]:
    """Slice order along ``normal`` and the slice spacing; rejects duplicates, shear and uneven gaps."""
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    ranked = along[order]
    gaps = np.diff(ranked)
    same = np.flatnonzero(gaps <= 1e-3)
    if same.size:
        pairs = [f"{_who(datasets[order[i]])} and {_who(datasets[order[i + 1]])}" for i in same[:3]]
        raise SeriesRejected(
            f"duplicate slice positions: {same.size} pair(s) at the same position along the slice normal, "
            f"e.g. {ranked[same[0]]:.3f} mm: {'; '.join(pairs)}"
        )
    offsets = positions[order] - positions[order[0]] - np.outer(ranked - ranked[0], normal)
    shift = np.linalg.norm(offsets, axis=1)
    if shift.max() > pixel / 2:
        worst = int(np.argmax(shift))
        raise SeriesRejected(
            "inconsistent geometry: slices are not stacked along the slice normal (gantry tilt or shear); "
            f"{_who(datasets[order[worst]])} is {shift[worst]:.2f} mm off it in-plane"
        )
    median = float(np.median(gaps))
    tolerance = max(atol, rtol * median)
    uneven = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if uneven.size:
        found = Counter(f"{g:.4g} mm" for g in gaps).most_common(6)
        first = int(uneven[0])
        raise SeriesRejected(
            f"uneven slice spacing: gaps of {', '.join(f'{g} ({n}x)' for g, n in found)} "
            f"(tolerance {tolerance:.3g} mm around {median:.4g} mm); first irregular gap "
            f"{gaps[first]:.4g} mm between {_who(datasets[order[first]])} and "
            f"{_who(datasets[order[first + 1]])} - a missing or extra slice?"
        )
    return order, float((ranked[-1] - ranked[0]) / (len(ranked) - 1))


def series_to_volume(
    datasets: Sequence[Dataset],
    *,
    min_slices: int = 2,
    orientation_tolerance: float = 1e-3,
    spacing_rtol: float = 0.01,
    spacing_atol_mm: float = 0.1,
) -> Volume:
    """CT or MR single-frame instances of one series as a float32 ``Volume`` in modality units.

    Slices are ordered along the slice normal (row x column direction of ImageOrientationPatient) and
    rescaled (RescaleSlope/RescaleIntercept, required for CT). Rejected with ``SeriesRejected``: missing
    pixel data or geometry, orientations differing by more than ``orientation_tolerance`` (direction
    cosine), inconsistent PixelSpacing, duplicate positions, slices off the normal (gantry tilt), gaps
    differing from the median by more than ``max(spacing_atol_mm, spacing_rtol * median)``, mismatched
    Rows/Columns, multi-frame or colour instances, undecodable transfer syntaxes and fewer than
    ``min_slices`` slices. With ``min_slices=1`` a lone slice takes SpacingBetweenSlices or SliceThickness
    as its slice spacing.
    """
    _check_series(datasets)
    if len(datasets) < max(min_slices, 1):
        raise SeriesRejected(f"{len(datasets)} slice(s): a volume needs at least {min_slices}")
    for ds in datasets:
        if int(ds.get("NumberOfFrames") or 1) > 1 or int(ds.get("SamplesPerPixel") or 1) != 1:
            raise SeriesRejected(
                f"{_who(ds)} is multi-frame or colour (NumberOfFrames {ds.get('NumberOfFrames', 1)}, "
                f"SamplesPerPixel {ds.get('SamplesPerPixel', 1)}); a volume needs single-frame grey slices"
            )
    modality = str(datasets[0].get("Modality", ""))
    rescales = [_rescale(ds) for ds in datasets]
    if modality == "CT":
        lacking = [ds for ds, r in zip(datasets, rescales) if r is None]
        if lacking:
            raise SeriesRejected(
                f"CT without RescaleIntercept/RescaleSlope in {len(lacking)} of {len(datasets)} instances "
                f"(e.g. {_who(lacking[0])}): Hounsfield units cannot be computed"
            )
    orientations = _geometry(datasets, "ImageOrientationPatient", 6)
    positions = _geometry(datasets, "ImagePositionPatient", 3)
    pixel_spacings = _geometry(datasets, "PixelSpacing", 2)
    groups = _orientation_groups(orientations, orientation_tolerance)
    if len(groups) > 1:
        described = "; ".join(
            f"[{', '.join(f'{v:.4g}' for v in iop)}] in {n} instance{'s' * (n > 1)}" for iop, n in groups
        )
        raise SeriesRejected(
            f"mixed orientations: {len(groups)} different ImageOrientationPatient values ({described}); "
            "a localizer or a second stack in the series?"
        )
    row, column = orientations[0, :3], orientations[0, 3:]
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(column) - 1) > 0.01
        or abs(row @ column) > 0.01
    ):
        raise SeriesRejected(
            f"inconsistent geometry: ImageOrientationPatient {list(orientations[0])} is not two orthogonal "
            "unit vectors"
        )
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    if np.any(pixel_spacings <= 0) or np.ptp(pixel_spacings, axis=0).max() > 1e-3 * pixel_spacings[0].max():
        found = _counted(["/".join(f"{v:g}" for v in spacing) for spacing in pixel_spacings])
        raise SeriesRejected(f"inconsistent geometry: PixelSpacing (row/column mm) {found}")
    if len(datasets) == 1:
        thickness = _floats(datasets[0], "SpacingBetweenSlices", 1)
        thickness = thickness if thickness is not None else _floats(datasets[0], "SliceThickness", 1)
        if thickness is None or thickness[0] <= 0:
            raise SeriesRejected("a single slice needs SliceThickness to give the volume a slice spacing")
        order, slice_spacing = [0], float(thickness[0])
    else:
        pixel = float(pixel_spacings[0].min())
        order, slice_spacing = _slice_positions(
            datasets, normal, positions, pixel, spacing_rtol, spacing_atol_mm
        )
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    array = np.empty((len(datasets), rows, columns), dtype=np.float32)
    for k, i in enumerate(order):
        pixels, _ = _decode(datasets[i])
        if pixels.shape != (rows, columns):
            raise SeriesRejected(f"{_who(datasets[i])} decoded to shape {pixels.shape}, not {rows}x{columns}")
        array[k] = pixels
        del pixels
        rescale = rescales[i]
        if rescale is not None:
            slope, intercept = rescale
            if slope != 1:
                array[k] *= np.float32(slope)
            if intercept != 0:
                array[k] += np.float32(intercept)
    origin = positions[order[0]]
    return Volume(
        array=array,
        spacing=(slice_spacing, float(pixel_spacings[0, 0]), float(pixel_spacings[0, 1])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=np.column_stack([row, column, normal]),
        sources=tuple(header_without_pixels(datasets[i]) for i in order),
        modality=modality,
    )


def _spacing_2d(ds: Dataset) -> tuple[float, float] | None:
    holders = [ds]
    for shared in ds.get("SharedFunctionalGroupsSequence", []):
        holders.extend(shared.get("PixelMeasuresSequence", []))
    for holder in holders:
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            spacing = _floats(holder, keyword, 2)
            if spacing is not None and np.all(spacing > 0):
                return float(spacing[0]), float(spacing[1])
    return None


def _to_grey(pixels: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """A decoded frame as float32 greyscale in modality units, higher meaning brighter."""
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        photometric = "RGB"
    if pixels.ndim == 3:
        if photometric.startswith("YBR"):  # not converted to RGB by the decoder: Y is the luminance
            return pixels[..., 0].astype(np.float32)
        return np.asarray(pixels @ _LUMA, dtype=np.float32)
    rescale = _rescale(ds)
    if "ModalityLUTSequence" in ds:
        grey = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    else:
        grey = pixels.astype(np.float32)
        if rescale is not None:
            grey *= np.float32(rescale[0])
            grey += np.float32(rescale[1])
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
        if "ModalityLUTSequence" in ds:
            ends = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        elif rescale is not None:
            ends = stored * rescale[0] + rescale[1]
        else:
            ends = stored.astype(np.float64)
        grey = np.float32(ends.min() + ends.max()) - grey  # mirror the stored range: dark becomes bright
    return grey


def series_to_frames(datasets: Sequence[Dataset]) -> Frames:
    """Projection, ultrasound or any other 2D instances (single- or multi-frame) as float32 ``Frames``.

    Instances are ordered by InstanceNumber (those without one last, in the given order), their frames
    in frame order. Each frame gets the modality LUT or rescale when present; MONOCHROME1 is inverted by
    mirroring the stored value range; RGB, YBR and palette colour become BT.601 luminance. ``photometric``
    holds each frame's original PhotometricInterpretation; ``pixel_spacing`` is PixelSpacing (else
    ImagerPixelSpacing) when all instances agree on it, otherwise None.
    """
    _check_series(datasets)
    ordered = sorted(
        datasets,
        key=lambda ds: (0, int(ds.InstanceNumber)) if ds.get("InstanceNumber") not in (None, "") else (1, 0),
    )
    counts = [int(ds.get("NumberOfFrames") or 1) for ds in ordered]
    for ds in ordered:
        if int(ds.get("SamplesPerPixel") or 1) not in (1, 3):
            raise SeriesRejected(f"{_who(ds)} has SamplesPerPixel {ds.SamplesPerPixel}; expected 1 or 3")
    rows, columns = int(ordered[0].Rows), int(ordered[0].Columns)
    array = np.empty((sum(counts), rows, columns), dtype=np.float32)
    refs: list[FrameRef] = []
    photometric: list[str] = []
    for ds, count in zip(ordered, counts):
        original = str(ds.get("PhotometricInterpretation", ""))
        for frame in range(count):
            pixels, decoded_as = _decode(ds, frame)
            if pixels.shape[:2] != (rows, columns):
                raise SeriesRejected(f"{_who(ds)} frame {frame + 1} decoded to shape {pixels.shape}")
            array[len(refs)] = _to_grey(pixels, ds, decoded_as)
            del pixels
            refs.append(FrameRef(sop_instance_uid=str(ds.get("SOPInstanceUID", "")), frame_number=frame + 1))
            photometric.append(original)
    spacings = {_spacing_2d(ds) for ds in ordered}
    return Frames(
        array=array,
        refs=tuple(refs),
        sources=tuple(header_without_pixels(ds) for ds in ordered),
        pixel_spacing=spacings.pop() if len(spacings) == 1 else None,
        modality=str(ordered[0].get("Modality", "")),
        photometric=tuple(photometric),
    )
