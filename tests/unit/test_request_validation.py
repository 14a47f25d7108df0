"""Bad input is refused as InvalidInput (a 4xx on every door), never a crash: the one shape rule of every
decoder, zero-size tensors in and out, wrong field types named, client strings clipped in errors, and a
seeded, bounded fuzz of the REST JSON, REST binary and gRPC decoders."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from medserve.protocol import grpc_codec, rest_codec
from medserve.protocol.grpc_messages import pb
from medserve.protocol.validation import ECHO_LIMIT, check_shape, clipped, safe_request_id
from medserve.values.datatypes import DATATYPES, raw_bytes
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HUGE = 2**62


def rest(doc: object, binary: bytes = b"", max_elements: int = 1 << 20) -> InferenceRequest:
    header = orjson.dumps(doc)
    body = header + binary
    return rest_codec.decode_infer_request(body, len(header) if binary else None, "m", "", max_elements)


def test_a_zero_dimension_beside_a_huge_one_is_refused_on_every_decoder() -> None:
    # NumPy raised ValueError ("array is too big") here: a 500 on REST, INTERNAL on gRPC
    tensor = {"name": "x", "datatype": "FP32", "shape": [0, HUGE], "data": []}
    with pytest.raises(InvalidInput, match="dimension 4611686018427387904"):
        rest({"inputs": [tensor]})
    binary = {"name": "x", "datatype": "FP32", "shape": [0, HUGE], "parameters": {"binary_data_size": 0}}
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        rest({"inputs": [binary]}, b"")
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[0, HUGE])
    message.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        grpc_codec.decode_infer_request(message, 1 << 20)


def test_the_shape_rule() -> None:
    assert check_shape("x", [0, 16], 100) == (0, 16)
    assert check_shape("x", [], 100) == ()
    for dims, needle in (
        ([-1, 2], "negative"),
        ([True], "integers"),
        ([11, 10], "110 elements"),
        ([101], "101"),
    ):
        with pytest.raises(InvalidInput, match=needle):
            check_shape("x", dims, 100)


def test_wrong_field_types_are_named() -> None:
    good = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    for doc, needle in (
        ({"inputs": [good], "outputs": 1}, "'outputs' must be a list"),
        ({"inputs": [good], "id": 7}, "'id' must be a string"),
        ({"inputs": [{**good, "shape": "1"}]}, "'shape' must be a list"),
        ({"inputs": [good], "id": "a\x00b"}, "control characters"),
    ):
        with pytest.raises(InvalidInput, match=needle):
            rest(doc)


def test_zero_size_tensors_decode_and_encode_on_every_door() -> None:
    request = rest({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 16], "data": []}]})
    assert request.inputs[0].data.shape == (0, 16)
    empty = np.zeros((0, 16), np.float32)
    # memoryview.cast failed on a 0 in the shape: every binary output and every gRPC answer
    assert bytes(raw_bytes(empty, "FP32")) == b""
    response = InferenceResponse("m", "1", "", [Tensor("y", "FP32", (0, 16), empty)])
    asked = InferenceRequest("m", "", "", [], [RequestedOutput("y", {"binary_data": True})], {})
    body, header_length = rest_codec.encode_infer_response(response, asked)
    assert header_length is not None and len(body) == header_length
    assert orjson.loads(body)["outputs"][0]["parameters"]["binary_data_size"] == 0
    message = grpc_codec.encode_infer_response(response)
    assert list(message.outputs[0].shape) == [0, 16] and message.raw_output_contents[0] == b""


def test_echoed_client_strings_are_clipped() -> None:
    long = "z" * 100_000
    assert len(clipped(long)) < ECHO_LIMIT + 40
    for doc in (
        {"inputs": [{"name": "x", "datatype": long, "shape": [1], "data": [1]}]},
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [{"k": long}]}]},
        {"inputs": [{"name": long, "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}], "outputs": long},
    ):
        with pytest.raises(InvalidInput) as caught:
            rest(doc)
        assert len(str(caught.value)) < 400, str(caught.value)[:200]
    assert safe_request_id("a\nb" + "c" * 1000) == "ab" + "c" * 254


# ---------------------------------------------------------------------------- fuzz

_dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2**31, 2**62, 2**63 - 1]))
_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8))
_json = st.recursive(
    _values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("INPUT0"), st.text(max_size=6), _values),
        "datatype": st.one_of(st.sampled_from(DATATYPES), _values),
        "shape": st.one_of(st.lists(_dims, max_size=4), _json),
    },
    optional={
        "data": _json,
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-2, 64), _values)}), _json
        ),
    },
)
_request = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(_tensor, max_size=3), _json)},
    optional={"outputs": _json, "id": _values, "parameters": _json},
)


@seed(20260401)
@settings(max_examples=300, deadline=None, database=None)
@given(doc=_request, binary=st.binary(max_size=64), garbage=st.binary(max_size=32))
def test_fuzzed_rest_requests_are_decoded_or_refused(
    doc: dict[str, object], binary: bytes, garbage: bytes
) -> None:
    header = json.dumps(doc).encode()  # the standard library writes any integer, and NaN
    for body, header_length in (
        (header, None),
        (header + binary, len(header)),
        (garbage, None),
        (header[:-1], None),
    ):
        with contextlib.suppress(InvalidInput):  # a 400 naming the problem; anything else: a 500
            rest_codec.decode_infer_request(body, header_length, "m", "", 4096)


@seed(20260402)
@settings(max_examples=300, deadline=None, database=None)
@given(
    shapes=st.lists(
        st.lists(_dims.filter(lambda d: d >= 0 and d < 2**63), max_size=4), min_size=1, max_size=3
    ),
    datatypes=st.lists(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=4)), min_size=1, max_size=3),
    raws=st.lists(st.binary(max_size=64), max_size=3),
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    garbage=st.binary(max_size=48),
)
def test_fuzzed_grpc_requests_are_decoded_or_refused(
    shapes: list[list[int]], datatypes: list[str], raws: list[bytes], ints: list[int], garbage: bytes
) -> None:
    message = pb.ModelInferRequest(model_name="m")
    for index, shape in enumerate(shapes):
        tensor = message.inputs.add(
            name=f"in{index}", datatype=datatypes[index % len(datatypes)], shape=shape
        )
        if not raws:
            tensor.contents.int_contents.extend(ints)
    message.raw_input_contents.extend(raws)
    for candidate in (message, _parsed_or_none(garbage)):
        if candidate is None:
            continue
        with contextlib.suppress(InvalidInput):  # INVALID_ARGUMENT naming the problem, not INTERNAL
            grpc_codec.decode_infer_request(candidate, 4096)


def _parsed_or_none(data: bytes) -> pb.ModelInferRequest | None:
    from google.protobuf.message import DecodeError

    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None


def test_a_bytes_tensor_decodes_with_its_length_prefixes() -> None:
    # the fuzz above must be able to reach a successful decode too: the path it guards is live
    data = struct.pack("<I", 2) + b"hi"
    doc = {
        "inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]
    }
    assert rest(doc, data).inputs[0].data.tolist() == [b"hi"]
