"""Overflow offload: an edge sends the requests its own admission control refuses to its hub.

The edge is a server core in this process over ``simple`` on an engine that takes 200 ms an
execution, one request at a time, with room for one queued request; the hub is a real ``medserve
serve`` on loopback serving ``simple``. Of four requests sent at once, the edge runs one or two and
refuses the rest: with ``simple`` offloaded, those are answered by the hub (right outputs, the same request
ids, audited on both sides); without offload, or with the hub gone, they are refused (503) naming
why."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from medserve.audit.rows import iter_records
from medserve.audit.trail import AuditTrail
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.edge.client import HubClient, HubLink
from medserve.edge.offload import HubOverflow, decode_response, encode_request
from medserve.repository.repository import ModelRepository
from medserve.runtimes import register_runtime, unregister_runtime
from medserve.runtimes.onnxruntime import OnnxRuntime
from medserve.security.authenticate import Authenticator
from medserve.security.signing import create_signing_key
from medserve.store.database import Database, default_url
from medserve.values.access import Caller
from medserve.values.errors import Overloaded
from medserve.values.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from tests.conftest import RunningServer, start_server, stop_server

FAST = {"flush_interval_s": 0.01, "poll_interval_s": 0.05, "backoff_initial_s": 0.02, "backoff_max_s": 0.1}


class SlowSimple(OnnxRuntime):
    """``simple`` on ONNX Runtime, 200 ms an execution; counts the executions."""

    runs = 0

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        time.sleep(0.2)
        SlowSimple.runs += 1
        return super().run(inputs, output_names)


@dataclass
class Edge:
    service: InferenceService
    trail: AuditTrail
    hub: RunningServer
    hub_data: Path


@pytest.fixture()
async def edge(example_repository: Path, tmp_path: Path) -> AsyncIterator[Edge]:
    hub_repository = tmp_path / "hub-repository"
    shutil.copytree(example_repository / "simple", hub_repository / "simple")
    (tmp_path / "hub").mkdir()
    hub = await asyncio.to_thread(start_server, hub_repository, tmp_path / "hub" / "hub.log")
    repository = tmp_path / "edge-repository"
    shutil.copytree(example_repository / "simple", repository / "simple")
    config_path = repository / "simple" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update(runtime="slow_simple_edge", max_queue_size=1)
    config.pop("dynamic_batching", None)  # one request an execution
    config_path.write_text(yaml.safe_dump(config))
    register_runtime("slow_simple_edge", SlowSimple)
    database = Database(default_url(tmp_path / "edge-data"))
    database.migrate()
    trail = AuditTrail(database, tmp_path / "edge-journal", fsync=False, chain="edge", **FAST)
    trail.open()
    registry = ModelRegistry(ModelRepository(repository), ServingMetrics())
    service = InferenceService(registry, Authenticator(None, None, disabled=True), audit=trail)
    await registry.load_all()
    try:
        yield Edge(service, trail, hub, tmp_path / "hub" / "data")
    finally:
        await service.close()
        trail.close()
        database.dispose()
        unregister_runtime("slow_simple_edge")
        stop_server(hub)


def request(tag: int) -> InferenceRequest:
    a = np.arange(16, dtype=np.float32).reshape(1, 16) + tag
    b = np.full((1, 16), 2 * tag, dtype=np.float32)
    inputs = [Tensor("INPUT0", "FP32", (1, 16), a), Tensor("INPUT1", "FP32", (1, 16), b)]
    return InferenceRequest("simple", id=f"req-{tag}", inputs=inputs, parameters={"priority": 1})


async def send_four(service: InferenceService) -> list[object]:
    caller = Caller.system()
    calls = [service.infer(request(tag), caller) for tag in range(4)]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def records(database_dir: Path, chain: str = "") -> list[object]:
    database = Database(default_url(database_dir))
    try:
        return list(iter_records(database, chain=chain))
    finally:
        database.dispose()


def test_a_request_and_its_answer_cross_as_binary_tensors() -> None:
    sent = request(3)
    sent.outputs = [RequestedOutput("OUTPUT1", {"classification": 0})]
    body, length = encode_request(sent)
    header = yaml.safe_load(body[:length])
    assert header["id"] == "req-3" and header["parameters"] == {"priority": 1}
    assert [i["parameters"]["binary_data_size"] for i in header["inputs"]] == [64, 64]
    asked = {"classification": 0, "binary_data": True}
    assert header["outputs"] == [{"name": "OUTPUT1", "parameters": asked}]
    assert len(body) == length + 128
    # an answer with one binary and one JSON output
    data = np.arange(4, dtype=np.float32).reshape(2, 2)
    head = (
        b'{"model_name":"simple","model_version":"1","id":"req-3","outputs":['
        b'{"name":"A","datatype":"FP32","shape":[2,2],"parameters":{"binary_data_size":16}},'
        b'{"name":"B","datatype":"BYTES","shape":[2],"data":["x","yz"]}]}'
    )
    answer = decode_response(head + data.tobytes(), len(head), sent)
    assert answer.model_version == "1" and answer.id == "req-3"
    assert np.array_equal(answer.outputs[0].data, data)
    assert list(answer.outputs[1].data) == [b"x", b"yz"]


async def test_refused_requests_are_answered_by_the_hub_and_audited_on_both_sides(edge: Edge) -> None:
    # without offload: some of four are refused by the edge's admission control (queue full; how many
    # depends on whether the first has left the queue when the others come)
    SlowSimple.runs = 0
    answers = await send_four(edge.service)
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert 2 <= len(refused) <= 3 and all("queue full" in str(a) for a in refused), answers
    assert SlowSimple.runs == 4 - len(refused)

    # with offload to the hub: every request answered, the refused ones by the hub
    client = HubClient(HubLink(f"http://{edge.hub.http_url}"))
    edge.service.overflow = HubOverflow(client, ["simple"])
    SlowSimple.runs = 0
    try:
        answers = await send_four(edge.service)
    finally:
        edge.service.overflow = None
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    ran_here = SlowSimple.runs  # the edge ran these; the hub answered the others
    assert 1 <= ran_here <= 2
    for tag, answer in enumerate(answers):
        sent = request(tag)
        outputs = {o.name: o.data for o in answer.outputs}  # type: ignore[attr-defined]
        a, b = sent.inputs[0].data, sent.inputs[1].data
        assert np.array_equal(outputs["OUTPUT0"], a + b) and np.array_equal(outputs["OUTPUT1"], a - b)
        assert answer.id == f"req-{tag}"  # type: ignore[attr-defined]

    # audited on both sides: at the edge as answered by the hub, at the hub as the edge's requests
    assert edge.trail.flush(10)
    database = edge.trail.database
    mine = [r for r in iter_records(database, chain="edge") if r.device == "overflow"]
    assert len(mine) == 4 - ran_here and all(r.status == "ok" for r in mine)
    assert all(r.detail.startswith(f"offloaded to hub http://{edge.hub.http_url}: ") for r in mine)
    assert all("queue full" in r.detail for r in mine)
    ids = {r.request_id for r in mine}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        at_hub = {r.request_id for r in records(edge.hub_data) if r.event == "inference" and r.status == "ok"}
        if ids <= at_hub:
            break
        await asyncio.sleep(0.2)
    assert ids <= at_hub, (ids, at_hub)

    # the hub gone: the refused requests get the edge's 503 naming both reasons
    stop_server(edge.hub)
    edge.service.overflow = HubOverflow(client, ["simple"])
    try:
        answers = await send_four(edge.service)
    finally:
        edge.service.overflow = None
        await client.close()
    failed = [a for a in answers if isinstance(a, Overloaded)]
    assert 2 <= len(failed) <= 3 and len(failed) + sum(isinstance(a, InferenceResponse) for a in answers) == 4
    assert all("queue full" in str(a) and "offload to the hub failed" in str(a) for a in failed)


def test_an_edge_server_offloads_to_its_hub_from_its_settings(
    example_repository: Path, tmp_path: Path
) -> None:
    """Two real servers: an edge with ``edge_offload_models`` naming the CT model (one instance, room
    for one queued request) and a hub serving the same model. Eight patches sent to the edge at once:
    every one answered; those the edge refused were answered by the hub, and both audit trails say so.
    How many the edge runs itself depends on how the requests interleave on a busy machine: at least
    the first, never all eight."""
    model = "ct_lesion_segmentation"
    hub_repository = tmp_path / "hub-repository"
    shutil.copytree(example_repository / model, hub_repository / model)
    edge_repository = tmp_path / "edge-repository"
    shutil.copytree(example_repository / model, edge_repository / model)
    config_path = edge_repository / model / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.pop("dynamic_batching", None)  # one patch an execution, one queued at most
    config["max_queue_size"] = 1
    config_path.write_text(yaml.safe_dump(config))
    keys = tmp_path / "keys"
    keys.mkdir()
    create_signing_key(keys / "hub.key", keys / "hub.pub")
    for role in ("hub", "edge"):
        (tmp_path / role).mkdir()
    hub = start_server(hub_repository, tmp_path / "hub" / "hub.log")
    try:
        edge = start_server(
            edge_repository,
            tmp_path / "edge" / "edge.log",
            env={
                "MEDSERVE_EDGE_HUB_URL": f"http://{hub.http_url}",
                "MEDSERVE_EDGE_GROUP": "ward",
                "MEDSERVE_EDGE_SYNC_INTERVAL_S": "3600",
                "MEDSERVE_TRUSTED_SIGNING_KEYS": json.dumps([str(keys / "hub.pub")]),
                "MEDSERVE_EDGE_OFFLOAD_MODELS": json.dumps([model]),
            },
        )
        try:
            patch = np.random.default_rng(7).random((1, 1, 48, 48, 48), dtype=np.float32)
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [1, 1, 48, 48, 48],
                        "data": patch.ravel().tolist(),
                    }
                ]
            }
            url = f"http://{edge.http_url}/v2/models/{model}/infer"

            def send(tag: int) -> httpx.Response:
                return httpx.post(url, json=body, headers={"X-Request-ID": f"ct-{tag}"}, timeout=120)

            sent = 8
            with ThreadPoolExecutor(sent) as pool:
                answers = list(pool.map(send, range(sent)))
            assert [a.status_code for a in answers] == [200] * sent, [a.text[:200] for a in answers]
            shapes = {tuple(a.json()["outputs"][0]["shape"]) for a in answers}
            assert shapes == {(1, 2, 48, 48, 48)}

            def audited(data_dir: Path) -> list[dict[str, Any]]:
                done = subprocess.run(
                    [sys.executable, "-m", "medserve", "audit", "export"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env={**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)},
                )
                found = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
                return [r for r in found if r["event"] == "inference" and r["request_id"].startswith("ct-")]

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                at_edge, at_hub = audited(tmp_path / "edge" / "data"), audited(tmp_path / "hub" / "data")
                offloaded = {r["request_id"] for r in at_edge if r["device"] == "overflow"}
                if len(at_edge) == sent and offloaded and offloaded <= {r["request_id"] for r in at_hub}:
                    break
                time.sleep(0.5)
            assert len(at_edge) == sent and all(r["status"] == "ok" for r in at_edge), at_edge
            assert 1 <= len(offloaded) <= sent - 1, at_edge  # the edge ran at least the first
            assert offloaded == {r["request_id"] for r in at_hub}, (offloaded, at_hub)
        finally:
            stop_server(edge)
    finally:
        stop_server(hub)
