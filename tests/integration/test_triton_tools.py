"""What Triton and KServe users already run, against a real ``medserve serve``: perf_analyzer with
system shared memory over HTTP and gRPC, tritonclient's shared memory calls, model-analyzer's
load-with-config sequence, Triton's raw binary request, the trace and log extensions, and the small
conformance points (empty health bodies, ``Accept-Encoding`` q-values, ``Vary``)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import RunningServer, start_server, stop_server
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from perf_analyzer_binary import environment, perf_analyzer
from tritonclient.utils import InferenceServerException

MODELS = ("simple", "fp16_scale")


class _OtlpReceiver(http.server.BaseHTTPRequestHandler):
    """A small OTLP/HTTP receiver: keeps every exported span (protobuf ExportTraceServiceRequest)."""

    spans: ClassVar[list[Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the handler's name is fixed by http.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                type(self).spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def otlp_receiver() -> Iterator[str]:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    receiver.shutdown()


@pytest.fixture(scope="module")
def tools_server(
    example_repository: Path, tmp_path_factory: pytest.TempPathFactory, otlp_receiver: str
) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("triton_tools")
    repository = folder / "models"
    for name in MODELS:
        shutil.copytree(example_repository / name, repository / name)
    running = start_server(
        repository, folder / "server.log", env={"MEDSERVE_OTLP_TRACES_ENDPOINT": otlp_receiver}
    )
    yield running
    stop_server(running)
    assert running.process.returncode == 0, running.output()


def _client(
    protocol: str, server: RunningServer
) -> httpclient.InferenceServerClient | grpcclient.InferenceServerClient:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_system_shared_memory(tools_server: RunningServer, protocol: str) -> None:
    binary, why = perf_analyzer()
    if binary is None:
        pytest.skip(why)
    url = tools_server.http_url if protocol == "http" else tools_server.grpc_url
    before = httpx.get(f"http://{tools_server.http_url}/v2/models/simple/stats").json()
    run = subprocess.run(
        [
            str(binary),
            "-m",
            "simple",
            "-u",
            url,
            "-i",
            protocol,
            "--shared-memory",
            "system",
            "--concurrency-range",
            "2",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "40",
            "--stability-percentage",
            "999",
            "-b",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Throughput" in run.stdout
    after = httpx.get(f"http://{tools_server.http_url}/v2/models/simple/stats").json()
    served = after["model_stats"][0]["inference_count"] - before["model_stats"][0]["inference_count"]
    assert served >= 80  # at least 40 requests of batch 2 went through the regions
    # perf_analyzer unregisters its regions when it is done
    assert httpx.get(f"http://{tools_server.http_url}/v2/systemsharedmemory/status").json() == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_through_system_shared_memory(tools_server: RunningServer, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = _client(protocol, tools_server)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.float32)
    key_in, key_out = f"/medserve_test_in_{protocol}", f"/medserve_test_out_{protocol}"
    inputs_handle = shm.create_shared_memory_region("in", key_in, 128)
    outputs_handle = shm.create_shared_memory_region("out", key_out, 128)
    try:
        shm.set_shared_memory_region(inputs_handle, [a, b])
        client.register_system_shared_memory("in", key_in, 128)
        client.register_system_shared_memory("out", key_out, 128)
        status = client.get_system_shared_memory_status()
        names = {r["name"] for r in status} if protocol == "http" else set(status.regions)
        assert names == {"in", "out"}
        inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_shared_memory("in", 64)
        inputs[1].set_shared_memory("in", 64, offset=64)
        outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory("out", 64)
        outputs[1].set_shared_memory("out", 64, offset=64)
        client.infer("simple", inputs, outputs=outputs)
        total = shm.get_contents_as_numpy(outputs_handle, np.float32, [1, 16])
        difference = shm.get_contents_as_numpy(outputs_handle, np.float32, [1, 16], offset=64)
        np.testing.assert_array_equal(total, a + b)
        np.testing.assert_array_equal(difference, a - b)
        # a window past the end of the region is refused, naming the region
        inputs[1].set_shared_memory("in", 64, offset=100)
        with pytest.raises(InferenceServerException, match="passes the end of region 'in'"):
            client.infer("simple", inputs)
        with pytest.raises(InferenceServerException, match="passes the end"):
            client.register_system_shared_memory("big", key_in, 4096)
        client.unregister_system_shared_memory()
        status = client.get_system_shared_memory_status()
        assert (status == []) if protocol == "http" else (len(status.regions) == 0)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs_handle)
        shm.destroy_shared_memory_region(outputs_handle)
        client.close()


def test_raw_binary_request(tools_server: RunningServer) -> None:
    rows = np.arange(8, dtype=np.float16).reshape(2, 4)
    reply = httpx.post(
        f"http://{tools_server.http_url}/v2/models/fp16_scale/infer",
        content=rows.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert reply.status_code == 200, reply.text
    header_length = int(reply.headers["Inference-Header-Content-Length"])
    header = json.loads(reply.content[:header_length])
    (output,) = header["outputs"]
    assert output["shape"] == [2, 4]
    assert output["parameters"]["binary_data_size"] == 16
    # three bytes are not a whole number of [-1, 4] FP16 rows
    bad = httpx.post(
        f"http://{tools_server.http_url}/v2/models/fp16_scale/infer",
        content=b"abc",
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert bad.status_code == 400 and "whole number" in bad.json()["error"]
    # a model with two inputs cannot take a raw body
    two = httpx.post(
        f"http://{tools_server.http_url}/v2/models/simple/infer",
        content=bytes(128),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert two.status_code == 400 and "one input" in two.json()["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_analyzer_load_with_config_sequence(tools_server: RunningServer, protocol: str) -> None:
    """model-analyzer (remote launch mode): read the config, load a variant with it, profile, reload."""
    client = _client(protocol, tools_server)
    try:
        config = _config(client, protocol)
        variant = {
            **config,
            "max_batch_size": 4,
            "dynamic_batching": {"max_queue_delay_microseconds": 100},
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        }
        client.load_model("simple", config=json.dumps(variant))
        served = _config(client, protocol)
        assert int(served["max_batch_size"]) == 4
        assert sum(int(g["count"]) for g in served["instance_group"]) == 2
        with pytest.raises(InferenceServerException, match="sequence_batching"):
            client.load_model("simple", config=json.dumps({**variant, "sequence_batching": {}}))
        with pytest.raises(InferenceServerException, match="loads artifacts from its repository"):
            client.load_model("simple", config=json.dumps(variant), files={"file:1/model.onnx": b"x"})
        client.load_model("simple")  # back to config.yaml
        assert int(_config(client, protocol)["max_batch_size"]) == 8
    finally:
        client.close()


def _config(client: object, protocol: str) -> dict[str, object]:
    """The model's configuration as Triton's JSON (gRPC's in protobuf's JSON spelling)."""
    if protocol == "http":
        return client.get_model_config("simple")  # type: ignore[attr-defined,no-any-return]
    config = client.get_model_config("simple", as_json=True)["config"]  # type: ignore[attr-defined]
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in config.items()}


def test_health_answers_have_no_body_and_compression_follows_accept_encoding(
    tools_server: RunningServer,
) -> None:
    base = f"http://{tools_server.http_url}"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/simple/ready"):
        reply = httpx.get(base + path)
        assert reply.status_code == 200 and reply.content == b""
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    refused = httpx.post(f"{base}/v2/models/simple/infer", json=body, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers and refused.headers["vary"] == "Accept-Encoding"
    taken = httpx.post(f"{base}/v2/models/simple/infer", json=body, headers={"Accept-Encoding": "gzip;q=0.5"})
    assert taken.headers["content-encoding"] == "gzip" and taken.headers["vary"] == "Accept-Encoding"


def test_traceparent_in_and_out_and_trace_settings(tools_server: RunningServer) -> None:
    base = f"http://{tools_server.http_url}"
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = httpx.post(
        f"{base}/v2/models/simple/infer",
        json=body,
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert reply.status_code == 200
    assert reply.headers["traceparent"].split("-")[1] == trace_id
    untraced = httpx.post(f"{base}/v2/models/simple/infer", json=body)
    assert "traceparent" not in untraced.headers  # trace_level OFF and no parent: no span
    assert httpx.get(f"{base}/v2/trace/setting").json()["trace_level"] == ["OFF"]
    changed = httpx.post(
        f"{base}/v2/models/simple/trace/setting", json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
    )
    assert changed.json()["trace_level"] == ["TIMESTAMPS"] and changed.json()["trace_rate"] == "1"
    traced = httpx.post(f"{base}/v2/models/simple/infer", json=body)
    assert traced.headers["traceparent"].startswith("00-")
    assert (
        httpx.post(
            f"{base}/v2/models/simple/trace/setting", json={"trace_level": None, "trace_rate": None}
        ).status_code
        == 200
    )
    bad = httpx.post(f"{base}/v2/trace/setting", json={"trace_level": ["LOUD"]})
    assert bad.status_code == 400 and "LOUD" in bad.json()["error"]
    with grpcclient.InferenceServerClient(tools_server.grpc_url) as client:
        settings = client.get_trace_settings(as_json=True)
        assert settings["settings"]["trace_level"]["value"] == ["OFF"]
        logs = client.get_log_settings(as_json=True)
        assert "log_info" in logs["settings"]
    assert httpx.get(f"{base}/v2/logging").json()["log_format"] == "default"


def test_spans_reach_a_real_otlp_receiver(tools_server: RunningServer) -> None:
    """One real OTLP/HTTP round trip: a traced request's spans, door to audit, under the caller's trace."""
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    reply = httpx.post(
        f"http://{tools_server.http_url}/v2/models/simple/infer",
        json=body,
        headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
    )
    assert reply.status_code == 200
    wanted = {"POST /v2/models/simple/infer", "medserve.inference", "queue", "batch", "engine", "audit"}
    deadline = time.monotonic() + 30  # the batch exporter sends every few seconds
    names: set[str] = set()
    while time.monotonic() < deadline and not wanted <= names:
        time.sleep(0.5)
        names = {s.name for s in _OtlpReceiver.spans if s.trace_id.hex() == trace_id}
    assert wanted <= names, names
