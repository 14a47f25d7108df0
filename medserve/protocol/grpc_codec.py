"""Converters between the Open Inference Protocol gRPC messages and medserve's core values.

Pure functions, one per direction. Raw tensor bytes become NumPy views (no per-element Python);
typed ``contents`` are the slow path clients may use for small tensors. Every validation failure
raises :class:`InvalidInput` naming the tensor, what was sent and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format

from medserve.protocol.grpc_messages import pb
from medserve.protocol.validation import (
    DEFAULT_MAX_ELEMENTS,
    check_name,
    check_request_id,
    check_shape,
    clipped,
)
from medserve.values import datatypes
from medserve.values.errors import InvalidInput
from medserve.values.shared_memory_ref import in_shared_memory
from medserve.values.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RepositoryEntry,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)

# Which InferTensorContents field carries each datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The NumPy dtype protobuf's repeated field holds before narrowing to the tensor's dtype.
_WIDE_DTYPE: dict[str, np.dtype[Any]] = {
    "int_contents": np.dtype(np.int32),
    "uint_contents": np.dtype(np.uint32),
}

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


# ------------------------------------------------------------------ parameters


def parameters_from_pb(params: Mapping[str, pb.InferParameter]) -> Parameters:
    """An ``InferParameter`` map as plain Python values."""
    out: Parameters = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, choice) if choice is not None else None
    return out


def set_parameters(target: MutableMapping[str, pb.InferParameter], params: Parameters) -> None:
    """Fill an ``InferParameter`` map from plain values (bool, int, float, str; others as JSON)."""
    for key, value in params.items():
        if value is None:
            continue
        param = target[key]
        if isinstance(value, bool | np.bool_):
            param.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            number = int(value)
            if _INT64_MIN <= number <= _INT64_MAX:
                param.int64_param = number
            elif 0 <= number <= _UINT64_MAX:
                param.uint64_param = number
            else:
                param.string_param = str(number)
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, bytes):
            param.string_param = value.decode("utf-8", errors="replace")
        else:
            param.string_param = json.dumps(value, default=str)


# ------------------------------------------------------------------ request: wire -> core


def _shape_of(tensor: pb.ModelInferRequest.InferInputTensor, max_elements: int) -> tuple[int, ...]:
    return check_shape(tensor.name, [int(dim) for dim in tensor.shape], max_elements)


def _check_datatype(tensor: pb.ModelInferRequest.InferInputTensor) -> str:
    datatype = tensor.datatype
    if datatype not in datatypes.DATATYPES:
        raise InvalidInput(
            f"input '{tensor.name}': unknown datatype '{clipped(datatype)}'; "
            f"expected one of {', '.join(datatypes.DATATYPES)}"
        )
    return datatype


def _contents_fields(contents: pb.InferTensorContents) -> list[str]:
    return [field.name for field, _ in contents.ListFields()]


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, datatype: str, shape: tuple[int, ...]
) -> np.ndarray:
    name = tensor.name
    count = datatypes.element_count(shape)
    sent = _contents_fields(tensor.contents)
    expected_field = CONTENTS_FIELD.get(datatype)
    if expected_field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send its data in raw_input_contents"
        )
    stray = [field for field in sent if field != expected_field]
    if stray:
        raise InvalidInput(
            f"input '{name}': datatype {datatype} expects its data in contents.{expected_field} "
            f"but contents.{', contents.'.join(stray)} was sent"
        )
    if not sent and count:
        raise InvalidInput(
            f"input '{name}': no data; expected {count} {datatype} element(s) in "
            f"contents.{expected_field} or raw_input_contents"
        )
    values: Sequence[Any] = getattr(tensor.contents, expected_field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} element(s) but "
            f"contents.{expected_field} holds {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = datatypes.numpy_dtype(datatype)
    wide = _WIDE_DTYPE.get(expected_field)
    if wide is None:
        return np.asarray(values, dtype=dtype).reshape(shape)
    held = np.asarray(values, dtype=wide)
    info = np.iinfo(dtype)
    if held.size and (int(held.min()) < info.min or int(held.max()) > info.max):
        raise InvalidInput(
            f"input '{name}': contents.{expected_field} holds values in "
            f"[{int(held.min())}, {int(held.max())}] but {datatype} holds only "
            f"[{info.min}, {info.max}]"
        )
    return held.astype(dtype).reshape(shape)


def decode_infer_request(
    message: pb.ModelInferRequest, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> InferenceRequest:
    """A ``ModelInferRequest`` as an :class:`InferenceRequest` (raw bytes viewed, not copied); every
    tensor's shape passes :func:`~medserve.protocol.validation.check_shape` with ``max_elements``."""
    if message.id:
        check_request_id(message.id)
    raw = message.raw_input_contents
    # inputs in a shared memory region carry no raw_input_contents entry (as Triton's clients send them)
    in_region = [in_shared_memory(parameters_from_pb(t.parameters)) for t in message.inputs]
    carried = len(message.inputs) - sum(in_region)
    if raw and len(raw) != carried:
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} entries but the request has "
            f"{carried} input(s) not in shared memory; when raw_input_contents is used it needs "
            "exactly one entry per such input, in the order of the inputs"
        )
    raw_index = 0
    inputs: list[Tensor] = []
    for index, tensor in enumerate(message.inputs):
        check_name(f"inputs[{index}]", tensor.name)
        datatype = _check_datatype(tensor)
        shape = _shape_of(tensor, max_elements)
        if in_region[index]:
            data = np.empty(0, np.uint8)  # read from the region by the dataplane
        elif raw:
            sent = _contents_fields(tensor.contents)
            if sent:
                raise InvalidInput(
                    f"input '{tensor.name}': data sent both in contents.{sent[0]} and in "
                    "raw_input_contents; use one or the other"
                )
            data = datatypes.from_raw_bytes(raw[raw_index], datatype, shape, tensor.name)
            raw_index += 1
        else:
            data = _from_contents(tensor, datatype, shape)
        inputs.append(
            Tensor(
                name=tensor.name,
                datatype=datatype,
                shape=shape,
                data=data,
                parameters=parameters_from_pb(tensor.parameters),
            )
        )
    outputs = [
        RequestedOutput(name=out.name, parameters=parameters_from_pb(out.parameters))
        for out in message.outputs
    ]
    return InferenceRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters_from_pb(message.parameters),
    )


