"""Bad input over REST: each gets a clear 4xx/5xx ``{"error": ...}`` and the server keeps serving."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import RunningServer, start_server, stop_server

ONES = [1.0] * 16


def simple_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
        ]
    }
    body.update(overrides)
    return body


def post(server: RunningServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"http://{server.http_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def still_serving(server: RunningServer) -> None:
    reply = post(server, "/v2/models/simple/infer", json=simple_body())
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [2.0] * 16


def error_of(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert isinstance(message, str) and message
    return message


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v2/models/no_such_model/infer", "no_such_model"),
        ("/v2/models/simple/versions/9/infer", "version '9'"),
    ],
)
def test_unknown_model_or_version_is_404(server: RunningServer, path: str, needle: str) -> None:
    assert needle in error_of(post(server, path, json=simple_body()), 404)
    assert httpx.get(f"http://{server.http_url}/v2/models/no_such_model").status_code == 404
    still_serving(server)


@pytest.mark.parametrize(
    ("inputs", "needles"),
    [
        (  # wrong input name
            [
                {"name": "INPUTX", "datatype": "FP32", "shape": [1, 16], "data": ONES},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            ],
            ["INPUTX", "INPUT0, INPUT1"],
        ),
        (  # wrong datatype
            [
                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            ],
            ["INPUT0", "INT32", "FP32"],
        ),
        (  # wrong shape
            [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 8], "data": ONES[:8]},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            ],
            ["INPUT0", "[1, 8]", "[-1, 16]"],
        ),
        (  # element count does not match the shape
            [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ONES[:15]},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            ],
            ["INPUT0", "16", "15"],
        ),
        (  # missing input
            [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ONES}],
            ["INPUT1", "missing"],
        ),
        (  # batch larger than max_batch_size
            [
                {"name": "INPUT0", "datatype": "FP32", "shape": [9, 16], "data": ONES * 9},
                {"name": "INPUT1", "datatype": "FP32", "shape": [9, 16], "data": ONES * 9},
            ],
            ["batch size 9", "max_batch_size"],
        ),
        (  # unknown datatype
            [{"name": "INPUT0", "datatype": "FP8", "shape": [1, 16], "data": ONES}],
            ["FP8"],
        ),
    ],
    ids=["name", "datatype", "shape", "count", "missing", "batch", "unknown-datatype"],
)
def test_invalid_inputs_are_400(server: RunningServer, inputs: list[object], needles: list[str]) -> None:
    message = error_of(post(server, "/v2/models/simple/infer", json={"inputs": inputs}), 400)
    for needle in needles:
        assert needle in message, message
    still_serving(server)


@pytest.mark.parametrize(
    ("parameters", "needles"),
    [
        ({"priority": "high"}, ["'priority'", "unsigned integer"]),
        ({"priority": -2}, ["'priority'", "-2"]),
        ({"priority": 7}, ["not a configured priority level", "1 stat"]),
        ({"priority_class": "vip"}, ["unknown priority class 'vip'", "stat, urgent, routine, bulk"]),
        ({"timeout": "soon"}, ["'timeout'", "microseconds"]),
    ],
    ids=["priority-type", "priority-negative", "priority-level", "class-name", "timeout-type"],
)
def test_bad_priority_parameters_are_400(
    server: RunningServer, parameters: dict[str, object], needles: list[str]
) -> None:
    message = error_of(post(server, "/v2/models/simple/infer", json=simple_body(parameters=parameters)), 400)
    for needle in needles:
        assert needle in message, message
    still_serving(server)


def test_priority_class_and_timeout_are_served(server: RunningServer) -> None:
    for parameters in ({"priority_class": "stat"}, {"priority": 4, "timeout": 10_000_000}):
        reply = post(server, "/v2/models/simple/infer", json=simple_body(parameters=parameters))
        assert reply.status_code == 200, reply.text
    metrics = httpx.get(f"http://{server.http_url}/metrics", timeout=30).text
    assert (
        'medserve_requests_by_class_total{class="stat",model="simple",outcome="met_deadline",version="1"}'
        in (metrics)
    )
    assert 'medserve_queue_depth_by_class{class="bulk",model="simple",version="1"}' in metrics


def test_unknown_output_is_400(server: RunningServer) -> None:
    message = error_of(
        post(server, "/v2/models/simple/infer", json=simple_body(outputs=[{"name": "NOPE"}])), 400
    )
    assert "NOPE" in message


def test_malformed_json_is_400(server: RunningServer) -> None:
    message = error_of(post(server, "/v2/models/simple/infer", content=b'{"inputs": [}'), 400)
    assert message.startswith("request body is not valid JSON"), message  # no "header": there is none
    still_serving(server)


def test_a_header_length_that_cuts_the_json_names_the_header(server: RunningServer) -> None:
    body = json.dumps(simple_body()).encode()
    reply = post(
        server, "/v2/models/simple/infer", content=body, headers={"Inference-Header-Content-Length": "20"}
    )
    message = error_of(reply, 400)
    assert message.startswith("JSON header (the first 20 bytes) is not valid JSON"), message


def test_a_misspelt_model_is_said_not_to_exist_with_the_nearest_name(server: RunningServer) -> None:
    message = error_of(post(server, "/v2/models/simpel/infer", json=simple_body()), 404)
    assert message == "model 'simpel' does not exist — did you mean 'simple'?", message
    reply = httpx.get(f"http://{server.http_url}/v2/models/simpel", timeout=30)
    assert error_of(reply, 404) == "model 'simpel' does not exist — did you mean 'simple'?"
    far = error_of(post(server, "/v2/models/zzzzzz/infer", json=simple_body()), 404)
    assert far == "model 'zzzzzz' does not exist", far


def test_a_model_in_the_repository_but_unloaded_is_not_loaded(private_server: RunningServer) -> None:
    assert post(private_server, "/v2/repository/models/simple/unload").status_code == 200
    message = error_of(post(private_server, "/v2/models/simple/infer", json=simple_body()), 404)
    assert message == "model 'simple' is not loaded", message


def _binary_request(
    data: bytes, declared: int, header_length: int | None = None
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": declared},
                },
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ONES},
            ]
        }
    ).encode()
    length = len(header) if header_length is None else header_length
    return header + data, {"Inference-Header-Content-Length": str(length)}


def test_binary_extension_roundtrip(server: RunningServer) -> None:
    body, headers = _binary_request(np.full(16, 3, np.float32).tobytes(), 64)
    reply = post(server, "/v2/models/simple/infer", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [4.0] * 16


def test_truncated_binary_body_is_400(server: RunningServer) -> None:
    body, headers = _binary_request(np.ones(16, np.float32).tobytes()[:40], 64)
    message = error_of(post(server, "/v2/models/simple/infer", content=body, headers=headers), 400)
    assert "INPUT0" in message and "truncated" in message
    still_serving(server)


def test_binary_size_not_matching_shape_is_400(server: RunningServer) -> None:
    body, headers = _binary_request(np.ones(15, np.float32).tobytes(), 60)
    message = error_of(post(server, "/v2/models/simple/infer", content=body, headers=headers), 400)
    assert "64 bytes" in message and "60" in message


def test_header_length_past_body_is_400(server: RunningServer) -> None:
    body, headers = _binary_request(np.ones(16, np.float32).tobytes(), 64, header_length=10_000)
    message = error_of(post(server, "/v2/models/simple/infer", content=body, headers=headers), 400)
    assert "Inference-Header-Content-Length" in message
    still_serving(server)


def test_truncated_bytes_element_is_400(server: RunningServer) -> None:
    raw = struct.pack("<I", 10) + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    reply = post(
        server,
        "/v2/models/identity_bytes/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert "BYTES" in error_of(reply, 400)


def test_engine_error_is_500_and_others_unaffected(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": "DATA", "datatype": "FP32", "shape": [6], "data": [1, 2, 3, 4, 5, 6]},
            {"name": "SHAPE", "datatype": "INT64", "shape": [1], "data": [4]},
        ]
    }
    message = error_of(post(server, "/v2/models/reshape_fail/infer", json=body), 500)
    assert "onnxruntime" in message
    body["inputs"][1]["data"] = [-1]  # type: ignore[index]
    ok = post(server, "/v2/models/reshape_fail/infer", json=body)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
    still_serving(server)
    stats = httpx.get(f"http://{server.http_url}/v2/models/reshape_fail/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] >= 1
    metrics = httpx.get(f"http://{server.http_url}/metrics").text
    assert 'reason="inference_failed"' in metrics


def test_unknown_route_is_json_404(server: RunningServer) -> None:
    reply = httpx.get(f"http://{server.http_url}/v3/nothing")
    assert reply.status_code == 404 and "error" in reply.json()


@pytest.fixture()
def small_limit_server(repository_copy: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        repository_copy, tmp_path / "server.log", env={"MEDSERVE_MAX_REQUEST_BYTES": "4096"}
    )
    yield running
    stop_server(running)


def test_body_over_limit_is_413_before_read(small_limit_server: RunningServer) -> None:
    big = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2000], "data": [0.5] * 2000}]}
    message = error_of(post(small_limit_server, "/v2/models/identity_fp32/infer", json=big), 413)
    assert "4096" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(100):
            yield b" " * 1024

    reply = post(small_limit_server, "/v2/models/identity_fp32/infer", content=chunks())
    assert reply.status_code == 413
    still_serving(small_limit_server)
