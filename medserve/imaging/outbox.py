"""The export outbox: every result goes to every destination that takes it, surviving restarts.

A row per (result, destination) is written in the same transaction as the result itself, so nothing
is lost between "result stored" and "export queued". A sender task picks due rows, sends each in a
worker thread and records the outcome: ``sent`` (never sent again), a retry after an exponential
backoff (destination down, 5xx), or ``failed`` for a refusal that resending cannot fix (e.g. 4xx).
A crash between a successful send and its ``sent`` row can make one resend after restart; the
destinations send stable identifiers (SOP Instance UID, bundle id) so receivers recognise it.

Replicas sharing the database share the outbox: a pass claims its due rows with an ``export`` lease
(:mod:`medserve.store.leases`; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so two replicas never send
the same row at once; the outcome is written fenced by the lease and the lease released. The leases
of a replica killed mid-send expire after ``lease_ttl_s`` and another replica sends those rows again
(the one resend above).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from medserve.imaging.destinations import Destination, ExportFailed, ExportItem
from medserve.store.database import Database
from medserve.store.deliveries import FAILED, PENDING, SENT, backoff_s, finish, retry_later
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import Lease, LeaseBook, LeaseLost
from medserve.store.tables import ExportRow, ImagingResultRow
from medserve.values.access import Action, Principal

log = logging.getLogger(__name__)

LEASE_KIND = "export"


def _now() -> datetime:
    return datetime.now(UTC)


class Outbox:
    def __init__(
        self,
        database: Database,
        results_root: Path,
        destinations: Sequence[Destination],
        *,
        backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
        poll_s: float = 0.5,
        audit: Callable[[ExportRow, ImagingResultRow, str], Awaitable[None]] | None = None,
        leases: LeaseBook | None = None,
        batch: int = 16,
    ) -> None:
        self.database = database
        # this process's own holder name unless the replica's book is given
        self.leases = leases or LeaseBook(database, f"process-{uuid.uuid4().hex[:12]}", ttl_s=60.0)
        self._keeper = LeaseKeeper(self.leases)
        self.batch = max(1, batch)
        self.results_root = results_root
        self.destinations = {d.name: d for d in destinations}
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self._audit = audit
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def rows_for(self, result: ImagingResultRow) -> list[ExportRow]:
        """The outbox rows for a new result (added by the caller in the result's transaction)."""
        now = _now()
        return [
            ExportRow(
                id=uuid.uuid4().hex,
                result_id=result.id,
                destination=name,
                state=PENDING,
                attempts=0,
                next_attempt_at=now,
                last_error="",
                receipt="",
                created_at=now,
            )
            for name, destination in self.destinations.items()
            if destination.accepts(_item_kind(result.kind))
        ]

    def start(self) -> None:
        self._keeper.start()
        self._task = asyncio.create_task(self._run(), name="export-outbox")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._keeper.stop)
        for destination in self.destinations.values():
            destination.close()

    async def _run(self) -> None:
        while True:
            try:
                due = await asyncio.to_thread(self._due)
                for export, result in due:
                    try:
                        await self._send(export, result)
                    except asyncio.CancelledError:
                        raise
                    except LeaseLost as exc:  # another replica has the row now: leave it to that one
                        log.warning("export %s: %s", export.id[:8], exc)
                    except Exception as exc:  # one bad row must not block the others: park it as failed
                        log.exception("export %s could not be attempted", export.id[:8])
                        await asyncio.to_thread(
                            self._finish, export.id, FAILED, f"internal error: {type(exc).__name__}: {exc}"
                        )
                    finally:
                        await asyncio.to_thread(self._keeper.release, LEASE_KIND, export.id)
            except asyncio.CancelledError:
                raise
            except Exception:  # the outbox must outlive a database hiccup; the rows stay pending
                log.exception("export outbox pass failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _due(self) -> list[tuple[ExportRow, ImagingResultRow]]:
        """Claim a batch of due rows (no other replica sends them while this one holds their leases)."""
        candidates = (
            select(ExportRow.id)
            .where(ExportRow.state == PENDING, ExportRow.next_attempt_at <= _now())
            .order_by(ExportRow.next_attempt_at)
        )
        leases = self.leases.claim(LEASE_KIND, candidates, self.batch)
        if not leases:
            return []
        for lease in leases:
            self._keeper.keep(lease)
        with self.database.session() as session:
            rows = session.execute(
                select(ExportRow, ImagingResultRow)
                .join(ImagingResultRow, ImagingResultRow.id == ExportRow.result_id)
                .where(ExportRow.id.in_([lease.key for lease in leases]), ExportRow.state == PENDING)
                .order_by(ExportRow.next_attempt_at)
            ).all()
        claimed = {export.id for export, _ in rows}
        for lease in leases:  # sent or changed between the claim and the read: nothing to do
            if lease.key not in claimed:
                self._keeper.release(LEASE_KIND, lease.key)
        return [(export, result) for export, result in rows]

    def _lease(self, export_id: str) -> Lease | None:
        """The lease this process sends ``export_id`` under (None for operator actions)."""
        lease = self._keeper.current(LEASE_KIND, export_id)
        if lease is None and self._keeper.lost(LEASE_KIND, export_id):
            raise LeaseLost(f"the lease on export {export_id[:8]} was lost to another replica")
        return lease

    async def _send(self, export: ExportRow, result: ImagingResultRow) -> None:
        destination = self.destinations.get(export.destination)
        if destination is None:
            await asyncio.to_thread(
                self._finish, export.id, FAILED, f"destination '{export.destination}' is no longer configured"
            )
            return
        item = ExportItem(
            kind=_item_kind(result.kind),
            path=self.results_root / result.path,
            uid=result.uid,
            study_instance_uid=result.study_uid,
        )
        try:
            receipt = await asyncio.to_thread(destination.send, item)
        except ExportFailed as exc:
            attempts = export.attempts + 1
            if exc.retryable:
                delay = backoff_s(attempts, self.backoff_s, self.max_backoff_s, exc.retry_after)
                await asyncio.to_thread(self._retry_later, export.id, attempts, str(exc), delay)
                outcome = f"retry in {delay:.0f} s: {exc}"
            else:
                await asyncio.to_thread(self._finish, export.id, FAILED, str(exc), attempts)
                outcome = f"failed: {exc}"
            log.warning("export %s to %s: %s", export.id[:8], export.destination, outcome)
            if self._audit is not None:
                await self._audit(export, result, f"ExportFailed: {exc}")
            return
        await asyncio.to_thread(self._finish, export.id, SENT, "", export.attempts + 1, receipt)
        if self._audit is not None:
            await self._audit(export, result, "ok")

    def _retry_later(self, export_id: str, attempts: int, error: str, delay: float) -> None:
        retry_later(
            self.database, self.leases, self._lease(export_id), ExportRow, export_id, attempts, error, delay
        )

    def _finish(self, export_id: str, state: str, error: str, attempts: int = 0, receipt: str = "") -> None:
        finish(
            self.database,
            self.leases,
            self._lease(export_id),
            ExportRow,
            export_id,
            state,
            error,
            attempts,
            receipt,
        )

    def retry(self, export_id: str, principal: Principal | None = None) -> bool:
        """Put a failed export back in the queue (operator action); False when there is no such row.

        ``principal``: the operator, who needs ``manage`` on the model that made the exported result
        (``PermissionDenied`` otherwise); an export of a model it may not see is reported as absent.
        """
        with self.database.session() as session, session.begin():
            if principal is not None:
                model = session.scalar(
                    select(ImagingResultRow.model)
                    .join(ExportRow, ExportRow.result_id == ImagingResultRow.id)
                    .where(ExportRow.id == export_id)
                )
                if model is None or not principal.visible([model]):
                    return False
                principal.require(Action.MANAGE, model)
            done = session.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id, ExportRow.state == FAILED)
                .values(state=PENDING, next_attempt_at=_now())
            )
        self.wake()
        return bool(done.rowcount)  # type: ignore[attr-defined]


def _item_kind(result_kind: str) -> str:
    return "fhir" if result_kind == "fhir" else "dicom"
