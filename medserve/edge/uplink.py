"""The edge's uplink outbox: audit ranges, drift sketches, job metadata and alerts for the hub, kept in
the store until the hub acknowledges them, each under an idempotency key the hub deduplicates on.

Backlog policy when ``max_backlog`` items are pending: audit ranges and alerts are always queued (they
are never dropped); a new sketch or job item first sheds the oldest pending sketch; when no sketch is
left to shed, the new sketch or job item itself is dropped. Every drop is counted (``edge status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medserve.audit.record import to_dict
from medserve.audit.rows import iter_records
from medserve.edge.client import HubClient, HubRefused, HubUnreachable
from medserve.store.database import Database
from medserve.store.deliveries import PENDING, SENT, backoff_s, finish, retry_later
from medserve.store.leases import LeaseBook
from medserve.store.tables import EdgeStateRow, EdgeUplinkRow, JobRow, MonitoringStateRow
from medserve.values.times import as_utc

log = logging.getLogger(__name__)

NEVER_DROPPED = ("audit", "alert")
AUDIT_RANGE = 500  # records per audit item
BATCH = 100  # items per uplink request
_FINISHED_JOBS = ("succeeded", "failed", "cancelled")
ALERTS_SINCE_S = 3600.0  # ward alerts older than this when first seen are not sent up

#: The ward alerts kept on this edge (``Alert.to_json()`` documents), newest first.
AlertSource = Callable[[], list[dict[str, Any]]]


def read_state(s: Session, name: str) -> dict[str, Any]:
    row = s.get(EdgeStateRow, name)
    return dict(row.value) if row is not None else {}


def write_state(s: Session, name: str, value: dict[str, Any]) -> None:
    row = s.get(EdgeStateRow, name)
    if row is None:
        s.add(EdgeStateRow(name=name, value=value))
    else:
        row.value = value


def _stamp(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="microseconds")


class UplinkOutbox:
    def __init__(
        self,
        database: Database,
        client: HubClient,
        leases: LeaseBook,
        *,
        chain: str,
        max_backlog: int,
        interval_s: float,
    ) -> None:
        self._db = database
        self._client = client
        self._leases = leases
        self.chain = chain
        self.max_backlog = max_backlog
        self.interval_s = interval_s
        self.last_error = ""
        self.last_delivered_at: datetime | None = None
        self._failures = 0  # consecutive link failures (the link's back-off, not an item's)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.alert_source: AlertSource | None = None

    # -- queueing -------------------------------------------------------------------------------
    def _add(self, s: Session, kind: str, key: str, payload: dict[str, Any]) -> bool:
        pending = s.scalar(
            select(func.count()).select_from(EdgeUplinkRow).where(EdgeUplinkRow.state == PENDING)
        )
        if kind not in NEVER_DROPPED and (pending or 0) >= self.max_backlog:
            oldest = s.scalar(
                select(EdgeUplinkRow.id)
                .where(EdgeUplinkRow.state == PENDING, EdgeUplinkRow.kind == "sketch")
                .order_by(EdgeUplinkRow.created_at)
                .limit(1)
            )
            shed = "sketch" if oldest is not None else kind
            if oldest is not None:
                s.execute(delete(EdgeUplinkRow).where(EdgeUplinkRow.id == oldest))
            dropped = read_state(s, "dropped")
            dropped[shed] = int(dropped.get(shed, 0)) + 1
            write_state(s, "dropped", dropped)
            log.warning("edge uplink backlog full (%d): dropped a %s item", self.max_backlog, shed)
            if oldest is None:
                return False
        if s.scalar(select(EdgeUplinkRow.id).where(EdgeUplinkRow.key == key)) is not None:
            return False
        now = datetime.now(UTC)
        s.add(
            EdgeUplinkRow(
                id=uuid.uuid4().hex,
                key=key,
                kind=kind,
                payload=payload,
                state=PENDING,
                attempts=0,
                next_attempt_at=now,
                last_error="",
                receipt="",
                created_at=now,
            )
        )
        return True

    def enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> bool:
        """Blocking: queue one item unless its key was queued before (or the backlog policy drops it)."""
        try:
            with self._db.session() as s, s.begin():
                return self._add(s, kind, key, payload)
        except IntegrityError:
            return False

    def collect(self) -> int:
        """Blocking: queue what is new since the last call (audit records, sketches, finished jobs)."""
        return (
            self._collect_audit() + self._collect_sketches() + self._collect_jobs() + self._collect_alerts()
        )

    def _collect_alerts(self) -> int:
        if self.alert_source is None:
            return 0
        since = time.time() - ALERTS_SINCE_S
        queued = 0
        with self._db.session() as s, s.begin():
            for alert in self.alert_source():
                created = alert.get("created_at")
                if not isinstance(created, int | float) or created < since or not alert.get("id"):
                    continue
                queued += self._add(s, "alert", f"alert:ward:{alert['id']}", alert)
        return queued

    def _collect_audit(self) -> int:
        queued = 0
        while True:
            with self._db.session() as s, s.begin():
                cursor = int(read_state(s, f"audit:{self.chain}").get("seq", 0))
                records = []
                for record in iter_records(self._db, chain=self.chain, after_seq=cursor, page=AUDIT_RANGE):
                    records.append(to_dict(record))
                    if len(records) >= AUDIT_RANGE:
                        break
                if not records:
                    return queued
                first, last = int(records[0]["seq"]), int(records[-1]["seq"])
                key = f"audit:{self.chain}:{first:012d}-{last:012d}"
                self._add(s, "audit", key, {"chain": self.chain, "records": records})
                write_state(s, f"audit:{self.chain}", {"seq": last})
                queued += 1

    def _collect_sketches(self) -> int:
        queued = 0
        with self._db.session() as s, s.begin():
            after = read_state(s, "sketches").get("after", "")
            query = select(MonitoringStateRow).order_by(MonitoringStateRow.updated_at)
            newest = after
            for row in s.scalars(query):
                stamp = _stamp(row.updated_at)
                if stamp <= after:
                    continue
                key = f"sketch:{row.replica}:{row.model}:{row.version}:{stamp}"
                payload = {"model": row.model, "version": row.version, "at": stamp, "state": row.state}
                queued += self._add(s, "sketch", key, payload)
                newest = max(newest, stamp)
            write_state(s, "sketches", {"after": newest})
        return queued

    def _collect_jobs(self) -> int:
        queued = 0
        since = datetime.now(UTC) - timedelta(days=1)
        with self._db.session() as s, s.begin():
            query = select(JobRow).where(JobRow.state.in_(_FINISHED_JOBS), JobRow.updated_at >= since)
            for job in s.scalars(query):
                if s.scalar(select(EdgeUplinkRow.id).where(EdgeUplinkRow.key == f"job:{job.id}")) is not None:
                    continue
                payload = {
                    "id": job.id,
                    "model": job.model,
                    "workload": job.workload,
                    "state": job.state,
                    "items_done": job.items_done,
                    "items_failed": job.items_failed,
                    "finished_at": _stamp(job.finished_at) if job.finished_at else "",
                }
                queued += self._add(s, "job", f"job:{job.id}", payload)
        return queued

    def backlog(self) -> dict[str, Any]:
        """Blocking: pending items by kind, items dropped by the backlog policy, the last error."""
        with self._db.session() as s:
            query = (
                select(EdgeUplinkRow.kind, func.count())
                .where(EdgeUplinkRow.state == PENDING)
                .group_by(EdgeUplinkRow.kind)
            )
            pending = {str(kind): int(count) for kind, count in s.execute(query)}
            dropped = read_state(s, "dropped")
        return {
            "pending": pending,
            "total": sum(pending.values()),
            "max": self.max_backlog,
            "dropped": dropped,
            "last_error": self.last_error,
            "last_delivered_at": _stamp(self.last_delivered_at) if self.last_delivered_at else "",
        }

    # -- delivering -----------------------------------------------------------------------------
    def _due(self) -> list[EdgeUplinkRow]:
        with self._db.session() as s:
            query = (
                select(EdgeUplinkRow)
                .where(EdgeUplinkRow.state == PENDING, EdgeUplinkRow.next_attempt_at <= datetime.now(UTC))
                .order_by(EdgeUplinkRow.created_at, EdgeUplinkRow.key)
                .limit(BATCH)
            )
            rows = list(s.scalars(query))
            s.expunge_all()
            return rows

    async def deliver_once(self) -> int:
        """Send one batch of due items; return how many the hub now holds (accepted or duplicates).
        ``HubUnreachable``/``HubRefused`` when the hub could not take the batch at all."""
        rows = await asyncio.to_thread(self._due)
        if not rows:
            return 0
        items = [{"key": r.key, "kind": r.kind, "payload": r.payload} for r in rows]
        receipt = await self._client.uplink(items)
        held = set(receipt.get("accepted", [])) | set(receipt.get("duplicates", []))
        refused: dict[str, str] = dict(receipt.get("refused", {}))

        def record() -> None:
            for row in rows:
                if row.key in held:
                    finish(self._db, self._leases, None, EdgeUplinkRow, row.id, SENT, "", receipt="hub")
                elif row.key in refused:
                    attempts = row.attempts + 1
                    why = refused[row.key]
                    retry_later(
                        self._db,
                        self._leases,
                        None,
                        EdgeUplinkRow,
                        row.id,
                        attempts,
                        why,
                        backoff_s(attempts, 1, 300),
                    )
                    log.warning("hub refused uplink %s: %s", row.key, why)
            with self._db.session() as s, s.begin():
                old = datetime.now(UTC) - timedelta(days=1)
                s.execute(
                    delete(EdgeUplinkRow).where(EdgeUplinkRow.state == SENT, EdgeUplinkRow.sent_at < old)
                )

        await asyncio.to_thread(record)
        if held:
            self.last_delivered_at = datetime.now(UTC)
        self.last_error = "; ".join(f"{k}: {v}" for k, v in refused.items())
        return len(held)

    async def run(self) -> None:
        """Collect and deliver until cancelled; a hub that is away is retried with back-off."""
        while True:
            delay = self.interval_s
            try:
                await asyncio.to_thread(self.collect)
                while await self.deliver_once() >= BATCH:
                    pass
                self._failures = 0
            except (HubUnreachable, HubRefused) as exc:
                self._failures += 1
                self.last_error = str(exc)
                delay = backoff_s(self._failures, self.interval_s, max(60.0, self.interval_s))
                log.info("edge uplink: %s; next try in %.1f s", exc, delay)
            except Exception:
                log.exception("edge uplink round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def wake(self) -> None:
        """Deliver now (the hub was seen answering): the link's back-off starts over."""
        self._failures = 0
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
