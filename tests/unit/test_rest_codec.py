"""The REST JSON codec and the binary tensor data extension, without sockets."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from medserve.protocol.rest_codec import decode_infer_request, encode_infer_response
from medserve.values.datatypes import (
    bf16_bits_to_float,
    deserialize_bytes_tensor,
    float_to_bf16_bits,
    serialize_bytes_tensor,
)
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceResponse, Tensor


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], **extra: object) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, d, s, b in inputs
            ],
            **extra,
        }
    ).encode()
    return header + b"".join(b for *_, b in inputs), len(header)


def test_json_flat_and_nested() -> None:
    body = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]},
                {"name": "b", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "c", "datatype": "BOOL", "shape": [2], "data": [True, False]},
                {"name": "d", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
            ],
        }
    ).encode()
    request = decode_infer_request(body, None, "m")
    a, b, c, d = (t.data for t in request.inputs)
    assert request.id == "7"
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32 and c.dtype == np.bool_
    assert d.tolist() == ["héllo".encode()]


def test_binary_inputs_are_views_over_the_body() -> None:
    data = np.arange(6, dtype=np.float32)
    body, length = binary_body([("x", "FP32", [2, 3], data.tobytes())])
    request = decode_infer_request(body, length, "m")
    x = request.inputs[0].data
    np.testing.assert_array_equal(x, data.reshape(2, 3))
    assert not x.flags.owndata


def test_binary_bytes_tensor() -> None:
    raw = serialize_bytes_tensor(np.array([b"ab", b"", b"\xff\x00"], dtype=object))
    body, length = binary_body([("s", "BYTES", [3], raw)])
    assert decode_infer_request(body, length, "m").inputs[0].data.tolist() == [b"ab", b"", b"\xff\x00"]


@pytest.mark.parametrize(
    ("body", "length", "needle"),
    [
        (b"{nope", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}', None, "neither 'data'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2], "data": []}]}', None, "negative"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}', None, "FP32"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}', None, "x"),
        (b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [3]}]}', None, "true/false"),
        (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [3]}]}', None, "strings"),
        (b"{}", 99, "Inference-Header-Content-Length"),
    ],
)
def test_malformed_requests(body: bytes, length: int | None, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        decode_infer_request(body, length, "m")


def test_truncated_and_trailing_binary_data() -> None:
    body, length = binary_body([("x", "FP32", [4], np.zeros(4, np.float32).tobytes())])
    with pytest.raises(InvalidInput, match="truncated"):
        decode_infer_request(body[:-1], length, "m")
    with pytest.raises(InvalidInput, match="follow"):
        decode_infer_request(body + b"\x00", length, "m")


def test_bytes_element_length_past_data() -> None:
    with pytest.raises(InvalidInput, match="declares 9 bytes"):
        deserialize_bytes_tensor(struct.pack("<I", 9) + b"abc", "s")


def test_response_json_and_binary() -> None:
    request = decode_infer_request(
        json.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
            }
        ).encode(),
        None,
        "m",
    )
    y = np.array([1.5, 2.5], np.float32)
    response = InferenceResponse(
        "m",
        "1",
        "",
        [
            Tensor("y", "FP32", (2,), y),
            Tensor("z", "BYTES", (1,), np.array([b"ok"], dtype=object)),
        ],
    )
    body, length = encode_infer_response(response, request)
    assert length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["data"] == ["ok"]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), y)


def test_request_level_binary_data_output() -> None:
    request = decode_infer_request(
        json.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                "parameters": {"binary_data_output": True},
            }
        ).encode(),
        None,
        "m",
    )
    response = InferenceResponse("m", "1", "", [Tensor("y", "INT64", (1,), np.array([5]))])
    body, length = encode_infer_response(response, request)
    assert length is not None and np.frombuffer(body[length:], np.int64).tolist() == [5]


def test_bf16_conversion_rounds_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 3.140625, 1.00390625, float("inf")], np.float32)
    bits = float_to_bf16_bits(values)
    back = bf16_bits_to_float(bits)
    assert back[:3].tolist() == [1.0, -2.5, 3.140625]
    assert back[3] == 1.0  # halfway: ties to even
    assert np.isinf(back[4])
    assert np.isnan(bf16_bits_to_float(float_to_bf16_bits(np.array([np.nan], np.float32))))[0]
