"""Transport-neutral request and response values of the Open Inference Protocol.

Every door decodes its wire format into these, and encodes its reply from them. Tensor data is a
NumPy array, usually a view over the received bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """A named tensor: its OIP datatype, shape and data (``data.shape == tuple(shape)``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with its parameters (``binary_data``, ``classification``)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """One inference request. ``deadline_ns``: the client's own deadline as the door received it (a
    gRPC deadline, the HTTP ``Request-Timeout`` header), absolute on ``time.perf_counter_ns``; None
    when the client gave none. The scheduler keeps the earliest of it, the ``timeout`` parameter and
    the priority class's deadline."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    deadline_ns: int | None = None


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RepositoryEntry:
    """One row of the repository index: a model version and its state."""

    name: str
    version: str
    state: str
    reason: str = ""
