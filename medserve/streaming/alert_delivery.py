"""Alert delivery: every ward alert goes to every alert destination (a webhook) once for the fleet.

The alert hub hands each published alert to :meth:`AlertOutbox.enqueue`; a row per (alert,
destination) is written to ``alert_deliveries`` (a second write of the same alert adds nothing: the
pair is unique). Any replica's outbox claims due rows under an ``alert`` lease
(:mod:`medserve.store.leases`, the export outbox's pattern: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
sends each in a worker thread, and records the outcome fenced by the lease: ``sent`` (never sent
again), a retry after an exponential backoff (receiver down, 5xx, 429), or ``failed`` for a refusal a
resend cannot fix (4xx). So two replicas never send one alert at once, and an alert whose sender died
mid-delivery is sent by another replica once its lease expires (``lease_ttl_s``). A sender killed
between a successful send and its ``sent`` row makes one resend after the expiry; every delivery
carries the alert id (``Idempotency-Key``) so receivers recognise it.

Enqueued alerts wait in memory until their rows are written (a database outage does not stop the
monitor); at start the hub's recent alerts are enqueued again, which adds rows only for alerts whose
rows a crash kept from being written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from medserve.store.database import Database
from medserve.store.deliveries import FAILED, PENDING, SENT, backoff_s, finish, retry_later
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import Lease, LeaseBook, LeaseLost
from medserve.store.sql import describe_error
from medserve.store.tables import AlertDeliveryRow
from medserve.streaming.messages import Alert
from medserve.values.errors import MedserveError, StoreUnavailable

log = logging.getLogger(__name__)

LEASE_KIND = "alert"


class AlertDeliveryFailed(MedserveError):
    """A delivery failed; ``retryable`` says whether sending the same alert later may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after


class AlertSender(Protocol):
    """Where alerts go (an outbound door): ``send`` blocks, returns a short receipt or raises
    :class:`AlertDeliveryFailed`."""

    name: str

    def send(self, alert: dict[str, Any]) -> str: ...

    def close(self) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


