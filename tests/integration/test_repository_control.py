"""Triton's repository extension: index, load, unload; broken models never disturb what is serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import RunningServer, start_server, stop_server
from tritonclient.utils import InferenceServerException


def infer_simple(client: httpclient.InferenceServerClient, model: str = "simple_nobatch") -> np.ndarray:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [16], "FP32")
        tensor.set_data_from_numpy(np.ones(16, np.float32))
        inputs.append(tensor)
    result: np.ndarray = client.infer(model, inputs).as_numpy("OUTPUT0")
    return result


def rows(client: httpclient.InferenceServerClient, model: str) -> dict[str, dict[str, str]]:
    return {r["version"]: r for r in client.get_model_repository_index() if r["name"] == model}


def test_unload_and_load_over_http(private_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(private_server.http_url)
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException, match="404"):
        client.get_model_metadata("simple")
    assert rows(client, "simple")[""]["state"] == "UNAVAILABLE"
    client.load_model("simple")
    assert client.is_model_ready("simple")
    assert rows(client, "simple")["1"]["state"] == "READY"


def test_unload_and_load_over_grpc(private_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(private_server.grpc_url)
    client.unload_model("identity_fp32")
    index = client.get_model_repository_index(as_json=True)["models"]
    state = {m["name"]: m.get("state") for m in index}
    assert state["identity_fp32"] == "UNAVAILABLE"
    client.load_model("identity_fp32")
    assert client.is_model_ready("identity_fp32")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.load_model("no_such_model")


def test_corrupt_new_version_keeps_old_version_serving(private_server: RunningServer) -> None:
    repo = private_server.repository
    config = repo / "simple" / "config.yaml"
    config.write_text(config.read_text().replace("num_versions: 1", "num_versions: 2"))
    (repo / "simple" / "2").mkdir()
    (repo / "simple" / "2" / "model.onnx").write_bytes(b"this is not an onnx model")
    client = httpclient.InferenceServerClient(private_server.http_url)
    with pytest.raises(InferenceServerException) as failure:
        client.load_model("simple")
    assert "version 2" in str(failure.value)
    index = rows(client, "simple")
    assert index["2"]["state"] == "UNAVAILABLE" and "onnxruntime cannot load" in index["2"]["reason"]
    assert index["1"]["state"] == "READY"
    tensor_inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        tensor_inputs.append(tensor)
    out = client.infer("simple", tensor_inputs).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, np.full((1, 16), 2, np.float32))


def test_corrupt_reload_of_served_version_keeps_it_serving(private_server: RunningServer) -> None:
    artifact = private_server.repository / "simple_nobatch" / "2" / "model.onnx"
    artifact.write_bytes(artifact.read_bytes()[:100])
    client = httpclient.InferenceServerClient(private_server.http_url)
    with pytest.raises(InferenceServerException):
        client.load_model("simple_nobatch")
    index = rows(client, "simple_nobatch")
    assert index["2"]["state"] == "READY"
    assert "reload failed" in index["2"]["reason"]
    np.testing.assert_array_equal(infer_simple(client), np.full(16, 3, np.float32))


def test_invalid_config_names_file_and_field_and_keeps_serving(private_server: RunningServer) -> None:
    config = private_server.repository / "simple_nobatch" / "config.yaml"
    config.write_text(config.read_text() + "\ninstance_count: zero\n")
    client = httpclient.InferenceServerClient(private_server.http_url)
    with pytest.raises(InferenceServerException) as failure:
        client.load_model("simple_nobatch")
    message = str(failure.value)
    assert "config.yaml" in message and "instance_count" in message
    index = rows(client, "simple_nobatch")
    assert index["2"]["state"] == "READY" and "instance_count" in index["2"]["reason"]
    np.testing.assert_array_equal(infer_simple(client), np.full(16, 3, np.float32))


def test_broken_models_at_start_up_do_not_stop_the_server(repository_copy: Path, tmp_path: Path) -> None:
    shutil.copytree(repository_copy / "simple", repository_copy / "broken_artifact")
    (repository_copy / "broken_artifact" / "1" / "model.onnx").write_bytes(b"\x00" * 64)
    (repository_copy / "broken_config").mkdir()
    (repository_copy / "broken_config" / "config.yaml").write_text(
        "max_batch_size: -3\nruntime: onnxruntime\n"
    )
    (repository_copy / "unknown_runtime").mkdir()
    (repository_copy / "unknown_runtime" / "1").mkdir()
    (repository_copy / "unknown_runtime" / "config.yaml").write_text("runtime: tensorflow\n")
    (repository_copy / "unknown_runtime" / "1" / "model.onnx").write_bytes(b"")
    running = start_server(repository_copy, tmp_path / "server.log")
    try:
        client = httpclient.InferenceServerClient(running.http_url)
        index = client.get_model_repository_index()
        by_name = {r["name"]: r for r in index}
        assert by_name["broken_artifact"]["state"] == "UNAVAILABLE"
        assert "onnxruntime cannot load" in by_name["broken_artifact"]["reason"]
        assert "max_batch_size" in by_name["broken_config"]["reason"]
        assert "config.yaml" in by_name["broken_config"]["reason"]
        assert "unknown runtime 'tensorflow'" in by_name["unknown_runtime"]["reason"]
        np.testing.assert_array_equal(infer_simple(client), np.full(16, 3, np.float32))
    finally:
        stop_server(running)