# ------------------------------------------------------------------ response: core -> wire


def _wire_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return datatypes.serialize_bytes_tensor(tensor.data)
    # Protobuf stores bytes fields as ``bytes``: one copy is unavoidable here.
    return bytes(datatypes.raw_bytes(tensor.data, tensor.datatype))


def encode_infer_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """An :class:`InferenceResponse` as a ``ModelInferResponse``; data always in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    set_parameters(message.parameters, response.parameters)
    for tensor in response.outputs:
        output = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=[int(d) for d in tensor.shape]
        )
        set_parameters(output.parameters, tensor.parameters)
        # an output written to a shared memory region keeps its place with an empty entry
        in_region = in_shared_memory(tensor.parameters)
        message.raw_output_contents.append(b"" if in_region else _wire_bytes(tensor))
    return message


def encode_stream_error(message: pb.ModelInferRequest, error: str) -> pb.ModelStreamInferResponse:
    """A stream answer carrying an error, with the request's model and id for correlation."""
    reply = pb.ModelStreamInferResponse(error_message=error)
    reply.infer_response.model_name = message.model_name
    reply.infer_response.model_version = message.model_version
    reply.infer_response.id = message.id
    return reply


# ------------------------------------------------------------------ metadata, config, statistics


def encode_server_metadata(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=str(metadata.get("name", "")),
        version=str(metadata.get("version", "")),
        extensions=[str(ext) for ext in metadata.get("extensions", [])],
    )


def _tensor_metadata(
    tensors: Iterable[TensorMetadata],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=t.name, datatype=t.datatype, shape=[int(d) for d in t.shape]
        )
        for t in tensors
    ]


def encode_model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=_tensor_metadata(metadata.inputs),
        outputs=_tensor_metadata(metadata.outputs),
    )


def encode_model_config(config: Mapping[str, Any]) -> pb.ModelConfigResponse:
    """Triton's ModelConfig JSON form as a ``ModelConfigResponse`` (unknown keys are dropped)."""
    response = pb.ModelConfigResponse()
    json_format.ParseDict(dict(config), response.config, ignore_unknown_fields=True)
    return response


def encode_model_statistics(stats: Mapping[str, Any]) -> pb.ModelStatisticsResponse:
    """Triton's statistics JSON form (``{"model_stats": [...]}``) as a message."""
    response = pb.ModelStatisticsResponse()
    json_format.ParseDict(dict(stats), response, ignore_unknown_fields=True)
    return response


def encode_repository_index(entries: Iterable[RepositoryEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )


__all__ = [
    "CONTENTS_FIELD",
    "decode_infer_request",
    "encode_infer_response",
    "encode_model_config",
    "encode_model_metadata",
    "encode_model_statistics",
    "encode_repository_index",
    "encode_server_metadata",
    "encode_stream_error",
    "parameters_from_pb",
    "set_parameters",
]
