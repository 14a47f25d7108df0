"""The explain call on both doors, against one real server with authentication on: JSON and binary over
HTTP, ModelExplain over gRPC, rights checked before the body is read, bad requests answered 400 /
INVALID_ARGUMENT, perturbations counted in the lowest priority class by the real scheduler, and the
audit trail linking each explanation to the inference it explains.

Models: ``variant_scorer`` and ``simple`` from the example repository (ONNX: model-agnostic methods)
and a small torch network built here (``tiny_cnn``, a ``.pt2`` program served by the torch runtime:
Captum's Integrated Gradients and GradCAM)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from tests.conftest import RunningServer, start_server, stop_server

torch = pytest.importorskip("torch")
pytest.importorskip("captum")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

pytestmark = pytest.mark.slow

TINY_CONFIG = """runtime: torch
artifact: model.pt2
max_batch_size: 16
inputs:
- name: image
  datatype: FP32
  dims: [1, 16, 16]
outputs:
- name: probabilities
  datatype: FP32
  dims: [2]
dynamic_batching:
  max_queue_delay_us: 1000
metadata:
  description: a small test network (seeded random weights), not a clinical model
"""


def medserve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args], capture_output=True, text=True, env=env, timeout=120
    )


def make_token(data_dir: Path, name: str, *models: str) -> str:
    done = medserve(
        data_dir, "tokens", "create", "--init", "--role", "service", "--name", name, "--models", *models
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Served:
    server: RunningServer
    data_dir: Path
    allowed: str  # a token granted the explained models
    other: str  # a valid token granted only 'simple'

    def url(self, path: str) -> str:
        return f"http://{self.server.http_url}{path}"

    def post(
        self, path: str, body: object, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        sent = {"Authorization": f"Bearer {token or self.allowed}", **(headers or {})}
        return httpx.post(self.url(path), json=body, headers=sent, timeout=120)


@pytest.fixture(scope="module")
def served(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("explain")
    repository = root / "repository"
    for name in ("variant_scorer", "simple"):
        (repository / name).mkdir(parents=True)
        (repository / name / "config.yaml").symlink_to(example_repository / name / "config.yaml")
        (repository / name / "1").symlink_to(example_repository / name / "1")
    tiny = repository / "tiny_cnn"
    (tiny / "1").mkdir(parents=True)
    (tiny / "config.yaml").write_text(TINY_CONFIG)
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.Softplus(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 2),
        torch.nn.Softmax(dim=1),
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(net, (torch.rand(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tiny / "1" / "model.pt2"))
    data_dir = root / "data"
    allowed = make_token(data_dir, "explainer", "variant_scorer", "tiny_cnn", "simple")
    other = make_token(data_dir, "other", "simple")
    server = start_server(
        repository,
        root / "server.log",
        env={"MEDSERVE_AUTH_DISABLED": "false", "MEDSERVE_EXPLAIN_MAX_PERTURBATIONS": "250"},
    )
    yield Served(server, data_dir, allowed, other)
    stop_server(server)


FEATURES = [float(v) for v in np.random.default_rng(3).uniform(0.1, 40.0, size=25)]
VARIANT = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 25], "data": FEATURES}]}
IMAGE = np.random.default_rng(4).uniform(size=(1, 1, 16, 16)).astype(np.float32)


def tiny_body(parameters: dict[str, object]) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 1, 16, 16], "data": IMAGE.ravel().tolist()}
        ],
        "parameters": parameters,
    }


def audit_records(served: Served, wanted: set[str]) -> dict[str, dict[str, str]]:
    """The audit records of the request ids ``wanted``, once they are all there (polled)."""
    deadline = time.monotonic() + 60
    found: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        done = medserve(served.data_dir, "audit", "export")
        if done.returncode == 0:
            rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            found = {r["request_id"]: r for r in rows if r.get("request_id") in wanted}
            if set(found) == wanted:
                return found
        time.sleep(0.5)
    raise AssertionError(f"audit records {sorted(wanted - set(found))} never appeared")


def test_tabular_explanation_over_http_names_features_and_links_the_inference(served: Served) -> None:
    infer = served.post("/v2/models/variant_scorer/infer", VARIANT)
    assert infer.status_code == 200, infer.text
    inference_id = infer.headers["X-Request-ID"]
    body = {**VARIANT, "parameters": {"method": "feature_ablation", "target": 0, "explains": inference_id}}
    reply = served.post("/v2/models/variant_scorer/explain", body, headers={"X-Request-ID": "explain-tab-1"})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    (output,) = doc["outputs"]
    assert output["name"] == "attributions" and output["shape"] == [1, 25]
    parameters = doc["parameters"]
    assert parameters["explains"] == inference_id and parameters["explains_ran_here"] is False
    assert parameters["feature_names"][:3] == ["qual", "qual_present", "depth"]
    assert parameters["priority_class"] == "bulk" and parameters["model_evaluations"] == 26
    assert parameters["output_value"] == pytest.approx(infer.json()["outputs"][0]["data"][0], rel=1e-5)
    # without 'explains' the call runs (and audits) the inference itself
    ig = served.post(
        "/v2/models/variant_scorer/explain",
        {**VARIANT, "parameters": {"method": "integrated_gradients", "target": 0, "steps": 4}},
        headers={"X-Request-ID": "explain-tab-2"},
    )
    assert ig.status_code == 200, ig.text
    assert ig.json()["parameters"]["explains"] == "explain-tab-2.inference"
    assert ig.json()["parameters"]["implementation"] == "finite_differences"
    records = audit_records(
        served, {inference_id, "explain-tab-1", "explain-tab-2", "explain-tab-2.inference"}
    )
    assert records["explain-tab-1"]["event"] == "model.explain"
    assert f"explains {inference_id}" in records["explain-tab-1"]["detail"]
    assert records["explain-tab-2.inference"]["event"] == "inference"
    assert "explains explain-tab-2.inference" in records["explain-tab-2"]["detail"]
    assert records["explain-tab-1"]["output_digest"]


def test_perturbations_run_in_the_lowest_priority_class(served: Served) -> None:
    """The scheduler's own per-class counters: an occlusion's perturbed inputs are queued as 'bulk'."""

    def bulk_count() -> float:
        text = httpx.get(served.url("/metrics"), headers={"Authorization": f"Bearer {served.allowed}"}).text
        pattern = r'medserve_requests_by_class_total\{[^}]*class="bulk"[^}]*model="simple"[^}]*\} ([0-9.e+]+)'
        alt = r'medserve_requests_by_class_total\{[^}]*model="simple"[^}]*class="bulk"[^}]*\} ([0-9.e+]+)'
        return sum(float(v) for v in re.findall(pattern, text) + re.findall(alt, text))

    before = bulk_count()
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": list(range(16))}],
        "parameters": {"method": "occlusion", "target": {"output": "OUTPUT0", "index": 3}, "batch_size": 8},
    }
    reply = served.post("/v2/models/simple/explain", body)
    # 'simple' has two inputs: an explanation needs a model with one, and says so
    assert reply.status_code == 400 and "one input" in reply.json()["error"]
    reply = served.post(
        "/v2/models/variant_scorer/explain",
        {**VARIANT, "parameters": {"method": "occlusion", "target": 0, "batch_size": 13}},
    )
    assert reply.status_code == 200, reply.text
    text = httpx.get(served.url("/metrics"), headers={"Authorization": f"Bearer {served.allowed}"}).text
    lines = [line for line in text.splitlines() if line.startswith("medserve_requests_by_class_total{")]
    variant = [line for line in lines if 'model="variant_scorer"' in line and 'class="bulk"' in line]
    # 26 perturbed inputs in chunks of 13 (2 requests) plus the input and baseline (1): 3 bulk requests
    assert sum(float(line.rsplit(" ", 1)[1]) for line in variant) >= 3, lines
    assert bulk_count() == before  # the refused request queued nothing


def test_binary_explanation_and_gradient_methods_on_the_torch_model(served: Served) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        served.server.http_url, network_timeout=120.0, connection_timeout=120.0
    )
    headers = {"Authorization": f"Bearer {served.allowed}"}
    image = httpclient.InferInput("image", [1, 1, 16, 16], "FP32")
    image.set_data_from_numpy(IMAGE, binary_data=True)
    body, json_size = client.generate_request_body(
        [image],
        outputs=[httpclient.InferRequestedOutput("attributions", binary_data=True)],
        parameters={"method": "integrated_gradients", "target": 1, "steps": 200},
    )
    reply = httpx.post(
        served.url("/v2/models/tiny_cnn/explain"),
        content=body,
        headers={**headers, "Inference-Header-Content-Length": str(json_size)},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    result = httpclient.InferenceServerClient.parse_response_body(
        reply.content, header_length=int(reply.headers["Inference-Header-Content-Length"])
    )
    attributions = result.as_numpy("attributions")
    parameters = result.get_response()["parameters"]
    assert attributions.shape == (1, 1, 16, 16)
    assert parameters["implementation"] == "captum"
    # completeness of Captum's IG on the served torch model, within 1 %
    assert parameters["completeness_error"] < 0.01
    gap = parameters["output_value"] - parameters["baseline_value"]
    assert float(attributions.sum()) == pytest.approx(gap, rel=0.01)
    cam = served.post("/v2/models/tiny_cnn/explain", tiny_body({"method": "grad_cam", "target": 0}))
    assert cam.status_code == 200, cam.text
    assert cam.json()["parameters"]["method_parameters"]["layer"] == "0"


def test_explanation_over_grpc(served: Served) -> None:
    pb = tritonclient_grpc.service_pb2
    request = pb.ModelInferRequest(model_name="tiny_cnn", id="grpc-explain-1")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 16, 16])
    del tensor
    request.raw_input_contents.append(IMAGE.tobytes())
    request.parameters["method"].string_param = "occlusion"
    request.parameters["target"].string_param = json.dumps({"output": "probabilities", "index": 1})
    request.parameters["window"].string_param = "[1, 4, 4]"
    metadata = (("authorization", f"Bearer {served.allowed}"),)
    with grpc.insecure_channel(served.server.grpc_url) as channel:
        explain = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelExplain",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        reply = explain(request, metadata=metadata, timeout=120)
        assert reply.id == "grpc-explain-1"
        assert reply.outputs[0].name == "attributions" and list(reply.outputs[0].shape) == [1, 1, 16, 16]
        values = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
        assert values.size == 256 and np.isfinite(values).all()
        assert json.loads(reply.parameters["method_parameters"].string_param)["window"] == [1, 4, 4]
        for parameters, words in [
            ({"method": "lime"}, "must be one of"),
            ({"method": "occlusion", "target": "probabilities:7"}, "out of range"),
            ({"method": "occlusion", "target": 1, "window": 1}, "takes 257 model evaluations"),
        ]:
            bad = pb.ModelInferRequest()
            bad.CopyFrom(request)
            bad.parameters.clear()
            for key, value in parameters.items():
                if isinstance(value, int):
                    bad.parameters[key].int64_param = value
                else:
                    bad.parameters[key].string_param = value
            with pytest.raises(grpc.RpcError) as refused:
                explain(bad, metadata=metadata, timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert words in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as denied:
            explain(request, metadata=(("authorization", f"Bearer {served.other}"),), timeout=60)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_rights_are_checked_before_the_body_and_bad_requests_are_400(served: Served) -> None:
    # not JSON at all: a caller without the right learns only that (403), never a parse error
    garbage = b"{not json" * 1000
    for token, status in ((served.other, 403), ("", 401)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = httpx.post(
            served.url("/v2/models/tiny_cnn/explain"), content=garbage, headers=headers, timeout=60
        )
        assert reply.status_code == status, reply.text
    reply = httpx.post(
        served.url("/v2/models/tiny_cnn/explain"),
        content=garbage,
        headers={"Authorization": f"Bearer {served.allowed}"},
        timeout=60,
    )
    assert reply.status_code == 400
    for parameters, words in [
        ({"method": "shap", "target": 0}, "must be one of"),
        ({"method": "occlusion"}, "'target' is required"),
        ({"method": "occlusion", "target": 2}, "out of range"),
        ({"method": "occlusion", "target": {"output": "logits", "index": 0}}, "outputs are"),
        ({"method": "occlusion", "target": 0, "window": "wide"}, "window"),
        ({"method": "occlusion", "target": 0, "window": 1}, "explain_max_perturbations"),
        ({"method": "integrated_gradients", "target": 0, "steps": -3}, "steps"),
        ({"method": "integrated_gradients", "target": 0, "baseline": [0.5, 0.5]}, "baseline"),
        ({"method": "occlusion", "target": 0, "explains": "no spaces allowed"}, "explains"),
        ({"method": "grad_cam", "target": 0, "layer": "9"}, "not a convolutional layer"),
    ]:
        reply = served.post("/v2/models/tiny_cnn/explain", tiny_body(parameters))
        assert reply.status_code == 400, (parameters, reply.text)
        assert words in reply.json()["error"], (words, reply.json())
    feature = served.post(
        "/v2/models/variant_scorer/explain", {**VARIANT, "parameters": {"method": "grad_cam", "target": 0}}
    )
    assert feature.status_code == 400 and "torch model" in feature.json()["error"]
    two = {
        "inputs": [{**VARIANT["inputs"][0], "shape": [2, 25], "data": FEATURES * 2}],
        "parameters": {"method": "occlusion", "target": 0},
    }  # type: ignore[dict-item]
    reply = served.post("/v2/models/variant_scorer/explain", two)
    assert reply.status_code == 400 and "one sample" in reply.json()["error"]