class AlertOutbox:
    """The alert deliveries of this replica's senders, shared with every replica on the database."""

    def __init__(
        self,
        database: Database,
        senders: Sequence[AlertSender],
        leases: LeaseBook,
        *,
        backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
        poll_s: float = 0.5,
        batch: int = 16,
    ) -> None:
        self.database = database
        self.senders = {sender.name: sender for sender in senders}
        self.leases = leases
        self._keeper = LeaseKeeper(leases)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.batch = max(1, batch)
        self._backlog: collections.deque[Alert] = collections.deque()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- queueing -------------------------------------------------------------------------------
    def enqueue(self, alert: Alert) -> None:
        """Queue ``alert`` for every destination (never blocks; any thread)."""
        if not self.senders:
            return
        with self._lock:
            self._backlog.append(alert)
        self.wake()

    def enqueue_recent(self, alerts: Iterable[Alert], since: float) -> None:
        """Queue again the alerts created after ``since`` (epoch seconds): at start, for alerts whose
        rows a crash kept from being written (rows already written are not added twice)."""
        for alert in sorted(alerts, key=lambda a: a.created_at):
            if alert.created_at >= since:
                self.enqueue(alert)

    def write_backlog(self) -> int:
        """Write the queued alerts' rows; on a database error they stay queued. Returns rows added."""
        with self._lock:
            alerts = list(self._backlog)
        if not alerts:
            return 0
        now = _now()
        added = 0
        try:
            with self.database.engine.begin() as connection:
                dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
                for alert in alerts:
                    for name in self.senders:
                        done = connection.execute(
                            dialect.insert(AlertDeliveryRow.__table__)
                            .values(
                                id=uuid.uuid4().hex,
                                alert_id=alert.id,
                                destination=name,
                                payload=alert.to_json(),
                                state=PENDING,
                                attempts=0,
                                next_attempt_at=now,
                                last_error="",
                                receipt="",
                                created_at=now,
                            )
                            .on_conflict_do_nothing(index_elements=["alert_id", "destination"])
                            .returning(AlertDeliveryRow.id)
                        )
                        added += done.first() is not None
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"queueing alert deliveries: {describe_error(exc)}") from exc
        with self._lock:
            for _ in alerts:
                self._backlog.popleft()
        return added

    # -- running --------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._keeper.start()
        self._task = asyncio.create_task(self._run(), name="alert-outbox")

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreUnavailable):  # what stays queued is enqueued again at start
            await asyncio.to_thread(self.write_backlog)
        await asyncio.to_thread(self._keeper.stop)
        for sender in self.senders.values():
            sender.close()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.to_thread(self.write_backlog)
                for row in await asyncio.to_thread(self._due):
                    try:
                        await self._deliver(row)
                    except asyncio.CancelledError:
                        raise
                    except LeaseLost as exc:  # another replica has the alert now: leave it to that one
                        log.warning("alert delivery %s: %s", row.id[:8], exc)
                    except Exception as exc:  # one bad row must not block the others: park it as failed
                        log.exception("alert delivery %s could not be attempted", row.id[:8])
                        await asyncio.to_thread(self._finish, row.id, FAILED, f"internal error: {exc}")
                    finally:
                        await asyncio.to_thread(self._keeper.release, LEASE_KIND, row.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # outlive a database outage; rows and backlog stay
                log.warning("alert delivery pass failed, retrying: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _due(self) -> list[AlertDeliveryRow]:
        """Claim a batch of due rows of this replica's destinations."""
        candidates = (
            select(AlertDeliveryRow.id)
            .where(
                AlertDeliveryRow.state == PENDING,
                AlertDeliveryRow.next_attempt_at <= _now(),
                AlertDeliveryRow.destination.in_(list(self.senders)),
            )
            .order_by(AlertDeliveryRow.next_attempt_at)
        )
        leases = self.leases.claim(LEASE_KIND, candidates, self.batch)
        if not leases:
            return []
        for lease in leases:
            self._keeper.keep(lease)
        with self.database.session() as session:
            rows = list(
                session.execute(
                    select(AlertDeliveryRow)
                    .where(
                        AlertDeliveryRow.id.in_([lease.key for lease in leases]),
                        AlertDeliveryRow.state == PENDING,
                    )
                    .order_by(AlertDeliveryRow.next_attempt_at)
                ).scalars()
            )
        claimed = {row.id for row in rows}
        for lease in leases:  # delivered or changed between the claim and the read: nothing to do
            if lease.key not in claimed:
                self._keeper.release(LEASE_KIND, lease.key)
        return rows

    async def _deliver(self, row: AlertDeliveryRow) -> None:
        sender = self.senders[row.destination]
        attempts = row.attempts + 1
        try:
            receipt = await asyncio.to_thread(sender.send, row.payload)
        except AlertDeliveryFailed as exc:
            if exc.retryable:
                delay = backoff_s(attempts, self.backoff_s, self.max_backoff_s, exc.retry_after)
                await asyncio.to_thread(self._retry_later, row.id, attempts, str(exc), delay)
                outcome = f"retry in {delay:.0f} s: {exc}"
            else:
                await asyncio.to_thread(self._finish, row.id, FAILED, str(exc), attempts)
                outcome = f"failed: {exc}"
            log.warning("alert %s to %s: %s", row.alert_id, row.destination, outcome)
            return
        await asyncio.to_thread(self._finish, row.id, SENT, "", attempts, receipt)

    def _lease(self, delivery_id: str) -> Lease:
        lease = self._keeper.current(LEASE_KIND, delivery_id)
        if lease is None:
            raise LeaseLost(f"the lease on alert delivery {delivery_id[:8]} was lost to another replica")
        return lease

    def _retry_later(self, delivery_id: str, attempts: int, error: str, delay: float) -> None:
        lease = self._lease(delivery_id)
        retry_later(self.database, self.leases, lease, AlertDeliveryRow, delivery_id, attempts, error, delay)

    def _finish(self, delivery_id: str, state: str, error: str, attempts: int = 0, receipt: str = "") -> None:
        lease = self._lease(delivery_id)
        finish(
            self.database, self.leases, lease, AlertDeliveryRow, delivery_id, state, error, attempts, receipt
        )
