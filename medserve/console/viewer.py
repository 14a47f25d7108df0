"""The result viewer: a slice of the source series with the SEG overlay, and an SR's findings as rows.

The SEG is BINARY with one frame per segment and source slice (``clinical.dicom.seg_writer``); each
frame names the source instance it was derived from, so the overlay is drawn on exactly that slice.
Slices are ordered along the patient axis (ImagePositionPatient), else by InstanceNumber. The slice
is windowed with its own Window Center/Width when it has them, else between its 1st and 99th
percentiles; segments are drawn in red over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medserve.console.png import encode_png
from medserve.values.errors import InvalidInput

_OVERLAY = np.array([220, 20, 20], dtype=np.float32)
_ALPHA = 0.5


@dataclass(frozen=True)
class SliceImage:
    png: bytes
    index: int
    count: int
    marked_pixels: int


def _order_key(ds: pydicom.Dataset) -> tuple[float, int]:
    position = ds.get("ImagePositionPatient")
    z = float(position[2]) if position is not None and len(position) == 3 else 0.0
    return z, int(ds.get("InstanceNumber", 0) or 0)


def _masks(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    """Source SOP Instance UID → union of the segment masks on that slice."""
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    masks: dict[str, np.ndarray] = {}
    for index, group in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):
        try:
            uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        except (AttributeError, IndexError):
            continue
        mask = frames[index] > 0
        masks[uid] = masks[uid] | mask if uid in masks else mask
    return masks


def _window(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0
    )
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        low, high = c - w / 2, c + w / 2
    else:
        low, high = (float(v) for v in np.percentile(values, [1, 99]))
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1 - scaled
    result: np.ndarray = scaled * 255
    return result


def render_seg_slice(seg_path: Path, source_paths: Sequence[Path], index: int | None = None) -> SliceImage:
    """Slice ``index`` (default: the one with the most segmented pixels) with the SEG's overlay."""
    seg = pydicom.dcmread(seg_path)
    masks = _masks(seg)
    headers = sorted(
        ((pydicom.dcmread(p, stop_before_pixels=True), p) for p in source_paths),
        key=lambda h: _order_key(h[0]),
    )
    if not headers:
        raise InvalidInput("the source series of this result is no longer stored")
    uids = [str(h.SOPInstanceUID) for h, _ in headers]
    if index is None:
        index = max(range(len(uids)), key=lambda i: int(masks[uids[i]].sum()) if uids[i] in masks else -1)
    if not 0 <= index < len(uids):
        raise InvalidInput(f"slice {index} is outside the series (0 to {len(uids) - 1})")
    ds = pydicom.dcmread(headers[index][1])
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise InvalidInput("the viewer shows single-frame greyscale slices only")
    grey = _window(ds, pixels)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    mask = masks.get(uids[index])
    marked = 0
    if mask is not None and mask.shape == grey.shape:
        rgb[mask] = rgb[mask] * (1 - _ALPHA) + _OVERLAY * _ALPHA
        marked = int(mask.sum())
    return SliceImage(encode_png(rgb.astype(np.uint8)), index, len(uids), marked)


@dataclass(frozen=True)
class Finding:
    path: str
    """Where in the report: the concept names of the containers above it."""
    name: str
    value: str
    unit: str = ""


def _value(item: Any) -> tuple[str, str]:
    kind = str(item.get("ValueType", ""))
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        unit = (
            measured.MeasurementUnitsCodeSequence[0].CodeValue
            if measured.get("MeasurementUnitsCodeSequence")
            else ""
        )
        return str(measured.NumericValue), str(unit)
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].CodeMeaning), ""
    if kind in ("TEXT", "UIDREF", "DATETIME", "DATE", "TIME", "PNAME"):
        for keyword in ("TextValue", "UID", "DateTime", "Date", "Time", "PersonName"):
            if keyword in item:
                return str(item.get(keyword)), ""
    if kind == "IMAGE" and item.get("ReferencedSOPSequence"):
        return f"image {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID}", ""
    return "", ""


def sr_findings(sr_path: Path, limit: int = 500) -> list[Finding]:
    """The SR's content tree flattened to rows (containers give the path)."""
    ds = pydicom.dcmread(sr_path)
    rows: list[Finding] = []

    def walk(items: Any, path: str) -> None:
        for item in items:
            if len(rows) >= limit:
                return
            name = (
                str(item.ConceptNameCodeSequence[0].CodeMeaning)
                if item.get("ConceptNameCodeSequence")
                else ""
            )
            if str(item.get("ValueType", "")) == "CONTAINER":
                walk(item.get("ContentSequence", []), f"{path} › {name}" if path else name)
                continue
            value, unit = _value(item)
            if value:
                rows.append(Finding(path, name, value, unit))
            if item.get("ContentSequence"):
                walk(item.ContentSequence, f"{path} › {name}" if path else name)

    walk(ds.get("ContentSequence", []), "")
    return rows
