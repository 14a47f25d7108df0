"""The streaming door: the monitor over WebSocket, alerts over REST and Server-Sent Events.

The monitor here is small but real: it scores NEWS2 on each complete set of vitals, refuses an
incomplete or implausible one with ``InvalidInput``, and publishes an alert when the risk is high.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from medserve.clinical.vitals.news2 import ClinicalRisk, score_news2
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.repository.repository import ModelRepository
from medserve.security.authenticate import Authenticator
from medserve.streaming.alerts import AlertHub
from medserve.streaming.messages import (
    VITAL_FIELDS,
    Alert,
    MonitorResult,
    MonitorSample,
    vital_signs,
)
from medserve.transport.stream import stream_routes
from medserve.values.access import Caller
from medserve.values.errors import InvalidInput

NORMAL = {
    "respiration_rate": 16,
    "spo2": 97,
    "on_supplemental_oxygen": False,
    "systolic_bp": 120,
    "pulse": 70,
    "consciousness": "A",
    "temperature": 37.0,
}
SICK = {**NORMAL, "respiration_rate": 26, "spo2": 90, "pulse": 135, "systolic_bp": 95}


class News2Monitor:
    """Scores NEWS2 per sample and raises an alert on a high risk; refuses incomplete samples."""

    def __init__(self, alerts: AlertHub) -> None:
        self.alerts = alerts

    async def handle(self, sample: MonitorSample, caller: Caller | None = None) -> MonitorResult:
        missing = [name for name in VITAL_FIELDS if name not in sample.vitals]
        if missing:
            raise InvalidInput(f"sample {sample.sample_seq} lacks {', '.join(missing)}")
        score = score_news2(vital_signs(sample.vitals))
        raised: list[Alert] = []
        if score.risk is ClinicalRisk.HIGH:
            alert = Alert(
                id=f"{sample.sequence_id}-{sample.sample_seq}",
                sequence_id=sample.sequence_id,
                kind="raised",
                risk=score.risk.value,
                summary=f"NEWS2 {score.total}",
                sample_timestamp=sample.timestamp,
                created_at=sample.timestamp,
                observation={"resourceType": "Observation", "valueInteger": score.total},
            )
            self.alerts.publish(alert)
            raised.append(alert)
        return MonitorResult(sample.sequence_id, sample.sample_seq, "accepted", news2=score, alerts=raised)


def message(seq: int, vitals: dict[str, object], sequence_id: str = "bed-1") -> str:
    return json.dumps(
        {"sequence_id": sequence_id, "sample_seq": seq, "timestamp": 100.0 + seq, "vitals": vitals}
    )


def build_app(hub: AlertHub, keepalive_s: float = 15.0) -> Starlette:
    registry = ModelRegistry(ModelRepository(Path(".")), ServingMetrics())
    service = InferenceService(registry, Authenticator(None, None, disabled=True))
    return Starlette(routes=stream_routes(service, News2Monitor(hub), hub, keepalive_s=keepalive_s))


@pytest.fixture
def hub() -> AlertHub:
    return AlertHub()


@pytest.fixture
def client(hub: AlertHub) -> Iterator[TestClient]:
    with TestClient(build_app(hub)) as test_client:
        yield test_client


# --- WebSocket ---------------------------------------------------------------------------------


def test_one_reply_per_sample_in_order(client: TestClient, hub: AlertHub) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        ws.send_text(message(0, NORMAL))
        ws.send_text(message(1, SICK))
        first, second = ws.receive_json(), ws.receive_json()
    assert (first["sample_seq"], first["verdict"], first["news2"]["total"]) == (0, "accepted", 0)
    assert first["alerts"] == []
    assert second["sample_seq"] == 1 and second["news2"]["risk"] == "high"
    assert [a["id"] for a in second["alerts"]] == ["bed-1-1"]
    assert [a.id for a in hub.list()] == ["bed-1-1"]


def test_a_bad_sample_gets_an_error_and_the_socket_stays_open(client: TestClient) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        ws.send_text(message(0, {"pulse": 70}))  # the monitor refuses it
        refused = ws.receive_json()
        assert refused["sample_seq"] == 0 and refused["sequence_id"] == "bed-1"
        assert "lacks" in refused["error"]
        ws.send_text(message(1, {**NORMAL, "temperature": "warm"}))  # sample_from_json refuses it
        assert "'temperature' must be a number" in ws.receive_json()["error"]
        ws.send_text(message(2, {**NORMAL, "heart_sounds": 1}))  # sample_from_json refuses it
        unknown = ws.receive_json()
        assert unknown["sample_seq"] == 2 and "heart_sounds" in unknown["error"]
        ws.send_text(json.dumps({"sequence_id": "bed-1", "vitals": NORMAL}))  # no sample_seq
        assert set(ws.receive_json()) == {"error", "sequence_id"}
        ws.send_text(message(3, NORMAL))
        assert ws.receive_json()["verdict"] == "accepted"


def test_invalid_json_and_binary_frames_get_an_error_and_the_socket_stays_open(client: TestClient) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        ws.send_text("{not json")
        assert set(not_json := ws.receive_json()) == {"error"} and "not valid JSON" in not_json["error"]
        ws.send_text("[1, 2]")
        assert "JSON object" in ws.receive_json()["error"]
        ws.send_bytes(message(0, NORMAL).encode())
        assert "text frame" in ws.receive_json()["error"]
        ws.send_text(message(1, NORMAL))
        assert ws.receive_json()["sample_seq"] == 1


# --- alerts over REST ----------------------------------------------------------------------------


def test_alert_listing_filters(client: TestClient, hub: AlertHub) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        for seq, (bed, vitals) in enumerate([("bed-1", SICK), ("bed-2", SICK), ("bed-1", SICK)]):
            ws.send_text(message(seq, vitals, sequence_id=bed))
            ws.receive_json()
    hub.acknowledge("bed-1-2", "nurse-a", now=1.0)

    everything = client.get("/v2/alerts")
    assert everything.status_code == 200
    assert [a["id"] for a in everything.json()] == ["bed-1-2", "bed-2-1", "bed-1-0"]
    assert [a["id"] for a in client.get("/v2/alerts?sequence_id=bed-1").json()] == ["bed-1-2", "bed-1-0"]
    open_only = client.get("/v2/alerts", params={"unacknowledged": "true", "limit": 1}).json()
    assert [a["id"] for a in open_only] == ["bed-2-1"]
    bad = client.get("/v2/alerts?limit=lots")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    assert client.get("/v2/alerts?unacknowledged=maybe").status_code == 400


def test_acknowledge_and_unknown_alert(client: TestClient, hub: AlertHub) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        ws.send_text(message(0, SICK))
        ws.receive_json()
    acked = client.post("/v2/alerts/bed-1-0/acknowledge", json={"by": "nurse-7"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_by"] == "nurse-7" and acked.json()["acknowledged_at"] > 0
    again = client.post("/v2/alerts/bed-1-0/acknowledge", json={"by": "nurse-8"})
    assert again.json()["acknowledged_by"] == "nurse-7"  # the first acknowledgement is kept

    missing = client.post("/v2/alerts/no-such-alert/acknowledge", json={"by": "nurse-7"})
    assert missing.status_code == 404 and "no-such-alert" in missing.json()["error"]
    assert client.post("/v2/alerts/bed-1-0/acknowledge", content=b"[1]").status_code == 400
    assert client.post("/v2/alerts/bed-1-0/acknowledge", json={"by": ""}).status_code == 400


def test_acknowledge_without_a_body(client: TestClient, hub: AlertHub) -> None:
    with client.websocket_connect("/v2/monitor/stream") as ws:
        ws.send_text(message(0, SICK))
        ws.receive_json()
    acked = client.post("/v2/alerts/bed-1-0/acknowledge")
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "unspecified"


# --- alerts over Server-Sent Events, on a real server --------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def next_comment(lines: AsyncIterator[str]) -> str:
    async for line in lines:
        if line.startswith(":"):
            return line[1:].strip()
    raise AssertionError("the event stream ended")


async def next_alerts(lines: AsyncIterator[str], count: int) -> list[dict[str, object]]:
    """The next ``count`` ``alert`` events' data, skipping keep-alive comments."""
    found: list[dict[str, object]] = []
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            assert event == "alert"
            found.append(json.loads(line[len("data: ") :]))
            if len(found) == count:
                return found
    raise AssertionError("the event stream ended")


