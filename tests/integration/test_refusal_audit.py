"""Every refusal leaves an audit record with its status, its reason and the principal when one is known:
400, 401, 403, 404, 413, 415, 431 and 501 on REST, and INVALID_ARGUMENT, UNAUTHENTICATED,
PERMISSION_DENIED, NOT_FOUND, RESOURCE_EXHAUSTED and UNIMPLEMENTED on gRPC, each made against a server
with authentication on and read back with ``medserve audit export``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import RunningServer, start_server, stop_server
from test_access import make_token, medserve
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from medserve.protocol.grpc_messages import pb

MAX_REQUEST = 64 * 1024
MAX_HEADER = 4096


@dataclass
class Secured:
    server: RunningServer
    data_dir: Path
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("refusals")
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "service": make_token(data_dir, "service", "service", "identity_fp32"),
        "monitor": make_token(data_dir, "monitor", "service", "patient_monitor"),
    }
    server = start_server(
        example_repository,
        root / "server.log",
        env={
            "MEDSERVE_AUTH_DISABLED": "false",
            "MEDSERVE_LOAD_MODELS": "false",
            "MEDSERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST),
            "MEDSERVE_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER),
        },
    )
    load = f"http://{server.http_url}/v2/repository/models/identity_fp32/load"
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    httpx.post(load, headers=headers, timeout=60).raise_for_status()
    yield Secured(server, data_dir, tokens)
    stop_server(server)


def rest(secured: Secured, method: str, path: str, token: str | None, request_id: str, **kw: Any) -> int:
    headers = {"X-Request-Id": request_id, **kw.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {secured.tokens[token]}"
    url = f"http://{secured.server.http_url}{path}"
    return httpx.request(method, url, headers=headers, timeout=30, **kw).status_code


def grpc_call(
    secured: Secured, method: str, message: Any, response: Any, token: str | None, request_id: str
) -> grpc.StatusCode:
    metadata = [("x-request-id", request_id)]
    if token:
        metadata.append(("authorization", f"Bearer {secured.tokens[token]}"))
    with grpc.insecure_channel(secured.server.grpc_url) as channel:
        stub = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        try:
            stub(message, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def infer_body(count: int = 4) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, count], "data": [1.0] * count}]}


def records_until(secured: Secured, found: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        done = medserve(secured.data_dir, "audit", "export")
        records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        if found(records):
            break
        time.sleep(0.5)
    return records


def test_every_refusal_is_audited_with_status_reason_and_principal(secured: Secured) -> None:
    infer = "/v2/models/identity_fp32/infer"
    assert rest(secured, "POST", infer, "service", "r-400", content=b"{not json") == 400
    assert rest(secured, "POST", infer, None, "r-401", json=infer_body()) == 401
    assert rest(secured, "POST", infer, "viewer", "r-403-infer", json=infer_body()) == 403
    assert rest(secured, "GET", "/v2/models/simple", "service", "r-403-metadata") == 403
    assert rest(secured, "GET", "/v2/models/no_such_model", "admin", "r-404") == 404
    assert rest(secured, "GET", "/v3/nothing", "admin", "r-404-route") == 404
    assert rest(secured, "POST", infer, "service", "r-413", json=infer_body(20000)) == 413
    assert (
        rest(secured, "POST", infer, "service", "r-415", content=b"x", headers={"Content-Encoding": "br"})
        == 415
    )
    assert rest(secured, "POST", "/v2/cudasharedmemory/region/r/register", "admin", "r-501", json={}) == 501
    with socket.create_connection(("127.0.0.1", secured.server.http_port), timeout=10) as raw:
        raw.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (2 * MAX_HEADER) + b"\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 431")

    bad = pb.ModelInferRequest(model_name="identity_fp32")
    bad.inputs.add(name="INPUT0", datatype="NOPE", shape=[1, 1])
    good = pb.ModelInferRequest(model_name="identity_fp32")
    good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    good.raw_input_contents.append(b"\x00" * 4)
    reply = pb.ModelInferResponse
    assert (
        grpc_call(secured, "ModelInfer", bad, reply, "service", "g-400") == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert grpc_call(secured, "ModelInfer", good, reply, None, "g-401") == grpc.StatusCode.UNAUTHENTICATED
    denied = grpc_call(secured, "ModelInfer", good, reply, "viewer", "g-403-infer")
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    simple = pb.ModelMetadataRequest(name="simple")
    metadata_reply = pb.ModelMetadataResponse
    denied = grpc_call(secured, "ModelMetadata", simple, metadata_reply, "service", "g-403-metadata")
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    missing = pb.ModelMetadataRequest(name="no_such_model")
    assert (
        grpc_call(secured, "ModelMetadata", missing, metadata_reply, "admin", "g-404")
        == grpc.StatusCode.NOT_FOUND
    )
    huge = pb.ModelInferRequest(model_name="identity_fp32")
    huge.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 20000])
    huge.raw_input_contents.append(b"\x00" * 80000)
    too_big = grpc_call(secured, "ModelInfer", huge, reply, "service", "g-413")
    assert too_big == grpc.StatusCode.RESOURCE_EXHAUSTED
    cuda = pb.CudaSharedMemoryRegisterRequest(name="r", device_id=0, byte_size=16)
    cuda_reply = pb.CudaSharedMemoryRegisterResponse
    unsupported = grpc_call(secured, "CudaSharedMemoryRegister", cuda, cuda_reply, "admin", "g-501")
    assert unsupported == grpc.StatusCode.UNIMPLEMENTED

    records = records_until(
        secured,
        lambda found: sum(r["request_id"] == "g-501" or r["status"] == "HeaderTooLarge" for r in found) == 2,
    )
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_id.setdefault(record["request_id"], []).append(record)

    def one(request_id: str, event: str, status: str, principal: str, reason: str) -> dict[str, Any]:
        found = by_id.get(request_id, [])
        assert len(found) == 1, (request_id, found)  # audited once, not twice
        (record,) = found
        assert (record["event"], record["status"], record["principal"]) == (event, status, principal), record
        assert reason in record["detail"], record
        return record

    for door, prefix in (("http", "r"), ("grpc", "g")):
        one(f"{prefix}-400", "inference", "InvalidInput", "test-service", "")
        one(f"{prefix}-401", "auth.failure", "Unauthenticated", "", "")
        one(f"{prefix}-403-infer", "inference", "PermissionDenied", "test-viewer", "may not infer")
        one(f"{prefix}-403-metadata", "request.refused", "PermissionDenied", "test-service", "simple")
        record = one(f"{prefix}-404", "request.refused", "ModelNotFound", "test-admin", "no_such_model")
        assert record["door"] == door and record["model"] == "no_such_model"
        one(f"{prefix}-501", "request.refused", "Unsupported", "test-admin", "CUDA shared memory")
    one("r-413", "inference", "PayloadTooLarge", "test-service", str(MAX_REQUEST))
    one("r-415", "inference", "UnsupportedMediaType", "test-service", "br")
    (route,) = [r for r in records if r["status"] == "NoRoute"]
    assert route["event"] == "request.refused" and "HTTP 404 GET /v3/nothing" in route["detail"]
    # refused before any credentials were read: no principal, the reason and the peer
    (header,) = [r for r in records if r["status"] == "HeaderTooLarge"]
    assert (
        header["event"] == "request.refused"
        and header["principal"] == ""
        and str(MAX_HEADER) in header["detail"]
    )
    assert "127.0.0.1" in header["detail"]
    (message,) = [
        r
        for r in records
        if r["status"] == "PayloadTooLarge" and r["door"] == "grpc" and r["request_id"] != "s-stream"
    ]
    assert message["event"] == "request.refused" and "grpc_max_message_bytes" in message["detail"]
    assert message["model"] == ""  # the message was too large to be read
    verified = medserve(secured.data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_refusals_inside_a_grpc_stream_are_audited(secured: Secured) -> None:
    """In ``ModelStreamInfer`` a refused request is answered in the stream, which stays open; one the
    dataplane did not audit (not a message, past the message limit) is audited by the door, once."""
    good = pb.ModelInferRequest(model_name="identity_fp32")
    good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    good.raw_input_contents.append(b"\x00" * 4)
    huge = pb.ModelInferRequest(model_name="identity_fp32")
    huge.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 20000])
    huge.raw_input_contents.append(b"\x00" * 80000)
    sent = [b"\xff\xff\xff", huge.SerializeToString(), good.SerializeToString()]
    metadata = [("x-request-id", "s-stream"), ("authorization", f"Bearer {secured.tokens['service']}")]
    with grpc.insecure_channel(secured.server.grpc_url) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda m: m,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(stream(iter(sent), metadata=metadata, timeout=60))
    errors = sorted(a.error_message for a in answers if a.error_message)
    assert len(answers) == 3 and len(errors) == 2, answers  # the stream stayed open for the good one
    records = records_until(secured, lambda found: sum(r["request_id"] == "s-stream" for r in found) >= 3)
    mine = [r for r in records if r["request_id"] == "s-stream"]
    refused = sorted(
        (r["status"], r["event"], r["principal"], r["door"]) for r in mine if r["status"] != "ok"
    )
    assert refused == [
        ("InvalidInput", "request.refused", "test-service", "grpc"),
        ("PayloadTooLarge", "request.refused", "test-service", "grpc"),
    ], mine
    assert all("ModelStreamInfer" in r["detail"] for r in mine if r["status"] != "ok")
    assert [r["event"] for r in mine if r["status"] == "ok"] == ["inference"]  # the good one, audited once


def test_websocket_refusals_at_and_after_the_handshake_are_audited(secured: Secured) -> None:
    """The monitor's WebSocket: a token without the monitor's grant is refused at the handshake (403),
    and a frame that is no sample gets an error frame on a socket that stays open; both are audited,
    with the principal."""
    url = f"ws://{secured.server.http_url}/v2/monitor/stream"
    with pytest.raises(InvalidStatus) as denied:
        connect(url, additional_headers={"Authorization": f"Bearer {secured.tokens['service']}"})
    assert denied.value.response.status_code == 403
    with connect(url, additional_headers={"Authorization": f"Bearer {secured.tokens['monitor']}"}) as ws:
        ws.send("{not json")
        assert "error" in json.loads(ws.recv(timeout=30))
        ws.send(json.dumps({"sequence_id": "ws-1", "vitals": "nope"}))
        assert "error" in json.loads(ws.recv(timeout=30))  # still open: the next frame is answered

    def websocket_refusals(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in found if r["door"] == "websocket" and r["event"] == "request.refused"]

    records = websocket_refusals(records_until(secured, lambda found: len(websocket_refusals(found)) >= 3))
    handshake = [r for r in records if "handshake" in r["detail"]]
    samples = [r for r in records if "a sample refused" in r["detail"]]
    assert [(r["status"], r["principal"]) for r in handshake] == [("PermissionDenied", "test-service")]
    assert len(samples) == 2 and all(r["principal"] == "test-monitor" for r in samples), records
    assert all(r["status"] == "InvalidInput" and r["model"] == "patient_monitor" for r in samples)


def test_refusals_before_a_request_reaches_the_app_are_audited(
    example_repository: Path, tmp_path: Path
) -> None:
    """A header that never completes (408), a body that stops coming (closed: audited as 408) and a
    connection past ``max_connections`` (503) are answered by the HTTP door's protocol, before any
    request or credentials are read: each leaves a record with the reason and the peer."""
    server = start_server(
        example_repository,
        tmp_path / "server.log",
        env={
            "MEDSERVE_LOAD_MODELS": "false",
            "MEDSERVE_HTTP_HEADER_TIMEOUT_S": "1",
            "MEDSERVE_HTTP_BODY_TIMEOUT_S": "1",
            "MEDSERVE_HTTP_KEEPALIVE_TIMEOUT_S": "60",
            "MEDSERVE_MAX_CONNECTIONS": "3",
        },
    )
    address = ("127.0.0.1", server.http_port)
    try:
        with socket.create_connection(address, timeout=30) as slow:
            slow.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # and never the end of the header block
            assert slow.recv(100).startswith(b"HTTP/1.1 408")
        with socket.create_connection(address, timeout=30) as stalled:
            stalled.sendall(
                b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10\r\n\r\n{}"
            )
            assert stalled.recv(100) == b""  # closed without an answer: the request was never whole
        held = [socket.create_connection(address, timeout=30) for _ in range(3)]
        try:
            with socket.create_connection(address, timeout=30) as one_more:
                assert one_more.recv(100).startswith(b"HTTP/1.1 503")
        finally:
            for connection in held:
                connection.close()
        data_dir = tmp_path / "data"
        deadline = time.monotonic() + 30
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            done = medserve(data_dir, "audit", "export")
            found = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
            found = [r for r in found if r["event"] == "request.refused"]
            if len(found) >= 3:
                break
            time.sleep(0.5)
        by_status: dict[str, list[str]] = {}
        for record in found:
            assert record["principal"] == "" and record["door"] == "http", record
            assert "127.0.0.1" in record["detail"], record
            by_status.setdefault(record["status"], []).append(record["detail"])
        assert sorted(by_status) == ["RequestTimeout", "TooManyConnections"], found
        header, body = sorted(by_status["RequestTimeout"])
        assert header.startswith("HTTP 408: no complete request header in 1 s (http_header_timeout_s)")
        assert body.startswith("HTTP 408: no request body byte for 1 s (http_body_timeout_s)")
        (limit,) = by_status["TooManyConnections"]
        assert limit.startswith("HTTP 503: 3 connections open, the limit (max_connections)")
    finally:
        stop_server(server)
