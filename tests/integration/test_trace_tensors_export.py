"""Trace level TENSORS on a running server: the spans it exports over OTLP/HTTP carry each request's
input and output tensors (name, datatype, shape, first values), from the REST and gRPC doors, and the
start-up log warns that the level records data."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import free_port, start_server, stop_server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


class Collector:
    """An OTLP/HTTP trace receiver on a free port, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        received.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def _events(span: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events]


def test_tensors_level_exports_the_tensors_of_each_door(
    example_repository: Path, tmp_path: Path, collector: Collector
) -> None:
    server = start_server(
        example_repository,
        tmp_path / "server.log",
        env={
            "MEDSERVE_LOAD_MODELS": "false",
            "MEDSERVE_TRACE_LEVEL": "TENSORS",
            "MEDSERVE_TRACE_RATE": "1",
            "MEDSERVE_OTLP_TRACES_ENDPOINT": collector.endpoint,
        },
    )
    try:
        base = f"http://{server.http_url}"
        httpx.post(f"{base}/v2/repository/models/identity_fp32/load", timeout=60).raise_for_status()
        rest = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 40], "data": list(range(40))}]}
        httpx.post(f"{base}/v2/models/identity_fp32/infer", json=rest, timeout=30).raise_for_status()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[0.5, 1.5, 2.5]], dtype=np.float32))
        client.infer("identity_fp32", [tensor])
        client.close()
    finally:
        stop_server(server)  # the batch exporter flushes at shutdown
    log = server.output()
    assert "trace level TENSORS" in log and "patient data" in log
    inference = [s for s in collector.spans if s.name == "medserve.inference" and s.events]
    by_shape = {}
    for span in inference:
        events = dict(_events(span))
        assert set(events) == {"TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT"}, events
        sent, answered = events["TENSOR_QUEUE_INPUT"], events["TENSOR_BACKEND_OUTPUT"]
        assert sent["medserve.tensor.name"] == "INPUT0" and answered["medserve.tensor.name"] == "OUTPUT0"
        assert sent["medserve.tensor.datatype"] == answered["medserve.tensor.datatype"] == "FP32"
        assert sent["medserve.tensor.values"] == answered["medserve.tensor.values"]
        by_shape[tuple(sent["medserve.tensor.shape"])] = sent
    assert set(by_shape) == {(1, 40), (1, 3)}, [s.name for s in collector.spans]
    assert by_shape[(1, 40)]["medserve.tensor.values"] == [float(i) for i in range(16)]
    assert by_shape[(1, 40)]["medserve.tensor.truncated"] is True
    assert by_shape[(1, 3)]["medserve.tensor.values"] == [0.5, 1.5, 2.5]
