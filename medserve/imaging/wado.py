"""WADO-RS (PS3.18 10.4): metadata, frames and rendered images of catalog instances.

- metadata: each instance's header as DICOM JSON without its pixel data (a viewer asks for frames);
- frames: the requested frames decoded to native little-endian pixels (``application/octet-stream``,
  transfer syntax Explicit VR Little Endian), colour as RGB; 1-bit frames (a binary SEG) packed
  eight pixels a byte, as PS3.5 8.1.1 packs them;
- rendered: one frame (the first unless named) through the Modality LUT and the header's first VOI
  window (else the frame's own range), MONOCHROME1 inverted, as PNG or JPEG.

Instances themselves travel as stored: the transport streams their files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pack_bits, pixel_array

from medserve.values.errors import InvalidInput

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
RENDERED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def metadata(header: pydicom.Dataset) -> dict[str, Any]:
    """The header as DICOM JSON, file meta and bulk pixel data left out."""
    out = pydicom.Dataset()
    for element in header:
        if element.tag.group > 0x0002 and element.tag != 0x7FE00010:
            out.add(element)
    return out.to_json_dict(bulk_data_threshold=1 << 20)


def frame_numbers(text: str) -> list[int]:
    """``1,3,4`` → [1, 3, 4]; a 400 naming the bad entry otherwise."""
    numbers = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < 1:
            raise InvalidInput(f"frame list '{text[:64]}': '{part[:16]}' is not a frame number (1 or more)")
        numbers.append(int(part))
    return numbers


def _frame_count(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _load(path: Path, numbers: Sequence[int]) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise InvalidInput("the instance has no pixel data (no frames to retrieve or render)")
    count = _frame_count(ds)
    for number in numbers:
        if number > count:
            raise InvalidInput(f"frame {number} asked of an instance with {count} frame(s)")
    return ds


def _frame(ds: pydicom.Dataset, number: int) -> np.ndarray:
    if _frame_count(ds) == 1:
        return np.asarray(ds.pixel_array)
    return np.asarray(pixel_array(ds, index=number - 1))


def frames(path: Path, numbers: Sequence[int]) -> list[bytes]:
    """The frames ``numbers`` (1-based) of the instance at ``path``, as native pixel bytes."""
    ds = _load(path, numbers)
    out = []
    for number in numbers:
        array = _frame(ds, number)
        if int(ds.get("BitsAllocated", 8)) == 1:
            out.append(pack_bits(array.astype(np.uint8).ravel()))
        else:
            out.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return out


def render(path: Path, number: int, media_type: str, quality: int = 90) -> bytes:
    """Frame ``number`` of the instance at ``path`` as a PNG or JPEG a browser can show."""
    ds = _load(path, [number])
    array = _frame(ds, number)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        image = _to_uint8(array.astype(np.float64), float(array.min()), float(array.max()))
        picture = Image.fromarray(image, mode="RGB")
    else:
        picture = Image.fromarray(_greyscale(ds, array), mode="L")
    buffer = io.BytesIO()
    format_ = RENDERED_TYPES[media_type]
    picture.save(buffer, format=format_, **({"quality": quality} if format_ == "JPEG" else {}))
    return buffer.getvalue()


def _greyscale(ds: pydicom.Dataset, array: np.ndarray) -> np.ndarray:
    if int(ds.get("BitsAllocated", 8)) == 1:
        return (array.astype(np.uint8) * 255).astype(np.uint8)
    values = np.asarray(apply_modality_lut(array, ds), dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        low, high = centre - width / 2, centre + width / 2
    image = _to_uint8(values, low, high)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        image = 255 - image
    return image


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)


def _first(value: Any) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
