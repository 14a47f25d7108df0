"""Open Inference Protocol REST codec: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by the binary data of inputs whose
``parameters.binary_data_size`` is set (in input order); ``Inference-Header-Content-Length`` gives
the JSON header's length. Binary inputs become NumPy views over the body, without copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from medserve.protocol.validation import (
    DEFAULT_MAX_ELEMENTS,
    check_name,
    check_request_id,
    check_shape,
    clipped,
)
from medserve.values.datatypes import (
    bf16_bits_to_float,
    element_count,
    float_to_bf16_bits,
    from_raw_bytes,
    numpy_dtype,
    raw_bytes,
)
from medserve.values.errors import InvalidInput
from medserve.values.shared_memory_ref import in_shared_memory
from medserve.values.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"


def loads(data: bytes | memoryview, what: str = "request body") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _shape(name: str, raw: Any, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise InvalidInput(f"input '{clipped(name)}': 'shape' must be a list of integers, got {clipped(raw)}")
    return check_shape(name, raw, max_elements)


def _json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from JSON ``data``, flat or nested, in row-major order."""
    count = element_count(shape)
    try:
        if datatype == "BYTES":
            flat = np.array(data, dtype=object).reshape(-1)
            out = np.empty(flat.size, dtype=object)
            for i, item in enumerate(flat):
                if not isinstance(item, str):
                    raise InvalidInput(
                        f"input '{name}': BYTES elements in JSON must be strings, got {clipped(item)}"
                    )
                out[i] = item.encode("utf-8")
            array = out
        elif datatype == "BF16":
            array = float_to_bf16_bits(np.array(data, dtype=np.float32)).reshape(-1)
        else:
            dtype = numpy_dtype(datatype)
            if datatype == "BOOL":
                flat_values = np.array(data, dtype=object).reshape(-1)
                if not all(isinstance(v, bool) for v in flat_values):
                    raise InvalidInput(f"input '{name}': BOOL data must be true/false values")
            array = np.array(data, dtype=dtype).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"input '{name}': data cannot be read as {datatype}: {clipped(str(exc))}"
        ) from None
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} element(s) but 'data' holds {array.size}"
        )
    return array.reshape(shape)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return raw


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str = "",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> InferenceRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensor data); every tensor's shape
    passes :func:`~medserve.protocol.validation.check_shape` with ``max_elements``."""
    header: bytes | memoryview
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes")
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    # a plain JSON body is the request body; only with the binary extension is there a "header"
    where = "request body" if header_length is None else f"JSON header (the first {header_length} bytes)"
    doc = loads(header, where)
    if not isinstance(doc, dict):
        raise InvalidInput("inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inference request needs a non-empty 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"inputs[{index}] must be an object")
        name = raw.get("name")
        datatype = raw.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{index}] needs a 'name' string")
        check_name(f"inputs[{index}]", name)
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}' needs a 'datatype' string")
        numpy_dtype(clipped(datatype))
        shape = _shape(name, raw.get("shape"), max_elements)
        parameters = _parameters(raw.get("parameters"), f"input '{name}'")
        size = parameters.pop("binary_data_size", None)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the body: only "
                    f"{len(binary) - offset} byte(s) of binary data remain (body truncated?)"
                )
            data = from_raw_bytes(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif in_shared_memory(parameters):
            data = np.empty(0, np.uint8)  # read from the region by the dataplane
        else:
            if "data" not in raw:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            data = _json_tensor(name, datatype, shape, raw["data"])
        inputs.append(Tensor(name, datatype, shape, data, parameters))
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} byte(s) of binary data follow the inputs' binary_data_size total"
        )
    request_parameters = _parameters(doc.get("parameters"), "request")
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None and not isinstance(raw_outputs, list):
        raise InvalidInput(f"'outputs' must be a list of objects, got {clipped(raw_outputs)}")
    outputs: list[RequestedOutput] = []
    for index, raw in enumerate(raw_outputs or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
        outputs.append(
            RequestedOutput(raw["name"], _parameters(raw.get("parameters"), f"output '{raw['name']}'"))
        )
    request_id = doc.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidInput(f"'id' must be a string, got {clipped(request_id)}")
        check_request_id(request_id)
    return InferenceRequest(
        model_name,
        model_version,
        request_id or "",
        inputs,
        outputs,
        request_parameters,
    )


def _json_data(tensor: Tensor) -> Any:
    data = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        values = []
        for item in data:
            raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"output '{tensor.name}' holds bytes that are not UTF-8 text; request it with "
                    "binary_data: true"
                ) from None
        return values
    if tensor.datatype == "BF16":
        return bf16_bits_to_float(data)
    return np.ascontiguousarray(data)


def encode_infer_response(response: InferenceResponse, request: InferenceRequest) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary data, the JSON header's length."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    wants_binary = {o.name: bool(o.parameters.get("binary_data", binary_default)) for o in request.outputs}
    chunks: list[bytes | memoryview] = []
    outputs: list[dict[str, Any]] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if in_shared_memory(tensor.parameters):
            pass  # the data is in the client's region; as Triton, the entry has neither data nor parameters
        elif wants_binary.get(tensor.name, binary_default):
            raw = raw_bytes(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = dumps(doc)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
