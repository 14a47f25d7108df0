"""The gRPC door end to end: a real ``medserve serve`` and the real ``tritonclient.grpc``."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from conftest import RunningServer, sample, start_server, stop_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

NUMERIC = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
]


def infer_input(name: str, data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    return [infer_input("INPUT0", a, "FP32"), infer_input("INPUT1", b, "FP32")]


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


@pytest.fixture()
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as own:
        yield own


@pytest.fixture()
def stub(server: RunningServer) -> Any:
    """tritonclient's generated stub, for requests its high-level client cannot build."""
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))


def _stats(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return int(stats.inference_count), int(stats.execution_count)


# ------------------------------------------------------------------ server, health, metadata


def test_server_endpoints(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "medserve"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_health_service(server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc_url))
    for name in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_model_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("chest_xray_classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "FP32", [-1, 1, 224, 224])
    ]
    assert list(meta.outputs[0].shape) == [-1, 14]
    config = client.get_model_config("simple").config
    assert config.max_batch_size == 8
    assert config.input[0].name == "INPUT0" and list(config.input[0].dims) == [16]
    assert config.input[0].data_type == grpcclient.model_config_pb2.TYPE_FP32
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    versions = client.get_model_metadata("simple_nobatch")
    assert list(versions.versions) == ["1", "2"]
    assert client.is_model_ready("simple_nobatch", "2")


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no_such_model")
    assert status_of(caught.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no_such_model", [infer_input("x", np.zeros(1, np.float32), "FP32")])
    assert status_of(caught.value) == "StatusCode.NOT_FOUND"


# ------------------------------------------------------------------ inference


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_identity_every_datatype(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample(datatype, (2, 5))
    result = client.infer(f"identity_{datatype.lower()}", [infer_input("INPUT0", data, datatype)])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == data.shape
    np.testing.assert_array_equal(out, data)


def test_typed_contents_request(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple", id="typed")
    for name, values in (("INPUT0", np.arange(16.0)), ("INPUT1", np.ones(16))):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(values.tolist())
    reply = stub.ModelInfer(request, timeout=10)
    assert reply.id == "typed"
    names = [o.name for o in reply.outputs]
    out0 = np.frombuffer(reply.raw_output_contents[names.index("OUTPUT0")], np.float32)
    np.testing.assert_array_equal(out0, np.arange(16.0) + 1)


def test_requested_outputs_and_request_id(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, dtype=np.float32)
    result = client.infer(
        "simple",
        simple_inputs(a, b),
        request_id="req-1",
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    response = result.get_response()
    assert response.id == "req-1" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_versions_are_addressable(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones(16, np.float32)
    v1 = client.infer("simple_nobatch", simple_inputs(a, a), model_version="1").as_numpy("OUTPUT0")
    v2 = client.infer("simple_nobatch", simple_inputs(a, a), model_version="2").as_numpy("OUTPUT0")
    np.testing.assert_array_equal(v1, a + a)
    np.testing.assert_array_equal(v2, a + a + 1)


def test_invalid_input_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    wrong = np.zeros((1, 15), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple", simple_inputs(wrong, wrong))
    assert status_of(caught.value) == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in str(caught.value.message())


def test_priority_and_timeout_parameters(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.float32)
    result = client.infer("simple", simple_inputs(a, a), priority=1, timeout=5_000_000)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    result = client.infer("simple", simple_inputs(a, a), parameters={"priority_class": "bulk"})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple", simple_inputs(a, a), priority=9)
    assert status_of(caught.value) == "StatusCode.INVALID_ARGUMENT"
    assert "priority level" in str(caught.value.message())
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple", simple_inputs(a, a), parameters={"priority_class": "vip"})
    assert status_of(caught.value) == "StatusCode.INVALID_ARGUMENT"
    assert "unknown priority class 'vip'" in str(caught.value.message())


def test_raw_size_mismatch_is_invalid_argument(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in caught.value.details() and "16 bytes" in caught.value.details()


def test_engine_failure_is_internal(client: grpcclient.InferenceServerClient) -> None:
    data = infer_input("DATA", np.arange(6, dtype=np.float32), "FP32")
    shape = infer_input("SHAPE", np.array([4], dtype=np.int64), "INT64")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("reshape_fail", [data, shape])
    assert status_of(caught.value) == "StatusCode.INTERNAL"


def test_concurrent_requests_are_batched_and_match_raw_onnxruntime(
    client: grpcclient.InferenceServerClient, server: RunningServer
) -> None:
    before = _stats(client, "chest_xray_classifier")
    images = np.random.default_rng(1).random((16, 1, 1, 224, 224), dtype=np.float32)

    def one(image: np.ndarray) -> np.ndarray:
        with grpcclient.InferenceServerClient(server.grpc_url) as own:
            result = own.infer("chest_xray_classifier", [infer_input("image", image, "FP32")])
            probabilities: np.ndarray = result.as_numpy("probabilities")
            return probabilities

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, images))
    after = _stats(client, "chest_xray_classifier")
    assert after[0] - before[0] == 16
    assert after[1] - before[1] < 16, "concurrent requests should share executions"
    path = server.repository / "chest_xray_classifier" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for image, served in zip(images, results, strict=True):
        (expected,) = session.run(["probabilities"], {"image": image})
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


def test_classification_extension(client: grpcclient.InferenceServerClient) -> None:
    image = np.zeros((1, 1, 224, 224), np.float32)
    result = client.infer(
        "chest_xray_classifier",
        [infer_input("image", image, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)],
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3)
    score, index, _label = top[0, 0].decode().split(":")
    assert 0.0 <= float(score) <= 1.0 and 0 <= int(index) < 14


def test_gzip_compression(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 16), np.float32)
    result = client.infer("simple", simple_inputs(a, a), compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


async def test_asyncio_client(server: RunningServer) -> None:
    client = aiogrpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert await client.is_server_ready()
        data = sample("INT32", (1, 6))
        result = await client.infer("identity_int32", [infer_input("INPUT0", data, "INT32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    finally:
        await client.close()


# ------------------------------------------------------------------ streaming


def test_stream_answers_every_request_batches_them_and_reports_errors(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = _stats(client, "simple")
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(24):
            a = np.full((1, 16), i, np.float32)
            client.async_stream_infer("simple", simple_inputs(a, a), request_id=str(i))
        bad = np.zeros((1, 3), np.float32)
        client.async_stream_infer("simple", simple_inputs(bad, bad), request_id="bad")
        client.async_stream_infer("no_such_model", simple_inputs(bad, bad), request_id="missing")
    finally:
        client.stop_stream()  # waits for the server to finish the stream
    got = [answers.get(timeout=10) for _ in range(26)]
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert sorted(results, key=int) == [str(i) for i in range(24)]
    for i, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * int(i)))
    assert len(errors) == 2 and any("INPUT0" in e for e in errors)
    after = _stats(client, "simple")
    assert after[0] - before[0] == 24
    assert after[1] - before[1] < 24, "stream requests should share executions"


# ------------------------------------------------------------------ repository and limits


def test_repository_index_load_and_unload(private_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(private_server.grpc_url)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "simple_nobatch", "version": "2", "state": "READY"} in index
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("no_such_model")
    assert status_of(caught.value) == "StatusCode.NOT_FOUND"


def test_message_size_limit(repository_copy: Path, tmp_path: Path) -> None:
    running = start_server(
        repository_copy, tmp_path / "server.log", env={"MEDSERVE_MAX_REQUEST_BYTES": "4096"}
    )
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        small = np.ones((1, 16), np.float32)
        client.infer("identity_fp32", [infer_input("INPUT0", small, "FP32")])
        big = np.ones((1, 4096), np.float32)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("identity_fp32", [infer_input("INPUT0", big, "FP32")])
        assert status_of(caught.value) == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        stop_server(running)
