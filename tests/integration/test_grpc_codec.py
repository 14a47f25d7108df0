"""gRPC message converters, checked against tritonclient's own messages in the same process.

Importing ``tritonclient.grpc`` beside medserve's generated messages proves the two sets of
descriptors live together in protobuf's default pool; building requests with tritonclient's
message classes and parsing them with ours proves the wire format matches.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton
from tritonclient.utils import serialize_byte_tensor

from medserve.protocol import grpc_codec
from medserve.protocol.grpc_messages import SERVICE_NAME, pb
from medserve.values.errors import InvalidInput
from medserve.values.types import (
    InferenceResponse,
    ModelMetadata,
    RepositoryEntry,
    Tensor,
    TensorMetadata,
)

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    dtype = np.dtype(NUMERIC[datatype])
    values: np.ndarray = np.arange(int(np.prod(shape))).reshape(shape)
    if dtype == np.bool_:
        return np.asarray(values % 2 == 0)
    if dtype.kind == "i":
        return (values - 3).astype(dtype)
    if dtype.kind == "f":
        return (values * 0.5 - 1.25).astype(dtype)
    return values.astype(dtype)


def _to_ours(message: Any) -> Any:
    """Serialize a tritonclient message and parse the bytes with medserve's class of that name."""
    ours = getattr(pb, type(message).__name__)
    return ours.FromString(message.SerializeToString())


def _raw_request(*tensors: tuple[str, str, list[int], bytes]) -> triton.ModelInferRequest:
    request = triton.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def _decode(request: triton.ModelInferRequest) -> Any:
    return grpc_codec.decode_infer_request(_to_ours(request))


# ------------------------------------------------------------------ the proto itself


def test_generated_messages_coexist_with_tritonclient() -> None:
    assert triton_grpc.InferenceServerClient is not None
    assert pb.ModelInferRequest.DESCRIPTOR.full_name == "medserve.oip.ModelInferRequest"
    assert triton.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"
    assert pb.DESCRIPTOR.name == "medserve/protocol/_generated/open_inference.proto"
    assert triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == SERVICE_NAME


def _triton_counterpart(full_name: str) -> Any:
    relative = full_name.removeprefix("medserve.oip.")
    for pool_file in (triton.DESCRIPTOR, triton_config.DESCRIPTOR):
        try:
            return pool_file.pool.FindMessageTypeByName(f"inference.{relative}")
        except KeyError:
            continue
    return pool_file.pool.FindEnumTypeByName(f"inference.{relative}")


def _check_enum(ours: EnumDescriptor) -> None:
    theirs = _triton_counterpart(ours.full_name)
    for value in ours.values:
        assert theirs.values_by_name[value.name].number == value.number, value.full_name


def _check_message(ours: Descriptor) -> None:
    theirs = _triton_counterpart(ours.full_name)
    for field in ours.fields:
        other: FieldDescriptor = theirs.fields_by_name[field.name]
        where = field.full_name
        assert other.number == field.number, where
        assert other.type == field.type, where
        assert other.is_repeated == field.is_repeated, where
        assert (other.containing_oneof is None) == (field.containing_oneof is None), where
        if field.message_type is not None:
            assert other.message_type.name == field.message_type.name, where
        if field.enum_type is not None:
            assert other.enum_type.name == field.enum_type.name, where
    for nested in ours.nested_types:
        if nested.GetOptions().map_entry:
            continue
        _check_message(nested)
    for enum in ours.enum_types:
        _check_enum(enum)


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_message_matches_triton_field_for_field(name: str) -> None:
    _check_message(pb.DESCRIPTOR.message_types_by_name[name])


def test_datatype_enum_matches_triton() -> None:
    _check_enum(pb.DESCRIPTOR.enum_types_by_name["DataType"])
    assert pb.TYPE_BF16 == 14 and pb.TYPE_STRING == 13 and pb.TYPE_BOOL == 1


def test_service_methods_match_triton() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert other.input_type.name == method.input_type.name
        assert other.output_type.name == method.output_type.name
        assert other.client_streaming == method.client_streaming
        assert other.server_streaming == method.server_streaming


# ------------------------------------------------------------------ requests: raw contents


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_raw_numeric_input_is_a_view_over_the_received_bytes(datatype: str) -> None:
    array = _sample(datatype)
    request = _decode(_raw_request(("x", datatype, [2, 3], array.tobytes())))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 3))
    assert tensor.data.dtype == array.dtype
    np.testing.assert_array_equal(tensor.data, array)
    assert not tensor.data.flags.owndata  # np.frombuffer view, no per-element copy


