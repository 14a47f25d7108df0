"""Cluster mode: ``medserve serve --cluster ADDRESS`` on a real Ray cluster of a head and three worker
nodes started on this machine (``ray.cluster_utils.Cluster``; the head offers no CPU, so every replica
runs on a worker node). One worker declares a custom accelerator resource (``npu``); two declare a
``slot`` resource each, so the two replicas of ``simple`` land on two different nodes.

Inference goes through medserve's doors (tritonclient over HTTP and gRPC), the engines run in Ray
Serve replicas on the nodes their resources match, a model asking for a resource no node has stays
pending with the reason, and a worker node killed (SIGKILL, every process of it) under load loses no
request: the batches in flight there are sent once more to the live replica."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import RunningServer, start_server, stop_server

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the 'ray' extra is not installed")

pytestmark = pytest.mark.timeout(600)

#: custom resources per model: two slot nodes, one npu node, and no fpga anywhere
RESOURCES = {"simple": {"slot": 1}, "simple_nobatch": {"npu": 1}, "identity_fp32": {"fpga": 1}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    nodes = ray_cluster_utils.Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    try:
        nodes.slot_nodes = [nodes.add_node(num_cpus=2, resources={"slot": 1}) for _ in range(2)]
        # room for both versions of simple_nobatch (npu 1 each) even when Ray puts other models' replicas
        # on this node's CPUs (it may: they ask for CPUs only)
        nodes.npu_node = nodes.add_node(num_cpus=4, resources={"npu": 2})
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()


@pytest.fixture(scope="module")
def served(
    cluster: Any, example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cluster")
    repository = root / "repository"
    for model in ("simple", "simple_nobatch", "identity_fp32", "identity_fp64"):
        shutil.copytree(example_repository / model, repository / model)
    config = repository / "simple" / "config.yaml"
    config.write_text(config.read_text().replace("instance_count: 1", "instance_count: 2"))
    server = start_server(
        repository,
        root / "server.log",
        "--cluster",
        cluster.address,
        env={
            "MEDSERVE_CLUSTER_RESOURCES": json.dumps(RESOURCES),
            "MEDSERVE_CLUSTER_AUTOSCALING": json.dumps({"identity_fp64": [1, 2]}),
        },
        ready_within_s=300,  # replicas start worker processes on a busy machine: allow for it
    )
    try:
        yield server
    finally:
        stop_server(server)


def _pair(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((rows, 16), dtype=np.float32), rng.random((rows, 16), dtype=np.float32)


def _infer_http(url: str, model: str, a: np.ndarray, b: np.ndarray, request_id: str = "") -> dict[str, Any]:
    body = {
        "id": request_id,
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": list(b.shape), "data": b.ravel().tolist()},
        ],
    }
    answer = httpx.post(f"http://{url}/v2/models/{model}/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    outputs = {
        o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in answer.json()["outputs"]
    }
    assert np.allclose(outputs["OUTPUT0"], a + b) and np.allclose(outputs["OUTPUT1"], a - b)
    return outputs


@contextlib.contextmanager
def _load(clients: int, send: Callable[[int, int], None]) -> Iterator[tuple[list[str], list[int]]]:
    """``clients`` threads calling ``send(client, n)`` back to back while the block runs; yields the
    failures and the count of calls answered (one counter in a list, read while it grows)."""
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client(seed: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                send(seed, n)
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected; the test reports them
                failures.append(repr(exc)[:300])
            n += 1

    threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield failures, answered
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def _replicas_when(server: RunningServer, model: str, running: int, within_s: float) -> dict[str, int]:
    """The model's replicas by state once ``running`` of them run, or as they are after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        replicas: dict[str, int] = _metadata(server, model)["replicas"]
        if replicas.get("running") == running or time.monotonic() >= deadline:
            return replicas
        time.sleep(1)


