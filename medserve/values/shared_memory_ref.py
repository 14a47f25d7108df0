"""Where a tensor lies in a shared memory region: the request and output parameters of Triton's
shared memory extension (``shared_memory_region``, ``shared_memory_offset``, ``shared_memory_byte_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medserve.values.errors import InvalidInput

#: Request and output parameters that place a tensor in a region.
REGION, OFFSET, BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


@dataclass(frozen=True, slots=True)
class RegionRef:
    """Where a tensor lies: ``byte_size`` bytes from ``offset`` in region ``name``."""

    name: str
    offset: int
    byte_size: int


def region_of(parameters: dict[str, Any], where: str) -> RegionRef | None:
    """The region a tensor's parameters name, or None; :class:`InvalidInput` naming a bad parameter."""
    name = parameters.get(REGION)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: '{REGION}' must be a region name")
    values: list[int] = []
    for key, default in ((OFFSET, 0), (BYTE_SIZE, None)):
        value = parameters.get(key, default)
        if value is None:
            raise InvalidInput(f"{where}: '{BYTE_SIZE}' is required with '{REGION}'")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
        values.append(value)
    return RegionRef(name, values[0], values[1])


def in_shared_memory(parameters: dict[str, Any]) -> bool:
    """Whether an output's data was written to a region (its response entry carries no data)."""
    return REGION in parameters
