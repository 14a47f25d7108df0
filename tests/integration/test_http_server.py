"""The REST door end to end: a real ``medserve serve`` and the real ``tritonclient.http``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from conftest import RunningServer, sample
from tritonclient.utils import InferenceServerException

NUMERIC = [
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "fp16",
    "fp32",
    "fp64",
    "bf16",
]


def raw_session(server: RunningServer, model: str, version: int = 1) -> ort.InferenceSession:
    path = server.repository / model / str(version) / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture()
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.http_url) as own:
        yield own


def test_server_endpoints(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "medserve"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_metadata_and_config(client: httpclient.InferenceServerClient, server: RunningServer) -> None:
    meta = client.get_model_metadata("chest_xray_classifier")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 224, 224]}]
    assert meta["outputs"][0]["shape"] == [-1, 14]
    import hashlib

    artifact = server.repository / "chest_xray_classifier" / "1" / "model.onnx"
    assert meta["parameters"]["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] > 0
    # inputs/outputs omitted from config.yaml are read from the ONNX model; two versions served
    versions = client.get_model_metadata("simple_nobatch")
    assert versions["versions"] == ["1", "2"]
    assert versions["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [16]}
    assert client.get_model_metadata("simple_nobatch", "1")["parameters"]["version"] == "1"
    assert client.is_model_ready("simple_nobatch", "2")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dt", [*NUMERIC, "bytes"])
def test_identity_every_datatype(client: httpclient.InferenceServerClient, dt: str, binary: bool) -> None:
    datatype = dt.upper()
    if datatype == "BF16" and not binary:
        pytest.skip("tritonclient sends BF16 only as binary data")
    data = sample(datatype, (2, 5))
    tensor = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        f"identity_{dt}", [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    )
    out = result.as_numpy("OUTPUT0")
    assert out.shape == data.shape
    if datatype == "BF16":
        np.testing.assert_array_equal(out.astype(np.float32), data.astype(np.float32))
    elif datatype == "BYTES" and not binary:  # tritonclient hands JSON strings back as str
        assert out.tolist() == [[v.decode() for v in row] for row in data.tolist()]
    else:
        np.testing.assert_array_equal(out, data)


def test_bf16_as_json_numbers(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "BF16", "shape": [1, 3], "data": [1.0, -2.5, 0.15625]}]}
    reply = httpx.post(f"http://{server.http_url}/v2/models/identity_bf16/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [1.0, -2.5, 0.15625]


def test_two_inputs_two_outputs_and_nested_json(server: RunningServer) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, dtype=np.float32)
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": a.tolist()},  # nested
            {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": b.reshape(-1).tolist()},
        ],
        "outputs": [{"name": "OUTPUT1"}],
    }
    reply = httpx.post(f"http://{server.http_url}/v2/models/simple/infer", json=body)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["id"] == "req-1" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["OUTPUT1"]
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(2, 16), a - b)


def test_fp16_model(client: httpclient.InferenceServerClient) -> None:
    data = np.array([[1.5, -2.0, 0.25, 100.0]], dtype=np.float16)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP16")
    tensor.set_data_from_numpy(data)
    out = client.infer("fp16_scale", [tensor]).as_numpy("OUTPUT0")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, data * 2)


def test_versions_are_addressable(client: httpclient.InferenceServerClient) -> None:
    a = np.ones(16, np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = httpclient.InferInput(name, [16], "FP32")
        t.set_data_from_numpy(a)
        inputs.append(t)
    v1 = client.infer("simple_nobatch", inputs, model_version="1").as_numpy("OUTPUT0")
    v2 = client.infer("simple_nobatch", inputs, model_version="2").as_numpy("OUTPUT0")
    latest = client.infer("simple_nobatch", inputs).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(v1, a + a)
    np.testing.assert_array_equal(v2, a + a + 1)
    np.testing.assert_array_equal(latest, v2)


def _stats(client: httpclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_concurrent_requests_are_batched_and_match_raw_onnxruntime(
    client: httpclient.InferenceServerClient, server: RunningServer
) -> None:
    before = _stats(client, "chest_xray_classifier")
    rng = np.random.default_rng(0)
    images = rng.random((16, 1, 1, 224, 224), dtype=np.float32)

    def one(image: np.ndarray) -> np.ndarray:
        # A gevent-based client belongs to the thread that made it: close it there, never leave it
        # to the garbage collector of another thread.
        with httpclient.InferenceServerClient(server.http_url) as own:
            tensor = httpclient.InferInput("image", [1, 1, 224, 224], "FP32")
            tensor.set_data_from_numpy(image)
            out = own.infer(
                "chest_xray_classifier",
                [tensor],
                outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)],
            )
            return out.as_numpy("probabilities")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, images))
    after = _stats(client, "chest_xray_classifier")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences, "concurrent requests should share executions"
    session = raw_session(server, "chest_xray_classifier")
    for image, served in zip(images, results):
        (expected,) = session.run(["probabilities"], {"image": image})
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


def test_requests_with_different_shapes_are_never_merged(server: RunningServer) -> None:
    lengths = [3, 5, 3, 7, 5, 2, 7, 3] * 2

    def one(length: int) -> tuple[int, np.ndarray]:
        with httpclient.InferenceServerClient(server.http_url) as own:
            data = np.arange(length, dtype=np.float32).reshape(1, length)
            tensor = httpclient.InferInput("INPUT0", [1, length], "FP32")
            tensor.set_data_from_numpy(data)
            result = own.infer("variable_sum", [tensor])
            return length, result.as_numpy("OUTPUT0")

    with ThreadPoolExecutor(8) as pool:
        for length, total in pool.map(one, lengths):
            assert total.shape == (1, 1)
            assert total[0, 0] == sum(range(length))


def test_classification_extension(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("image", [1, 1, 224, 224], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 224, 224), np.float32))
    result = client.infer(
        "chest_xray_classifier",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=3)],
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3)
    score, index, label = top[0, 0].decode().split(":")
    labels = client.get_model_metadata("chest_xray_classifier")["parameters"]["labels"]
    assert labels[int(index)] == label and 0.0 <= float(score) <= 1.0


def test_gzip_request_and_response(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    data = np.ones((1, 16), np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = httpclient.InferInput(name, [1, 16], "FP32")
        t.set_data_from_numpy(data)
        inputs.append(t)
    result = client.infer(
        "simple", inputs, request_compression_algorithm="gzip", response_compression_algorithm="gzip"
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * 2)


async def test_asyncio_client(server: RunningServer) -> None:
    client = aiohttpclient.InferenceServerClient(server.http_url)
    try:
        assert await client.is_server_ready()
        data = sample("INT32", (1, 6))
        tensor = aiohttpclient.InferInput("INPUT0", [1, 6], "INT32")
        tensor.set_data_from_numpy(data)
        result = await client.infer("identity_int32", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        assert (await client.get_model_metadata("identity_int32"))["name"] == "identity_int32"
    finally:
        await client.close()


def test_metrics_endpoint(client: httpclient.InferenceServerClient, server: RunningServer) -> None:
    tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
    client.infer("identity_fp32", [tensor])
    text = httpx.get(f"http://{server.http_url}/metrics").text
    for line in (
        'medserve_inference_request_success_total{model="identity_fp32",version="1"}',
        'medserve_inference_count_total{model="identity_fp32",version="1"}',
        'medserve_inference_exec_count_total{model="identity_fp32",version="1"}',
        'medserve_request_duration_seconds_bucket{le="0.001",model="identity_fp32",version="1"}',
        "medserve_queue_duration_seconds_bucket",
        "medserve_compute_duration_seconds_bucket",
        'medserve_queue_depth{model="identity_fp32",version="1"}',
    ):
        assert line in text, line


def test_statistics_shape(client: httpclient.InferenceServerClient) -> None:
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert set(stats["inference_stats"]) >= {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
    }
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"simple", "chest_xray_classifier"}


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    rows = {(r["name"], r["version"]): r for r in index}
    assert rows[("simple_nobatch", "1")]["state"] == "READY"
    assert rows[("simple_nobatch", "2")]["state"] == "READY"
    with pytest.raises(InferenceServerException, match="404"):
        client.get_model_metadata("no_such_model")
    assert not Path("/nonexistent").exists()