def _audit(data_dir: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "medserve", "audit", "export"],
        env={**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _metadata(server: RunningServer, model: str) -> dict[str, Any]:
    answer = httpx.get(f"http://{server.http_url}/v2/models/{model}", timeout=30)
    assert answer.status_code == 200, answer.text
    parameters: dict[str, Any] = answer.json()["parameters"]
    return parameters


def test_models_run_as_deployments_on_the_nodes_their_resources_name(
    cluster: Any, served: RunningServer
) -> None:
    import tritonclient.grpc as grpcclient

    a, b = _pair(3, 1)
    _infer_http(served.http_url, "simple", a, b)
    client = grpcclient.InferenceServerClient(served.grpc_url)
    inputs = [grpcclient.InferInput("INPUT0", [16], "FP32"), grpcclient.InferInput("INPUT1", [16], "FP32")]
    inputs[0].set_data_from_numpy(a[0])
    inputs[1].set_data_from_numpy(b[0])
    result = client.infer("simple_nobatch", inputs, model_version="1")  # version 2 computes otherwise
    assert np.allclose(result.as_numpy("OUTPUT0"), a[0] + b[0])

    simple, nobatch = _metadata(served, "simple"), _metadata(served, "simple_nobatch")
    assert simple["runtime"] == "ray_serve" and simple["placement"]["source"] == "cluster"
    assert simple["replicas"] == {"running": 2}
    assert "1 slot" in simple["placement"]["explanation"]
    assert nobatch["node"] == cluster.npu_node.node_id  # the only node with an npu
    assert nobatch["replicas"] == {"running": 1}


def test_a_large_tensor_crosses_through_the_object_store(served: RunningServer) -> None:
    """A 3.2 MB batch (over the 1 MiB sent by value) goes to the replica through Ray's object store and
    comes back whole, over HTTP with binary tensors both ways."""
    import tritonclient.http as httpclient

    from medserve.runtimes.ray_serve import BY_VALUE_MAX_BYTES

    data = np.random.default_rng(4).random((1, 400_000))
    assert data.nbytes > BY_VALUE_MAX_BYTES
    client = httpclient.InferenceServerClient(served.http_url)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    result = client.infer("identity_fp64", [tensor], outputs=wanted)
    assert np.array_equal(result.as_numpy("OUTPUT0"), data)


def test_an_autoscaled_deployment_adds_a_replica_under_load(served: RunningServer) -> None:
    """``cluster_autoscaling`` [1, 2]: one replica at rest; with more than one batch waiting or running
    for a few seconds, Ray Serve adds the second (the server holds an engine for each it may have)."""
    import tritonclient.grpc as grpcclient

    metadata = _metadata(served, "identity_fp64")
    assert metadata["replicas"] == {"running": 1}, metadata["replicas"]
    assert "1 to 2 replicas (scaled on queue length)" in metadata["placement"]["explanation"]
    connection = grpcclient.InferenceServerClient(served.grpc_url)  # thread-safe; one channel
    data = np.random.default_rng(5).random((1, 20_000))
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP64")
    tensor.set_data_from_numpy(data)

    def send(client: int, n: int) -> None:
        result = connection.infer("identity_fp64", [tensor])
        assert np.array_equal(result.as_numpy("OUTPUT0"), data)

    with _load(6, send) as (failures, _):
        replicas = _replicas_when(served, "identity_fp64", running=2, within_s=90)
    assert not failures, failures[:3]
    assert replicas.get("running") == 2, replicas


def test_a_model_asking_for_a_resource_no_node_has_is_pending_with_the_reason(served: RunningServer) -> None:
    index = httpx.post(f"http://{served.http_url}/v2/repository/index", json={}, timeout=30).json()
    entry = next(e for e in index if e["name"] == "identity_fp32")
    assert entry["state"] != "READY", entry
    reason = entry.get("reason", "")
    assert "is pending: no node of the cluster offers {'fpga': 1.0" in reason, reason
    # the others serve meanwhile
    a, b = _pair(1, 2)
    _infer_http(served.http_url, "simple", a, b)


def test_a_job_run_on_the_cluster_scores_on_the_replicas(
    cluster: Any, served: RunningServer, tmp_path: Path
) -> None:
    """``medserve job run --cluster`` joins the cluster and scores through the same deployment the
    server uses; it leaves the deployment running when it ends, and the server goes on serving."""
    from tests.integration.test_jobs import spec_text, write_table

    rows = 600
    values = write_table(tmp_path / "table.csv", rows)
    (tmp_path / "spec.yaml").write_text(spec_text("table.csv", "out.parquet", chunk_size=100, batch_size=4))
    done = subprocess.run(
        [sys.executable, "-m", "medserve", "job", "run", "--init", "--cluster", cluster.address, "spec.yaml"],
        cwd=tmp_path,
        env={
            **os.environ,
            "MEDSERVE_DATA_DIR": str(tmp_path / "data"),
            "MEDSERVE_REPOSITORY": str(served.repository),
            "MEDSERVE_CLUSTER_RESOURCES": json.dumps(RESOURCES),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = _audit(tmp_path / "data")
    devices = {r["device"] for r in records if r["event"] == "inference"}
    assert devices and all(d.startswith("ray:medserve.simple.v1.") for d in devices), records[-3:]
    table = pq.read_table(tmp_path / "out.parquet")
    assert table["index"].to_pylist() == list(range(rows))
    sums = np.stack([table[f"OUTPUT0_{k}"].to_numpy() for k in range(16)], axis=1)
    np.testing.assert_allclose(sums, values[:, :16] + values[:, 16:], rtol=1e-5, atol=1e-5)
    assert _metadata(served, "simple")["replicas"] == {"running": 2}
    a, b = _pair(2, 3)
    _infer_http(served.http_url, "simple", a, b)


def test_a_worker_node_killed_under_load_loses_no_request(cluster: Any, served: RunningServer) -> None:
    """Four clients send batches to ``simple`` (two replicas, one on each ``slot`` node); one slot node
    is killed mid-load. Every request is answered with the right outputs, and health shows the reduced
    capacity: one replica running of the two wanted (the lost one cannot be re-created without a node
    offering a slot). Then the npu node is killed: its model is no longer ready."""

    def send(client: int, n: int) -> None:
        a, b = _pair(2, client * 1000 + n)
        _infer_http(served.http_url, "simple", a, b, f"load-{client}-{n}")

    with _load(4, send) as (failures, answered):
        time.sleep(3)
        before = answered[0]
        cluster.remove_node(cluster.slot_nodes[0], allow_graceful=False)  # SIGKILL of the node's processes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and answered[0] < before + 40:
            time.sleep(0.2)
    assert not failures, failures[:5]
    assert answered[0] >= before + 40, (before, answered[0])
    replicas = _replicas_when(served, "simple", running=1, within_s=60)
    assert replicas.get("running") == 1, replicas
    assert sum(replicas.values()) >= 2, replicas  # the lost one is wanted again: pending or starting
    # a batch that was in flight on the lost replica was sent again, and its requests' audit records
    # say so (whether one was in flight at the kill is up to timing: the log counts them)
    retried = _metadata(served, "simple")["retried_batches"]
    records = _audit(served.log.parent / "data")
    twice = [r for r in records if r["event"] == "inference" and r["detail"].startswith("sent twice")]
    assert (retried > 0) == bool(twice), (retried, twice[:3])
    assert all("the first replica was lost" in r["detail"] and r["status"] == "ok" for r in twice)
    print(f"batches sent twice: {retried}; requests audited as sent twice: {len(twice)}")

    # the only node offering an npu lost as well: that model has no replica left and is not ready (the
    # Open Inference Protocol's 400), while simple, with one replica left, is
    url = f"http://{served.http_url}/v2/models"
    assert httpx.get(f"{url}/simple_nobatch/ready", timeout=30).status_code == 200
    cluster.remove_node(cluster.npu_node, allow_graceful=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/simple_nobatch/ready", timeout=30).status_code == 400:
            break
        time.sleep(1)
    answer = httpx.get(f"{url}/simple_nobatch/ready", timeout=30)
    assert answer.status_code == 400 and "is not ready" in answer.text, answer.text
    assert httpx.get(f"{url}/simple/ready", timeout=30).status_code == 200


def test_an_unreachable_cluster_is_refused_at_start_with_the_reason(
    example_repository: Path, tmp_path: Path
) -> None:
    """Ray would retry an unreachable head for minutes without a word; the server refuses at once."""
    from tests.conftest import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medserve",
            "serve",
            "--repository",
            str(example_repository),
            "--cluster",
            address,
        ],
        env={**os.environ, "MEDSERVE_DATA_DIR": str(tmp_path / "data"), "MEDSERVE_AUTH_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cluster_address '{address}': cannot reach the Ray cluster's head" in done.stderr, done.stderr
