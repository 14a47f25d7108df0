"""The log of a full server run, in text and in JSON: tokens made with ``medserve tokens create`` for the
run are used every way a client sends them (Bearer headers on REST, ``?access_token=`` on the WebSocket
and event-stream doors, gRPC metadata on unary and streaming calls; valid, revoked, expired and
tampered), with debug logging on; afterwards no log line holds any of them, nor any token's secret."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import RunningServer, start_server, stop_server
from test_access import make_token, medserve
from tritonclient.utils import InferenceServerException
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Run:
    log_format: str
    output: str
    tokens: dict[str, str]


def _tampered(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def _grpc_infer(server: RunningServer, token: str, request_id: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    headers = {"authorization": f"Bearer {token}", "x-request-id": request_id}
    with contextlib.suppress(InferenceServerException):
        client.infer("identity_fp32", [tensor], headers=headers)
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result), headers=headers)
    with contextlib.suppress(InferenceServerException):  # a refused stream is closed by the server
        client.async_stream_infer("identity_fp32", [tensor], request_id=request_id)
    answers.get(timeout=30)
    client.stop_stream()
    client.close()


def _full_run(root: Path, example_repository: Path, log_format: str) -> Run:
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "service": make_token(data_dir, "service", "service", "identity_fp32", "reshape_fail"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "monitor": make_token(data_dir, "monitor", "service", "patient_monitor"),
        "expired": make_token(data_dir, "expired", "service", "identity_fp32", expires="1s"),
    }
    revoked = make_token(data_dir, "revoked", "service", "identity_fp32")
    assert medserve(data_dir, "tokens", "revoke", revoked.split("_")[1]).returncode == 0
    tokens["revoked"] = revoked
    server = start_server(
        example_repository,
        root / "server.log",
        "--log-level",
        "debug",
        "--log-format",
        log_format,
        env={
            "MEDSERVE_AUTH_DISABLED": "false",
            "MEDSERVE_LOAD_MODELS": "false",
            "MEDSERVE_TRACE_LEVEL": "TIMESTAMPS",
            "MEDSERVE_TRACE_RATE": "1",
        },
    )
    try:
        base = f"http://{server.http_url}"

        def bearer(name: str, request_id: str, **extra: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[name]}", "X-Request-Id": request_id, **extra}

        for model in ("identity_fp32", "reshape_fail"):
            load = httpx.post(f"{base}/v2/repository/models/{model}/load", headers=bearer("admin", "load"))
            assert load.status_code == 200, load.text
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        parent = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        infer = f"{base}/v2/models/identity_fp32/infer"
        assert (
            httpx.post(infer, json=body, headers=bearer("service", "log-rest", **parent)).status_code == 200
        )
        assert (
            httpx.get(f"{base}/v2/models/identity_fp32", headers=bearer("viewer", "log-meta")).status_code
            == 200
        )
        failing = {
            "inputs": [
                {"name": "DATA", "datatype": "FP32", "shape": [6], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "SHAPE", "datatype": "INT64", "shape": [1], "data": [4]},
            ]
        }  # the engine fails: its error is logged while the Authorization header is in scope
        httpx.post(
            f"{base}/v2/models/reshape_fail/infer", json=failing, headers=bearer("service", "log-fail")
        )
        time.sleep(1.1)  # the expired token's lifetime is over
        for name in ("revoked", "expired"):
            assert httpx.post(infer, json=body, headers=bearer(name, f"log-{name}")).status_code == 401
        wrong = {"Authorization": f"Bearer {_tampered(tokens['service'])}"}
        assert httpx.post(infer, json=body, headers=wrong).status_code == 401
        for token in (tokens["monitor"], _tampered(tokens["monitor"])):
            url = f"ws://{server.http_url}/v2/monitor/stream?access_token={token}"
            with contextlib.suppress(WebSocketException, OSError), ws_connect(url, open_timeout=5) as ws:
                ws.send(
                    json.dumps({"sequence_id": "log-ws", "sequence_start": True, "vitals": {"pulse": 80}})
                )
                ws.recv(timeout=10)
            with (
                contextlib.suppress(httpx.TimeoutException),
                httpx.stream("GET", f"{base}/v2/alerts/stream?access_token={token}", timeout=2),
            ):
                pass  # an event stream: the first answer is enough
        _grpc_infer(server, tokens["service"], "log-grpc")
        for name in ("revoked", "expired"):
            _grpc_infer(server, tokens[name], f"log-grpc-{name}")
        _grpc_infer(server, _tampered(tokens["service"]), "log-grpc-tampered")
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn warns about it: its line must be JSON too
            raw.recv(100)
        server.assert_alive()
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.output()
    return Run(log_format, server.output(), tokens)


@pytest.fixture(scope="module")
def full_run(
    example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Run]]:
    runs: dict[str, Run] = {}

    def run(log_format: str) -> Run:
        if log_format not in runs:
            runs[log_format] = _full_run(tmp_path_factory.mktemp(log_format), example_repository, log_format)
        return runs[log_format]

    yield run


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_of_the_run_in_any_log_line(full_run: Callable[[str], Run], log_format: str) -> None:
    run = full_run(log_format)
    lines = run.output.splitlines()
    assert len(lines) > 20, run.output  # debug logging: the run said a lot
    secrets = {}
    for name, token in run.tokens.items():
        secrets[name] = token
        secrets[f"{name} (tampered)"] = _tampered(token)
        secrets[f"{name}'s secret"] = token.split("_", 2)[2]
    for number, line in enumerate(lines, 1):
        for what, secret in secrets.items():
            assert secret not in line, f"line {number} holds the {what} token: {line}"
    assert "<redacted>" in run.output or "access_token" not in run.output


def test_json_log_lines_of_a_running_server(full_run: Callable[[str], Run]) -> None:
    """Every line the server writes parses as one JSON object (uvicorn's own lines and an engine's
    error included); the lines written while serving a request name its id, trace and principal."""
    run = full_run("json")
    lines = [line for line in run.output.splitlines() if line.strip()]
    fields = {"time", "level", "logger", "message", "request_id", "trace_id", "principal"}
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line}")
        assert isinstance(record, dict) and fields <= set(record), line
        parsed.append(record)
    assert any(r["logger"] == "uvicorn.error" and "Invalid HTTP request" in r["message"] for r in parsed)
    requests = [r for r in parsed if r["request_id"]]
    for record in requests:
        assert record["principal"], record
        assert len(record["trace_id"]) == 32 and int(record["trace_id"], 16), record
    answered = {r["request_id"]: r for r in requests if r["message"].startswith("inference of identity_fp32")}
    assert set(answered) >= {"log-rest", "log-grpc"}, requests
    assert answered["log-rest"]["trace_id"] == TRACE_ID  # the client's traceparent
    assert {answered[k]["principal"] for k in ("log-rest", "log-grpc")} == {"test-service"}
