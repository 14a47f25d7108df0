"""Overload at the doors: the client's deadline (gRPC deadline, HTTP ``Request-Timeout``) reaches
admission control, and a client that leaves while its request is queued does not get it run.

Real HTTP (uvicorn) and gRPC servers in this process over the ``simple`` model, served by an engine
that sleeps 200 ms per execution (one request at a time) and logs the ``INPUT0`` value it ran, so a
test sees exactly which requests reached the engine."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
import uvicorn
import yaml
from tritonclient.utils import InferenceServerException

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.repository.repository import ModelRepository
from medserve.runtimes import register_runtime, unregister_runtime
from medserve.runtimes.onnxruntime import OnnxRuntime
from medserve.security.authenticate import Authenticator
from medserve.transport.grpc_server import GrpcServer
from medserve.transport.http import build_app

EXECUTION_S = 0.2


class SlowSimple(OnnxRuntime):
    """``simple`` on ONNX Runtime, 200 ms an execution; logs the first ``INPUT0`` value of each run."""

    ran: list[float] = []

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        time.sleep(EXECUTION_S)
        SlowSimple.ran.append(float(inputs["INPUT0"].reshape(-1)[0]))
        return super().run(inputs, output_names)


class Doors:
    def __init__(self, http_port: int, grpc_port: int, metrics: ServingMetrics) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.http_port = http_port
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.metrics = metrics

    def dropped(self, reason: str) -> float:
        labels = {"model": "simple", "version": "1", "reason": reason}
        return self.metrics.registry.get_sample_value("medserve_requests_dropped_total", labels) or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
async def doors(example_repository: Path, tmp_path: Path) -> AsyncIterator[Doors]:
    repository = tmp_path / "repository"
    shutil.copytree(example_repository / "simple", repository / "simple")
    config_path = repository / "simple" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["runtime"] = "slow_simple"
    config.pop("dynamic_batching", None)  # one request an execution
    config_path.write_text(yaml.safe_dump(config))
    register_runtime("slow_simple", SlowSimple)
    SlowSimple.ran = []
    metrics = ServingMetrics()
    registry = ModelRegistry(ModelRepository(repository), metrics)
    service = InferenceService(registry, Authenticator(None, None, disabled=True))
    await registry.load_all()
    http_port = free_port()
    config_ = uvicorn.Config(
        build_app(service, metrics, 1 << 20),
        host="127.0.0.1",
        port=http_port,
        log_level="warning",
        lifespan="off",
    )
    http = uvicorn.Server(config_)
    serving = asyncio.create_task(http.serve())
    grpc_server = GrpcServer(service, host="127.0.0.1", port=0)
    await grpc_server.start()
    while not http.started:
        await asyncio.sleep(0.01)
    try:
        yield Doors(http_port, grpc_server.port, metrics)
    finally:
        http.should_exit = True
        await asyncio.wait_for(serving, 10)
        await grpc_server.stop(0)
        await service.close()
        unregister_runtime("slow_simple")


def body(tag: float, **parameters: int) -> dict[str, Any]:
    values = [tag] * 16
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": values},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": values},
        ],
        "parameters": parameters,
    }


INFER = "/v2/models/simple/infer"


def grpc_inputs(tag: float) -> list[grpcclient.InferInput]:
    x = np.full((1, 16), tag, np.float32)
    inputs = [grpcclient.InferInput(name, [1, 16], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)
    return inputs


async def backlog(client: httpx.AsyncClient, doors: Doors, tags: range) -> list[asyncio.Task[httpx.Response]]:
    """Measure the engine with one request, then queue ``tags`` behind a running one."""
    warm = await client.post(f"{doors.http}/v2/models/simple/infer", json=body(-1))
    assert warm.status_code == 200, warm.text
    tasks = [
        asyncio.create_task(client.post(f"{doors.http}/v2/models/simple/infer", json=body(t))) for t in tags
    ]
    for _ in range(200):  # every one queued or running
        if len(SlowSimple.ran) > 1 or sum(1 for t in tasks if not t.done()) == len(tags):
            await asyncio.sleep(0.05)
            break
        await asyncio.sleep(0.01)
    return tasks


# The late requests below are of class bulk (priority 4), which has no deadline of its own: the
# client's deadline is the only one, and the routine backlog goes first.
async def test_a_grpc_call_with_a_short_deadline_is_refused_at_arrival_and_never_run(doors: Doors) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queued = await backlog(client, doors, range(4))  # about 1 s of work ahead
        triton = grpcclient.InferenceServerClient(doors.grpc)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as refused:  # it could run alone in 0.5 s
            await triton.infer("simple", grpc_inputs(77), client_timeout=0.5, priority=4)
        elapsed = time.monotonic() - started
        await triton.close()
        assert refused.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert "saturated: this 'bulk' request has" in str(refused.value.message())
        assert elapsed < 0.4  # refused at once, not left to time out
        answers = await asyncio.gather(*queued)
    assert [a.status_code for a in answers] == [200] * 4
    assert 77.0 not in SlowSimple.ran


async def test_a_grpc_call_whose_deadline_passes_in_the_queue_is_dropped_unrun(doors: Doors) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queued = await backlog(client, doors, range(4))
        triton = grpcclient.InferenceServerClient(doors.grpc)
        with pytest.raises(InferenceServerException) as late:  # less than one execution: it would miss
            await triton.infer("simple", grpc_inputs(78), client_timeout=0.1, priority=4)  # even alone
        await triton.close()
        assert late.value.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)
        await asyncio.gather(*queued)
    assert 78.0 not in SlowSimple.ran
    assert doors.dropped("deadline") + doors.dropped("client_gone") == 1


async def test_a_grpc_stream_s_deadline_refuses_a_request_that_cannot_make_it(doors: Doors) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queued = await backlog(client, doors, range(4))  # about 1 s of work ahead
        triton = grpcclient.InferenceServerClient(doors.grpc)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "simple", "inputs": grpc_inputs(83), "priority": 4, "request_id": "late"}

        started = time.monotonic()
        answers = [pair async for pair in triton.stream_infer(requests(), stream_timeout=0.6)]
        elapsed = time.monotonic() - started
        await triton.close()
        ((result, error),) = answers  # answered in the stream, which then closed normally
        assert result is None and error is not None
        assert "saturated: this 'bulk' request has" in str(error.message())
        assert elapsed < 0.5
        await asyncio.gather(*queued)
    assert 83.0 not in SlowSimple.ran


async def test_the_request_timeout_header_is_honoured(doors: Doors) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queued = await backlog(client, doors, range(4))
        url = f"{doors.http}{INFER}"
        started = time.monotonic()
        refused = await client.post(url, json=body(79, priority=4), headers={"Request-Timeout": "0.5"})
        assert time.monotonic() - started < 0.4
        assert refused.status_code == 503, refused.text
        assert (
            "saturated: this 'bulk' request has" in refused.json()["error"]
            and int(refused.headers["retry-after"]) >= 1
        )
        answers = await asyncio.gather(*queued)
        assert [a.status_code for a in answers] == [200] * 4
        fine = await client.post(url, json=body(80, priority=4), headers={"Request-Timeout": "5"})
        assert fine.status_code == 200
    assert 79.0 not in SlowSimple.ran and 80.0 in SlowSimple.ran


@pytest.mark.parametrize("value", ["abc", "0", "-2", "inf", "1e3", ""])
async def test_a_bad_request_timeout_header_is_400_naming_it(doors: Doors, value: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{doors.http}{INFER}", json=body(81), headers={"Request-Timeout": value})
    assert reply.status_code == 400
    assert "header Request-Timeout must be a number of seconds" in reply.json()["error"]
    assert 81.0 not in SlowSimple.ran


async def test_an_http_client_that_disconnects_while_queued_does_not_get_its_inference_run(
    doors: Doors,
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queued = await backlog(client, doors, range(3))
        payload = httpx.Request("POST", f"{doors.http}{INFER}", json=body(82))
        reader, writer = await asyncio.open_connection("127.0.0.1", doors.http_port)
        head = "POST /v2/models/simple/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        content = payload.read()
        writer.write(f"{head}content-length: {len(content)}\r\n\r\n".encode() + content)
        await writer.drain()
        await asyncio.sleep(0.1)  # queued behind the backlog
        writer.close()  # the client gives up
        await writer.wait_closed()
        answers = await asyncio.gather(*queued)
        assert [a.status_code for a in answers] == [200] * 3
        await asyncio.sleep(EXECUTION_S * 2)  # it would have run by now
    assert 82.0 not in SlowSimple.ran
    assert doors.dropped("client_gone") == 1
