"""Replicas sharing one outbox (SQLite and PostgreSQL): each export is sent once, not once per replica;
a replica killed in the middle of sends leaves its rows to the others after its leases expire."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from medserve.imaging.destinations import Destination, ExportItem
from medserve.imaging.outbox import PENDING, SENT, Outbox
from medserve.store.database import Database
from medserve.store.leases import LeaseBook
from medserve.store.tables import ExportRow, ImagingResultRow


class _SlowReceiver(Destination):
    """A destination that takes a moment per send and counts what it received (shared by replicas)."""

    kind = "test"
    accepted = frozenset({"dicom", "fhir"})

    def __init__(self, name: str, received: Counter[str], delay_s: float = 0.02) -> None:
        super().__init__(name)
        self.received = received
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def _send(self, item: ExportItem) -> str:
        time.sleep(self.delay_s)
        with self._lock:
            self.received[item.uid] += 1
        return "ok"


def _results(database: Database, outbox: Outbox, count: int) -> None:
    (outbox.results_root / "sr.dcm").write_bytes(b"result")
    with database.session() as session, session.begin():
        for index in range(count):
            row = ImagingResultRow(
                id=f"r{index:04d}",
                series_uid=f"1.2.{index}",
                study_uid="1.2",
                kind="sr",
                uid=f"1.2.{index}.1",
                path="sr.dcm",
                model="m",
                model_version="1",
                created_at=datetime.now(UTC),
            )
            session.add(row)
            session.add_all(outbox.rows_for(row))


def _sent(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).where(ExportRow.state == SENT)) or 0)


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_three_replicas_send_each_export_once(migrated_database: Database, tmp_path: Path) -> None:
    received: Counter[str] = Counter()
    outboxes = [
        Outbox(Database(migrated_database.url), tmp_path, [_SlowReceiver("pacs", received)], poll_s=0.01)
        for _ in range(3)
    ]
    _results(migrated_database, outboxes[0], 24)
    for outbox in outboxes:
        outbox.start()
    try:
        await _until(lambda: _sent(migrated_database) == 24)
    finally:
        for outbox in outboxes:
            await outbox.stop()
    assert sorted(received) == sorted(f"1.2.{i}.1" for i in range(24))
    assert set(received.values()) == {1}, f"sent more than once: {received.most_common(3)}"


async def test_a_dead_replicas_exports_are_taken_over_after_its_lease(
    migrated_database: Database, tmp_path: Path
) -> None:
    received: Counter[str] = Counter()
    dead = LeaseBook(migrated_database, "replica-dead", ttl_s=0.5)
    outbox = Outbox(migrated_database, tmp_path, [_SlowReceiver("pacs", received)], poll_s=0.01)
    _results(migrated_database, outbox, 4)
    candidates = select(ExportRow.id).where(ExportRow.state == PENDING).order_by(ExportRow.id)
    held = dead.claim("export", candidates, 2)  # claimed, then the replica is killed: no heartbeat
    assert len(held) == 2
    with migrated_database.session() as session:
        leased = {
            f"1.2.{int(result_id[1:])}.1"
            for result_id in session.scalars(
                select(ExportRow.result_id).where(ExportRow.id.in_([lease.key for lease in held]))
            )
        }
    outbox.start()
    try:
        await _until(lambda: _sent(migrated_database) == 2, timeout=5)
        assert set(received).isdisjoint(leased) and len(received) == 2  # not the leased ones yet
        await _until(lambda: _sent(migrated_database) == 4, timeout=10)
    finally:
        await outbox.stop()
    assert set(received.values()) == {1}
