"""Ward alerts delivered to a webhook once by the fleet (SQLite and PostgreSQL): two delivery workers on
one database deliver each alert once; a worker killed -9 in the middle of a delivery has that alert
taken over by another worker once its lease expires, and the resend carries the same idempotency key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import start_server, stop_server
from sqlalchemy import func, select
from test_monitor_e2e import VITALS_SICK, VITALS_STABLE, send, stream

from medserve.store.database import Database
from medserve.store.leases import LeaseBook
from medserve.store.tables import AlertDeliveryRow
from medserve.streaming.alert_delivery import SENT, AlertOutbox
from medserve.streaming.alerts import AlertHub
from medserve.streaming.messages import Alert
from medserve.transport.alert_webhook import WebhookAlertSender


class Receiver:
    """A webhook: answers 200 after ``delay_s`` and counts each alert it acknowledged; the first
    request for an alert in ``hold`` is held unanswered until :meth:`close`."""

    def __init__(self, delay_s: float = 0.01, hold: frozenset[str] = frozenset()) -> None:
        self.acknowledged: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()  # acknowledged deliveries per request path
        self.attempts: list[tuple[str, str]] = []  # (alert id in the body, Idempotency-Key)
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    first = all(a != body["id"] for a, _ in receiver.attempts)
                    receiver.attempts.append((body["id"], self.headers.get("Idempotency-Key", "")))
                if first and body["id"] in hold:
                    receiver.held.set()
                    receiver._release.wait(30)  # the sender is killed meanwhile: nobody reads an answer
                    return
                time.sleep(delay_s)
                with receiver._lock:
                    receiver.acknowledged[body["id"]] += 1
                    receiver.paths[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    handle = Receiver()
    yield handle
    handle.close()


def _alert(index: int) -> Alert:
    return Alert(
        id=f"alert-{index:03d}",
        sequence_id=index % 4,
        kind="raised",
        risk="high",
        summary=f"NEWS2 7 on stream {index % 4}",
        sample_timestamp=1000.0 + index,
        created_at=1000.0 + index,
        observation={"resourceType": "Observation", "id": f"alert-{index:03d}"},
    )


def _sent(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).where(AlertDeliveryRow.state == SENT)) or 0)


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_two_workers_on_one_database_deliver_each_alert_once(
    migrated_database: Database, receiver: Receiver
) -> None:
    outboxes = [
        AlertOutbox(
            Database(migrated_database.url),
            [WebhookAlertSender("pager", f"{receiver.url}?by={replica}")],  # one destination
            LeaseBook(migrated_database, replica, ttl_s=5),
            poll_s=0.01,
            batch=4,
        )
        for replica in ("replica-a", "replica-b")
    ]
    # each replica publishes the alerts of its own patient streams through its hub; the alerts 0-4
    # are published on both (a stream that moved), which adds no second delivery
    hubs = [AlertHub(deliver=outbox.enqueue) for outbox in outboxes]
    for outbox in outboxes:
        outbox.start()
    try:
        for index in range(30):
            hubs[index % 2].publish(_alert(index))
            if index < 5:
                hubs[(index + 1) % 2].publish(_alert(index))
        await _until(lambda: _sent(migrated_database) == 30)
        await asyncio.sleep(0.3)  # time for a stray second delivery to show
    finally:
        for outbox in outboxes:
            await outbox.stop()
    assert sorted(receiver.acknowledged) == [f"alert-{i:03d}" for i in range(30)]
    assert set(receiver.acknowledged.values()) == {1}, receiver.acknowledged.most_common(3)
    assert len(receiver.attempts) == 30
    # both workers took part (the URL tells which one sent)
    assert set(receiver.paths) == {"/alerts?by=replica-a", "/alerts?by=replica-b"}, receiver.paths
    with migrated_database.session() as session:
        assert session.scalar(select(func.count()).select_from(AlertDeliveryRow)) == 30


WORKER = """
import asyncio, sys
from medserve.store.database import Database
from medserve.store.leases import LeaseBook
from medserve.streaming.alert_delivery import AlertOutbox
from medserve.transport.alert_webhook import WebhookAlertSender

async def main() -> None:
    database = Database(sys.argv[1])
    book = LeaseBook(database, "replica-a", ttl_s=1.0)
    outbox = AlertOutbox(database, [WebhookAlertSender("pager", sys.argv[2])], book, poll_s=0.05)
    outbox.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_worker_killed_mid_delivery_has_its_alert_taken_over(migrated_database: Database) -> None:
    receiver = Receiver(hold=frozenset({"alert-000"}))
    survivor = AlertOutbox(
        migrated_database,
        [WebhookAlertSender("pager", receiver.url)],
        LeaseBook(migrated_database, "replica-b", ttl_s=1.0),
        poll_s=0.05,
    )
    for index in range(5):
        survivor.enqueue(_alert(index))
    assert survivor.write_backlog() == 5
    worker = subprocess.Popen([sys.executable, "-c", WORKER, migrated_database.url, receiver.url])
    try:
        assert await asyncio.to_thread(receiver.held.wait, 60), "the worker never sent alert-000"
        worker.kill()  # -9 in the middle of delivering alert-000: no answer read, its leases still held
        worker.wait(10)
        killed_at = time.monotonic()
        survivor.start()
        await _until(lambda: _sent(migrated_database) == 5)
        taken_over_after = time.monotonic() - killed_at
    finally:
        if worker.poll() is None:
            worker.kill()
        await survivor.stop()
        receiver.close()
    assert sorted(receiver.acknowledged) == [f"alert-{i:03d}" for i in range(5)]
    assert set(receiver.acknowledged.values()) == {1}
    # alert-000 was tried twice (the killed worker's attempt and the takeover), with one key
    tries = [key for alert_id, key in receiver.attempts if alert_id == "alert-000"]
    assert tries == ["alert-000", "alert-000"]
    # the survivor waited for the dead worker's lease (1 s) to expire before taking its alerts
    assert taken_over_after >= 0.5


def test_a_server_delivers_the_alerts_of_its_patient_streams_to_its_webhook(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    (tmp_path / "repository").mkdir()
    env = {
        "MEDSERVE_DATABASE_URL": database_url,
        "MEDSERVE_ALERT_WEBHOOKS": json.dumps({"pager": receiver.url}),
    }
    server = start_server(tmp_path / "repository", tmp_path / "server.log", env=env)
    try:
        client, replies = stream(server)
        for seq in range(5):
            send(client, seq, VITALS_STABLE if seq < 2 else VITALS_SICK, sequence_start=seq == 0)
            assert not isinstance(replies.get(timeout=30), Exception)
        client.stop_stream()
        listed = httpx.get(f"http://{server.http_url}/v2/alerts", params={"sequence_id": "11"}).json()
        assert [a["kind"] for a in listed] == ["raised"]
        deadline = time.monotonic() + 30
        while not receiver.acknowledged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.acknowledged == Counter({listed[0]["id"]: 1})
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.output()
