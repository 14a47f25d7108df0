"""Open Inference Protocol datatypes and their NumPy representations.

Numeric tensors are plain NumPy arrays. BF16 has no NumPy dtype of its own here: its tensors travel as
``uint16`` arrays holding the raw bfloat16 bits, tagged ``BF16`` by the tensor that carries them. BYTES
tensors are NumPy object arrays of ``bytes``; on the wire each element is a 4-byte little-endian length
followed by the bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from medserve.values.errors import InvalidInput

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}

DATATYPES: tuple[str, ...] = tuple(_NUMPY_DTYPES)

_FROM_NUMPY: dict[np.dtype, str] = {
    dt: name for name, dt in _NUMPY_DTYPES.items() if name not in ("BF16", "BYTES")
}


#: data_type names of Triton's model configuration (``GET .../config``) for each OIP datatype
TRITON_CONFIG_TYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype that holds tensors of an OIP ``datatype``."""
    try:
        return _NUMPY_DTYPES[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}") from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a NumPy array (object and string arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _FROM_NUMPY[array.dtype]
    except KeyError:
        raise InvalidInput(f"NumPy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (BYTES has none)."""
    if datatype == "BYTES":
        raise ValueError("BYTES elements have no fixed size")
    return numpy_dtype(datatype).itemsize


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def deserialize_bytes_tensor(buffer: bytes | memoryview, name: str) -> np.ndarray:
    """Decode length-prefixed BYTES elements into a flat object array."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(
                f"input '{name}': BYTES data is truncated: a 4-byte length prefix needs "
                f"{offset + 4 - end} more byte(s)"
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes but only "
                f"{end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode an array of bytes/str elements as length-prefixed BYTES in row-major order."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def to_bytes_elements(array: np.ndarray) -> np.ndarray:
    """Normalise a BYTES tensor to an object array of ``bytes``."""
    if array.dtype == object and all(isinstance(v, bytes) for v in array.reshape(-1)):
        return array
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out


def raw_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The wire bytes of a tensor: raw little-endian elements, or length-prefixed BYTES."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    if contiguous.size == 0:  # a memoryview with a 0 in its shape cannot be cast
        return b""
    return contiguous.data.cast("B")


def from_raw_bytes(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """A NumPy view over received bytes, checked against the declared shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        flat = deserialize_bytes_tensor(buffer, name)
        if flat.size != count:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {count} BYTES element(s) but the data "
                f"holds {flat.size}"
            )
        return flat.reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes but "
            f"{len(buffer)} were sent"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the raw ``uint16`` bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0)
    return rounded


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits to float32."""
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