async def test_sse_delivers_published_and_acknowledged_alerts() -> None:
    hub = AlertHub()
    port = free_port()
    config = uvicorn.Config(build_app(hub, keepalive_s=0.2), port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
            http.stream("GET", "/v2/alerts/stream") as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert await asyncio.wait_for(next_comment(lines), 5) == "connected"
            assert hub.subscriber_count == 1
            # a keep-alive comment arrives while nothing happens
            assert await asyncio.wait_for(next_comment(lines), 5) == "keep-alive"
            vitals = {**{k: float(v) for k, v in SICK.items() if k != "consciousness"}, "consciousness": 0.0}
            await News2Monitor(hub).handle(MonitorSample("bed-9", 4, 104.0, vitals=vitals))
            acked = await http.post("/v2/alerts/bed-9-4/acknowledge", json={"by": "nurse-1"})
            assert acked.status_code == 200
            published, updated = await asyncio.wait_for(next_alerts(lines, 2), 5)
            assert published["id"] == "bed-9-4" and published["acknowledged_at"] is None
            assert updated["id"] == "bed-9-4" and updated["acknowledged_by"] == "nurse-1"
        for _ in range(100):  # the client went away: the subscription is dropped
            if hub.subscriber_count == 0:
                break
            await asyncio.sleep(0.02)
        assert hub.subscriber_count == 0
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


# --- gRPC ModelStreamInfer -------------------------------------------------------------------------


class _StreamContext:
    """What the gRPC stream handler reads of grpc's ``ServicerContext``."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return None  # the client set no deadline


def test_a_grpc_stream_the_client_leaves_leaves_no_task_pending() -> None:
    """A client that goes away mid-stream cancels the handler, which must cancel and await its own
    tasks: a task left waiting on the answer queue is later destroyed by the garbage collector, and
    asyncio logs "Task was destroyed but it is pending!" (several times per ward simulation)."""
    import gc

    from medserve.protocol.grpc_messages import pb
    from medserve.transport.grpc import GrpcInferenceServicer

    async def session() -> tuple[list[str], list[str], int]:
        reported: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context["message"])
        )
        registry = ModelRegistry(ModelRepository(Path(".")), ServingMetrics())
        servicer = GrpcInferenceServicer(InferenceService(registry, Authenticator(None, None, disabled=True)))
        client_gone = asyncio.Event()

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            for index in range(3):
                yield pb.ModelInferRequest(model_name="absent", id=str(index))
            await client_gone.wait()  # the stream stays open: more samples may come

        answers: list[pb.ModelStreamInferResponse] = []

        async def stream() -> None:
            async for answer in servicer.model_stream_infer(requests(), _StreamContext()):  # type: ignore[arg-type]
                answers.append(answer)

        handler = asyncio.create_task(stream())
        while len(answers) < 3:
            await asyncio.sleep(0.01)
        handler.cancel()  # what grpc does when the client cancels the call or closes its channel
        await asyncio.gather(handler, return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)
        left = [repr(task) for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        gc.collect()
        await asyncio.sleep(0)
        return left, reported, len(answers)

    left, reported, answered = asyncio.run(session())
    assert answered == 3
    assert left == [], left
    assert not [message for message in reported if "destroyed" in message], reported
