"""Authentication and roles on every door: each endpoint × (no token, wrong role, right role).

One server with authentication on; tokens are made with the real ``medserve tokens create`` command
against the server's own store before it starts.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow


def medserve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args], capture_output=True, text=True, env=env, timeout=120
    )


def make_token(data_dir: Path, name: str, role: str, *models: str, expires: str = "") -> str:
    args = ["tokens", "create", "--init", "--role", role, "--name", f"test-{name}"]
    if models:
        args += ["--models", *models]
    if expires:
        args += ["--expires-in", expires]
    done = medserve(data_dir, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Secured:
    server: RunningServer
    data_dir: Path
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "service": make_token(data_dir, "service", "service", "simple"),
        "monitor": make_token(data_dir, "monitor", "service", "patient_monitor"),
        "expired": make_token(data_dir, "expired", "service", "simple", expires="1s"),
    }
    revoked = make_token(data_dir, "revoked", "service", "simple")
    assert medserve(data_dir, "tokens", "revoke", revoked.split("_")[1]).returncode == 0
    tokens["revoked"] = revoked
    server = start_server(example_repository, root / "server.log", env={"MEDSERVE_AUTH_DISABLED": "false"})
    time.sleep(1.1)  # the expired token's lifetime is over
    yield Secured(server, data_dir, tokens)
    stop_server(server)


INFER_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [1] * 16},
    ]
}

# (method, path, body, token that may, token that may not) — "may not" is a valid token whose role
# or grants do not allow the call.
ENDPOINTS: list[tuple[str, str, object, str, str]] = [
    ("GET", "/v2", None, "viewer", ""),
    ("GET", "/v2/models/simple", None, "service", "monitor"),
    ("GET", "/v2/models/simple/versions/1", None, "viewer", "monitor"),
    ("GET", "/v2/models/simple/ready", None, "service", "monitor"),
    ("GET", "/v2/models/simple/config", None, "viewer", "monitor"),
    ("GET", "/v2/models/simple/stats", None, "service", "monitor"),
    ("GET", "/v2/models/stats", None, "viewer", ""),
    ("GET", "/v2/models/simple/monitoring", None, "service", "monitor"),
    ("POST", "/v2/models/simple/infer", INFER_BODY, "service", "viewer"),
    ("POST", "/v2/models/simple/versions/1/infer", INFER_BODY, "admin", "monitor"),
    ("POST", "/v2/repository/index", {}, "viewer", ""),
    ("POST", "/v2/repository/models/simple/load", {}, "admin", "service"),
    ("POST", "/v2/repository/models/simple/rollback", {"clear": True}, "admin", "viewer"),
    ("GET", "/metrics", None, "viewer", ""),
    ("GET", "/v2/alerts", None, "monitor", "service"),
    ("POST", "/v2/alerts/no-such-alert/acknowledge", {"by": "nurse"}, "monitor", "viewer"),
]


def call(secured: Secured, method: str, path: str, body: object, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secured.tokens[token]}"} if token else {}
    url = f"http://{secured.server.http_url}{path}"
    return httpx.request(method, url, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body", "allowed", "denied"), ENDPOINTS)
def test_http_endpoint_matrix(
    secured: Secured, method: str, path: str, body: object, allowed: str, denied: str
) -> None:
    anonymous = call(secured, method, path, body, None)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "credentials" in anonymous.json()["error"]
    if denied:
        refused = call(secured, method, path, body, denied)
        assert refused.status_code == 403, refused.text
    granted = call(secured, method, path, body, allowed)
    assert granted.status_code not in (401, 403), granted.text
    if path != "/v2/alerts/no-such-alert/acknowledge" and "rollback" not in path:
        assert granted.status_code == 200, granted.text


def test_health_is_open_and_bad_tokens_are_refused_alike(secured: Secured) -> None:
    base = f"http://{secured.server.http_url}"
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    reasons = {}
    for name in ("expired", "revoked"):
        reply = call(secured, "POST", "/v2/models/simple/infer", INFER_BODY, name)
        assert reply.status_code == 401, reply.text
        reasons[name] = reply.json()["error"]
    assert "expired" in reasons["expired"] and "revoked" in reasons["revoked"]
    garbage = httpx.get(f"{base}/v2/models/simple", headers={"Authorization": "Bearer msv_nope_nope"})
    assert garbage.status_code == 401
    # Without credentials a missing model and a present one look the same.
    missing = httpx.get(f"{base}/v2/models/no_such_model")
    present = httpx.get(f"{base}/v2/models/simple")
    assert missing.status_code == present.status_code == 401
    assert missing.json() == present.json()
    # A grant-limited token gets 403 whether or not the model exists.
    for model in ("no_such_model", "chest_xray_classifier"):
        assert call(secured, "GET", f"/v2/models/{model}", None, "service").status_code == 403


def test_grants_filter_listings(secured: Secured) -> None:
    index = call(secured, "POST", "/v2/repository/index", {}, "service").json()
    assert {row["name"] for row in index} == {"simple"}
    stats = call(secured, "GET", "/v2/models/stats", None, "service").json()["model_stats"]
    assert {row["name"] for row in stats} == {"simple"}
    everything = call(secured, "POST", "/v2/repository/index", {}, "viewer").json()
    assert len({row["name"] for row in everything}) > 3


def test_tritonclient_http_with_token(secured: Secured) -> None:
    client = httpclient.InferenceServerClient(secured.server.http_url)
    headers = {"Authorization": f"Bearer {secured.tokens['service']}"}
    inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
    result = client.infer("simple", inputs, headers=headers)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2, np.float32))
    with pytest.raises(InferenceServerException, match="credentials"):
        client.infer("simple", inputs)


def grpc_status(call_fn: Callable[[dict[str, str] | None], object], token: str | None) -> object:
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        call_fn(headers)
    except InferenceServerException as exc:
        return {
            "StatusCode.UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
            "StatusCode.PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
        }.get(str(exc.status()), grpc.StatusCode.UNKNOWN)
    return None


def test_grpc_endpoint_matrix(secured: Secured) -> None:
    client = grpcclient.InferenceServerClient(secured.server.grpc_url)
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
    calls = {
        "server_metadata": (lambda h: client.get_server_metadata(headers=h), "viewer", ""),
        "model_metadata": (lambda h: client.get_model_metadata("simple", headers=h), "service", "monitor"),
        "model_ready": (lambda h: client.is_model_ready("simple", headers=h), "viewer", "monitor"),
        "model_config": (lambda h: client.get_model_config("simple", headers=h), "service", "monitor"),
        "statistics": (lambda h: client.get_inference_statistics("simple", headers=h), "viewer", "monitor"),
        "index": (lambda h: client.get_model_repository_index(headers=h), "viewer", ""),
        "infer": (lambda h: client.infer("simple", inputs, headers=h), "service", "viewer"),
        "load": (lambda h: client.load_model("simple", headers=h), "admin", "service"),
    }
    assert client.is_server_live() and client.is_server_ready()  # health stays open
    for name, (fn, allowed, denied) in calls.items():
        assert grpc_status(fn, None) == grpc.StatusCode.UNAUTHENTICATED, name
        if denied:
            assert grpc_status(fn, secured.tokens[denied]) == grpc.StatusCode.PERMISSION_DENIED, name
        assert grpc_status(fn, secured.tokens[allowed]) is None, name


def collect(replies: queue.Queue[object], result: object, error: object) -> None:
    replies.put(error or result)


def test_grpc_stream_needs_credentials(secured: Secured) -> None:
    for token, expected in ((None, "UNAUTHENTICATED"), ("service", None)):
        client = grpcclient.InferenceServerClient(secured.server.grpc_url)
        replies: queue.Queue[object] = queue.Queue()
        headers = {"authorization": f"Bearer {secured.tokens[token]}"} if token else None
        client.start_stream(callback=partial(collect, replies), headers=headers)
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        try:
            client.async_stream_infer("simple", inputs)
        except InferenceServerException:
            assert expected  # the server refused the stream at once; the reason is in the callback
        reply = replies.get(timeout=30)
        if expected:
            assert isinstance(reply, Exception) and expected in str(reply)
        else:
            assert not isinstance(reply, Exception), reply
        client.stop_stream()
        client.close()


def test_websocket_and_sse_doors(secured: Secured) -> None:
    url = f"ws://{secured.server.http_url}/v2/monitor/stream"
    with pytest.raises(InvalidStatus) as refused:
        connect(url)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as denied:
        connect(url, additional_headers={"Authorization": f"Bearer {secured.tokens['service']}"})
    assert denied.value.response.status_code == 403
    with connect(f"{url}?access_token={secured.tokens['monitor']}") as socket:
        socket.send(
            json.dumps(
                {
                    "sequence_id": "auth-ws",
                    "sequence_start": True,
                    "sample_seq": 0,
                    "timestamp": time.time(),
                    "vitals": {"pulse": 80},
                }
            )
        )
        assert "error" not in json.loads(socket.recv(timeout=30))
    sse = f"http://{secured.server.http_url}/v2/alerts/stream"
    assert httpx.get(sse, timeout=10).status_code == 401
    with httpx.stream("GET", f"{sse}?access_token={secured.tokens['monitor']}", timeout=10) as reply:
        assert reply.status_code == 200


def test_audit_trail_records_the_matrix(secured: Secured) -> None:
    call(
        secured,
        "POST",
        "/v2/models/simple/infer",
        {**INFER_BODY, "id": "audited-1", "parameters": {"patient_id": "MRN-0042"}},
        "service",
    )
    deadline = time.monotonic() + 30
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        done = medserve(secured.data_dir, "audit", "export")
        records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        if any(r["request_id"] == "audited-1" for r in records):
            break
        time.sleep(0.5)
    events = {r["event"] for r in records}
    assert {"server.start", "model.load", "inference", "auth.failure", "token.create"} <= events
    mine = next(r for r in records if r["request_id"] == "audited-1")
    assert mine["principal"] == "test-service" and mine["door"] == "http" and mine["status"] == "ok"
    assert mine["model"] == "simple" and mine["model_version"] == "1" and len(str(mine["model_digest"])) == 64
    assert mine["patient_ref"] and "MRN-0042" not in json.dumps(records)
    verified = medserve(secured.data_dir, "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
