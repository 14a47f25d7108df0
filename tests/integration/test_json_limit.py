"""JSON has a body limit of its own (max_json_request_bytes), below the binary one: decoding JSON takes
many times its size in memory, so a JSON body, a binary request's JSON header, a JSON-only request or a
WebSocket message past it is refused with 413 naming the setting, while the same tensor sent in binary
(the binary tensor data extension) passes up to max_request_bytes."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import RunningServer, start_server, stop_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

JSON_LIMIT = 4096
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def limited(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        example_repository,
        tmp_path_factory.mktemp("json-limit") / "server.log",
        env={
            "MEDSERVE_MAX_JSON_REQUEST_BYTES": str(JSON_LIMIT),
            "MEDSERVE_MAX_REQUEST_BYTES": str(1 << 20),
            "MEDSERVE_LOAD_MODELS": "false",
        },
    )
    httpx.post(
        f"http://{running.http_url}/v2/repository/models/identity_fp32/load", timeout=60
    ).raise_for_status()
    yield running
    stop_server(running)


def _infer(server: RunningServer, **kwargs: object) -> httpx.Response:
    return httpx.post(f"http://{server.http_url}/v2/models/identity_fp32/infer", timeout=30, **kwargs)  # type: ignore[arg-type]


def _refused(reply: httpx.Response) -> str:
    assert reply.status_code == 413, reply.text
    message: str = reply.json()["error"]
    assert "max_json_request_bytes" in message and str(JSON_LIMIT) in message, message
    return message


def test_json_past_its_limit_is_413_while_binary_passes(limited: RunningServer) -> None:
    values = np.linspace(0, 1, 2000, dtype=np.float32)
    as_json = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2000], "data": values.tolist()}]
    }
    _refused(_infer(limited, json=as_json))  # Content-Length says so: refused before the body is read

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        yield json.dumps(as_json).encode()

    _refused(_infer(limited, content=chunks()))
    # compressed below the limit, past it once inflated
    zeros = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2000], "data": [0.0] * 2000}]}
    packed = gzip.compress(json.dumps(zeros).encode())
    assert len(packed) < JSON_LIMIT
    _refused(_infer(limited, content=packed, headers={"Content-Encoding": "gzip"}))

    # the same tensor in binary: a small JSON header and 8000 bytes, under max_request_bytes
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 2000],
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + values.tobytes()
    assert len(body) > JSON_LIMIT
    reply = _infer(limited, content=body, headers={HEADER: str(len(header))})
    assert reply.status_code == 200, reply.text
    out_length = int(reply.headers[HEADER])
    assert np.array_equal(np.frombuffer(reply.content[out_length:], dtype=np.float32), values)

    # a JSON header claimed past the JSON limit is refused from the headers alone
    message = _refused(_infer(limited, content=b"{}" + b" " * 6000, headers={HEADER: "6002"}))
    assert HEADER in message
    # a small JSON request still works
    small = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert _infer(limited, json=small).json()["outputs"][0]["data"] == [1, 2, 3, 4]


def test_json_only_requests_and_websocket_messages_are_held_to_it(limited: RunningServer) -> None:
    padded = {"ready": False, "padding": "x" * (2 * JSON_LIMIT)}
    _refused(httpx.post(f"http://{limited.http_url}/v2/repository/index", json=padded, timeout=30))
    assert (
        httpx.post(f"http://{limited.http_url}/v2/repository/index", json={}, timeout=30).status_code == 200
    )
    with connect(f"ws://{limited.http_url}/v2/monitor/stream", proxy=None) as socket:
        socket.send(json.dumps({"sequence_id": "big", "padding": "x" * (2 * JSON_LIMIT)}))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    limited.assert_alive()