def test_raw_bytes_input() -> None:
    elements = np.array([b"alpha", b"", "gamma \u00e9".encode()], dtype=object)
    raw = serialize_byte_tensor(elements).item()
    request = _decode(_raw_request(("text", "BYTES", [3, 1], raw)))
    tensor = request.inputs[0]
    assert tensor.shape == (3, 1)
    assert tensor.data.dtype == object
    assert list(tensor.data.reshape(-1)) == list(elements)


def test_raw_bf16_input_holds_the_bfloat16_bits_as_uint16() -> None:
    values = np.array([[1.0, -2.5], [0.15625, 3.0e38]], dtype=ml_dtypes.bfloat16)
    request = _decode(_raw_request(("h", "BF16", [2, 2], values.tobytes())))
    data = request.inputs[0].data
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data.view(ml_dtypes.bfloat16), values)


def test_request_fields_parameters_and_requested_outputs() -> None:
    request = _raw_request(("x", "FP32", [1], np.float32(1).tobytes()))
    request.parameters["priority"].uint64_param = 2**63 + 5
    request.parameters["sequence_start"].bool_param = True
    request.parameters["timeout"].int64_param = -7
    request.parameters["note"].string_param = "hello"
    request.parameters["ratio"].double_param = 0.25
    request.inputs[0].parameters["tag"].string_param = "in"
    wanted = request.outputs.add(name="probs")
    wanted.parameters["classification"].int64_param = 3
    request.outputs.add(name="mask")

    decoded = _decode(request)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "req-1")
    assert decoded.parameters == {
        "priority": 2**63 + 5,
        "sequence_start": True,
        "timeout": -7,
        "note": "hello",
        "ratio": 0.25,
    }
    assert decoded.inputs[0].parameters == {"tag": "in"}
    assert [(o.name, o.parameters) for o in decoded.outputs] == [
        ("probs", {"classification": 3}),
        ("mask", {}),
    ]


def test_several_raw_inputs_keep_their_order() -> None:
    a = np.arange(4, dtype=np.int64)
    b = np.ones((2, 2), dtype=np.float64)
    decoded = _decode(_raw_request(("a", "INT64", [4], a.tobytes()), ("b", "FP64", [2, 2], b.tobytes())))
    np.testing.assert_array_equal(decoded.inputs[0].data, a)
    np.testing.assert_array_equal(decoded.inputs[1].data, b)


# ------------------------------------------------------------------ requests: typed contents

_TYPED = [
    ("BOOL", "bool_contents", [True, False, True, True, False, False]),
    ("INT8", "int_contents", [-128, -1, 0, 1, 2, 127]),
    ("INT16", "int_contents", [-32768, -1, 0, 1, 2, 32767]),
    ("INT32", "int_contents", [-(2**31), -1, 0, 1, 2, 2**31 - 1]),
    ("INT64", "int64_contents", [-(2**63), -1, 0, 1, 2, 2**63 - 1]),
    ("UINT8", "uint_contents", [0, 1, 2, 3, 4, 255]),
    ("UINT16", "uint_contents", [0, 1, 2, 3, 4, 65535]),
    ("UINT32", "uint_contents", [0, 1, 2, 3, 4, 2**32 - 1]),
    ("UINT64", "uint64_contents", [0, 1, 2, 3, 4, 2**64 - 1]),
    ("FP32", "fp32_contents", [0.5, -1.0, 2.25, 3.0, 4.0, 1e30]),
    ("FP64", "fp64_contents", [0.1, -1.0, 2.25, 3.0, 4.0, 1e300]),
]


@pytest.mark.parametrize(("datatype", "field", "values"), _TYPED)
def test_typed_contents(datatype: str, field: str, values: list[Any]) -> None:
    request = triton.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    getattr(tensor.contents, field).extend(values)
    data = _decode(request).inputs[0].data
    expected: np.ndarray = np.array(values, dtype=NUMERIC[datatype]).reshape(2, 3)
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)


def test_typed_bytes_contents() -> None:
    request = triton.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="s", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"one", b"two"])
    data = _decode(request).inputs[0].data
    assert data.dtype == object and list(data) == [b"one", b"two"]


def test_empty_tensor_needs_no_data() -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[0, 3])
    assert _decode(request).inputs[0].data.shape == (0, 3)


# ------------------------------------------------------------------ requests: invalid input


def _error(request: triton.ModelInferRequest) -> str:
    with pytest.raises(InvalidInput) as caught:
        _decode(request)
    return str(caught.value)


