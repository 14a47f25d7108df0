"""The checks every request decoder shares: tensor shapes, and how client text is echoed in errors.

One shape rule for every door (REST JSON, REST binary, gRPC): each dimension is an integer ≥ 0, no
dimension and no element count passes ``max_elements`` (a door passes its request size limit: no
tensor can hold more elements than its request has bytes, and zero-size tensors with absurd
dimensions are refused before NumPy sees them). Errors quote client strings through :func:`clipped`,
so an error text never grows with what a client sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medserve.values.errors import InvalidInput

#: The bound on a dimension and an element count when a decoder is given none (2^31 − 1, as ONNX
#: Runtime and Triton bound a dimension in practice).
DEFAULT_MAX_ELEMENTS = 2**31 - 1

#: The most characters of a client's string an error message quotes.
ECHO_LIMIT = 64

#: The longest tensor name and request id a request may carry (both are echoed and audited).
MAX_NAME_LENGTH = 256


def clipped(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text for an error message, cut to ``limit`` characters (with a count of the rest)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def check_shape(name: str, dims: Iterable[Any], max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[int, ...]:
    """The shape of input ``name`` as a tuple, or :class:`InvalidInput` naming what is wrong with it."""
    shape: list[int] = []
    for dim in dims:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise InvalidInput(
                f"input '{clipped(name)}': 'shape' must be a list of integers, got {clipped(dim)}"
            )
        shape.append(dim)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(
            f"input '{clipped(name)}': shape {clipped(shape)} has a negative dimension; "
            "request shapes must be concrete"
        )
    count = 1
    for dim in shape:
        if dim > max_elements:
            raise InvalidInput(
                f"input '{clipped(name)}': dimension {dim} of shape {clipped(shape)} exceeds the limit of "
                f"{max_elements} (a request cannot hold more elements than its size limit in bytes)"
            )
        count *= dim
    if count > max_elements:
        raise InvalidInput(
            f"input '{clipped(name)}': shape {clipped(shape)} holds {count} elements, more than the limit "
            f"of {max_elements}"
        )
    return tuple(shape)


def check_name(where: str, name: str) -> None:
    """Refuse a tensor name longer than :data:`MAX_NAME_LENGTH` (later messages quote the name whole)."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"{where}: 'name' has {len(name)} characters, more than the limit of {MAX_NAME_LENGTH}"
        )


def check_request_id(request_id: str) -> None:
    """Refuse a request id that is too long or holds control characters (it is echoed and audited)."""
    if len(request_id) > MAX_NAME_LENGTH:
        raise InvalidInput(f"'id' has {len(request_id)} characters, more than the limit of {MAX_NAME_LENGTH}")
    if not request_id.isprintable():
        raise InvalidInput(f"'id' holds control characters: {clipped(request_id)}")


def safe_request_id(raw: str) -> str:
    """A client's request id (a header) fit for the audit: printable characters only, at most
    :data:`MAX_NAME_LENGTH` of them."""
    return "".join(ch for ch in raw[: MAX_NAME_LENGTH * 4] if ch.isprintable())[:MAX_NAME_LENGTH]
