"""Triton's raw binary request: ``Inference-Header-Content-Length: 0`` and the body is the bytes of the
model's single input, with no JSON header.

The datatype and shape come from the model's metadata: a variable dimension (``-1``) is filled from
the body's size when it is the only one (for a batching model, the batch dimension), so a request of
``k`` rows of a ``[-1, 4]`` FP32 input is ``16k`` bytes. BYTES inputs are one element (the body, as
Triton takes it). Every output is answered as binary data, since the client sent no JSON to ask.
"""

from __future__ import annotations

from medserve.values.datatypes import element_count, from_raw_bytes, numpy_dtype
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceRequest, ModelMetadata, Tensor


def decode_raw_request(body: bytes, metadata: ModelMetadata, model_version: str = "") -> InferenceRequest:
    """The request a raw binary body makes for the model described by ``metadata``."""
    if len(metadata.inputs) != 1:
        raise InvalidInput(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; "
            f"'{metadata.name}' has {len(metadata.inputs)}"
        )
    declared = metadata.inputs[0]
    if declared.datatype == "BYTES":
        shape: tuple[int, ...] = (1,) * max(len(declared.shape), 1)
        data = from_raw_bytes(
            memoryview(len(body).to_bytes(4, "little") + body), "BYTES", shape, declared.name
        )
    else:
        shape = _shape(declared.name, declared.datatype, list(declared.shape), len(body))
        data = from_raw_bytes(memoryview(body), declared.datatype, shape, declared.name)
    return InferenceRequest(
        metadata.name,
        model_version,
        inputs=[Tensor(declared.name, declared.datatype, shape, data)],
        parameters={"binary_data_output": True},
    )


def _shape(name: str, datatype: str, dims: list[int], size: int) -> tuple[int, ...]:
    item = numpy_dtype(datatype).itemsize
    variable = [i for i, d in enumerate(dims) if d < 0]
    if len(variable) > 1:
        raise InvalidInput(
            f"input '{name}' has {len(variable)} variable dimensions {dims}: a raw binary request cannot "
            "say its shape; send a JSON header"
        )
    fixed = element_count(tuple(d for d in dims if d >= 0)) * item
    if variable:
        if fixed == 0 or size % fixed:
            raise InvalidInput(
                f"raw binary body of {size} bytes is not a whole number of {dims} {datatype} rows "
                f"({fixed} bytes each)"
            )
        dims[variable[0]] = size // fixed
    elif size != fixed:
        raise InvalidInput(f"input '{name}' {dims} {datatype} needs {fixed} bytes; the raw body has {size}")
    return tuple(dims)