def test_raw_size_mismatch_names_tensor_sent_and_expected() -> None:
    message = _error(_raw_request(("image", "FP32", [2, 3], b"\x00" * 20)))
    assert "'image'" in message and "24 bytes" in message and "20" in message


def test_raw_entry_count_must_match_inputs() -> None:
    request = _raw_request(("a", "FP32", [1], b"\x00" * 4))
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    message = _error(request)
    assert "1 entries" in message and "2 input(s)" in message and "one entry per such input" in message


def test_raw_and_typed_contents_together_are_refused() -> None:
    request = _raw_request(("a", "FP32", [1], b"\x00" * 4))
    request.inputs[0].contents.fp32_contents.append(1.0)
    assert "both" in _error(request)


def test_typed_count_mismatch() -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend([1, 2, 3])
    message = _error(request)
    assert "'x'" in message and "4 element(s)" in message and "holds 3" in message


def test_typed_contents_in_the_wrong_field() -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.int_contents.append(1)
    message = _error(request)
    assert "fp32_contents" in message and "int_contents" in message


def test_typed_value_out_of_range_for_narrow_integer() -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    message = _error(request)
    assert "'x'" in message and "300" in message and "127" in message


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_precision_has_no_typed_field(datatype: str) -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=[1]).contents.fp32_contents.append(1.0)
    assert "raw_input_contents" in _error(request)


def test_missing_data() -> None:
    request = triton.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    message = _error(request)
    assert "'x'" in message and "no data" in message and "3 FP32" in message


def test_unknown_datatype_names_the_tensor() -> None:
    message = _error(_raw_request(("x", "FLOAT", [1], b"\x00" * 4)))
    assert "'x'" in message and "FLOAT" in message and "FP32" in message


def test_negative_dimension() -> None:
    assert "negative" in _error(_raw_request(("x", "FP32", [-1, 2], b"")))


def test_truncated_bytes_tensor() -> None:
    assert "'s'" in _error(_raw_request(("s", "BYTES", [1], b"\x05\x00\x00\x00ab")))


# ------------------------------------------------------------------ responses


def _round_trip(response: InferenceResponse) -> triton_grpc.InferResult:
    message = grpc_codec.encode_infer_response(response)
    return triton_grpc.InferResult(triton.ModelInferResponse.FromString(message.SerializeToString()))


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_response_numeric_outputs_travel_raw(datatype: str) -> None:
    array = _sample(datatype)
    result = _round_trip(InferenceResponse("m", "1", "r", [Tensor("y", datatype, array.shape, array)]))
    assert len(result.get_response().raw_output_contents) == 1
    output = result.get_output("y")
    assert (output.datatype, list(output.shape)) == (datatype, [2, 3])
    np.testing.assert_array_equal(result.as_numpy("y"), array)


def test_response_non_contiguous_and_big_endian_arrays() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    result = _round_trip(InferenceResponse("m", "1", outputs=[Tensor("y", "INT32", (4, 3), array)]))
    np.testing.assert_array_equal(result.as_numpy("y"), array)


def test_response_bytes_and_bf16_outputs() -> None:
    text = np.array([[b"a", b"bc"], [b"", "d\u00e9".encode()]], dtype=object)
    half = np.array([1.5, -2.0, 0.0], dtype=ml_dtypes.bfloat16)
    response = InferenceResponse(
        "m",
        "1",
        "r",
        [
            Tensor("text", "BYTES", (2, 2), text),
            Tensor("half", "BF16", (3,), half.view(np.uint16)),
        ],
    )
    result = _round_trip(response)
    np.testing.assert_array_equal(result.as_numpy("text"), text)
    np.testing.assert_array_equal(result.as_numpy("half"), half)


def test_response_metadata_and_parameters() -> None:
    response = InferenceResponse(
        "m",
        "3",
        "abc",
        [Tensor("y", "FP32", (1,), np.zeros(1, np.float32), {"binary_data": True})],
        {
            "flag": np.bool_(True),
            "count": np.int64(4),
            "big": 2**64 - 1,
            "ratio": np.float32(0.5),
            "name": "x",
            "labels": ["a", "b"],
            "skipped": None,
        },
    )
    message = triton.ModelInferResponse.FromString(
        grpc_codec.encode_infer_response(response).SerializeToString()
    )
    assert (message.model_name, message.model_version, message.id) == ("m", "3", "abc")
    params = message.parameters
    assert params["flag"].bool_param is True
    assert params["count"].int64_param == 4
    assert params["big"].uint64_param == 2**64 - 1
    assert params["ratio"].double_param == 0.5
    assert params["name"].string_param == "x"
    assert params["labels"].string_param == '["a", "b"]'
    assert "skipped" not in params
    assert message.outputs[0].parameters["binary_data"].bool_param is True


def test_stream_error_keeps_the_request_identity() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="1", id="7")
    reply = triton.ModelStreamInferResponse.FromString(
        grpc_codec.encode_stream_error(request, "input 'x': bad").SerializeToString()
    )
    assert reply.error_message == "input 'x': bad"
    assert (reply.infer_response.model_name, reply.infer_response.id) == ("m", "7")


# ------------------------------------------------------------------ metadata, config, statistics


def _as_triton(message: Any, triton_type: Any) -> dict[str, Any]:
    parsed = triton_type.FromString(message.SerializeToString())
    as_dict: dict[str, Any] = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    return as_dict


def test_server_and_model_metadata() -> None:
    server = grpc_codec.encode_server_metadata(
        {"name": "medserve", "version": "0.1.0", "extensions": ["model_repository"]}
    )
    assert _as_triton(server, triton.ServerMetadataResponse) == {
        "name": "medserve",
        "version": "0.1.0",
        "extensions": ["model_repository"],
    }
    metadata = ModelMetadata(
        "m",
        ["1", "2"],
        "onnxruntime_onnx",
        [TensorMetadata("x", "FP32", [-1, 3, 224, 224])],
        [TensorMetadata("y", "FP32", [-1, 14])],
    )
    as_triton = _as_triton(grpc_codec.encode_model_metadata(metadata), triton.ModelMetadataResponse)
    assert as_triton["versions"] == ["1", "2"]
    assert as_triton["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}]


def test_model_config_from_triton_json_form() -> None:
    config = {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "version_policy": {"latest": {"num_versions": 2}},
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3, -1], "format": "FORMAT_NCHW"}],
        "output": [{"name": "y", "data_type": "TYPE_BF16", "dims": [14], "label_filename": "l.txt"}],
        "instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [4, 8]},
        "parameters": {"threads": {"string_value": "4"}},
        "model_transaction_policy": {"decoupled": False},
        "optimization": {"priority": "PRIORITY_MAX"},  # not declared by medserve: dropped
    }
    response = grpc_codec.encode_model_config(config)
    parsed = triton.ModelConfigResponse.FromString(response.SerializeToString()).config
    assert parsed.max_batch_size == 8
    assert parsed.backend == "onnxruntime"
    assert parsed.version_policy.latest.num_versions == 2
    assert parsed.input[0].data_type == triton_config.TYPE_FP32
    assert list(parsed.input[0].dims) == [3, -1]
    assert parsed.input[0].format == triton_config.ModelInput.FORMAT_NCHW
    assert parsed.output[0].data_type == triton_config.TYPE_BF16
    assert parsed.instance_group[0].kind == triton_config.ModelInstanceGroup.KIND_GPU
    assert list(parsed.instance_group[0].gpus) == [0, 1]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert parsed.parameters["threads"].string_value == "4"
    assert not parsed.HasField("optimization")


def test_model_statistics_from_triton_json_form() -> None:
    duration = {"count": 3, "ns": 1500}
    stats = {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "last_inference": 1700000000000,
                "inference_count": 12,
                "execution_count": 3,
                "inference_stats": {
                    "success": duration,
                    "fail": {"count": 0, "ns": 0},
                    "queue": duration,
                    "compute_input": duration,
                    "compute_infer": duration,
                    "compute_output": duration,
                },
                "batch_stats": [{"batch_size": 4, "compute_infer": duration}],
                "memory_usage": [{"type": "GPU", "id": 0, "byte_size": 1024}],
            }
        ]
    }
    parsed = triton.ModelStatisticsResponse.FromString(
        grpc_codec.encode_model_statistics(stats).SerializeToString()
    )
    (model,) = parsed.model_stats
    assert (model.name, model.inference_count, model.execution_count) == ("m", 12, 3)
    assert model.inference_stats.queue.ns == 1500
    assert model.batch_stats[0].batch_size == 4
    assert model.memory_usage[0].byte_size == 1024


def test_repository_index() -> None:
    entries = [RepositoryEntry("a", "1", "READY"), RepositoryEntry("b", "", "UNAVAILABLE", "bad config")]
    parsed = _as_triton(grpc_codec.encode_repository_index(entries), triton.RepositoryIndexResponse)
    assert parsed["models"] == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "state": "UNAVAILABLE", "reason": "bad config"},
    ]
