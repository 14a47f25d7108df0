"""The audit trail: events go durably into the journal first, then, in batches, into the database.

``record`` only enqueues and awaits. The events recorded during one event-loop iteration go to a
writer thread together (one hand-off per iteration, not per request); the writer takes every waiting
event, seals and writes them in one append and wakes their callers, so concurrent requests share the
write (group commit). The loop itself never hashes, takes the journal's lock or writes.
With ``fsync`` that write reaches the disk before the callers wake (survives power loss); without,
it reaches the operating system (survives any crash of the process) and the flusher syncs the
journal to the disk at each of its cycles, a fraction of a second later. The flusher
(:mod:`.flusher`) copies journaled records into ``audit_records`` and rides out database outages.

One journal directory belongs to one chain of one database: every process on one data dir (the
server, ``medserve`` commands) uses the same directory, so their records form one chain. Replicas
sharing a database each write a chain of their own, named by ``chain`` (the replica's id): each chain
is numbered and hash-linked alone, so replicas never wait on each other to record, and a replica
killed -9 leaves its acknowledged records in its journal, flushed when it starts again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from medserve.audit.flusher import FlushTiming, JournalFlusher
from medserve.audit.journal import Journal
from medserve.audit.record import RecordValues
from medserve.audit.waiters import Waiter, resolve
from medserve.store.database import Database
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError, StoreUnavailable

log = logging.getLogger(__name__)


class AuditTrail:
    """Durable, hash-chained audit records: journal first, database soon after."""

    def __init__(
        self,
        database: Database,
        journal_dir: Path,
        *,
        fsync: bool = True,
        max_file_bytes: int = 64 << 20,
        write_batch: int = 4096,
        flush_batch: int = 2000,
        flush_interval_s: float = 0.2,
        poll_interval_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        chain: str = "",
    ) -> None:
        self.database = database
        self.chain = chain
        self.journal_dir = journal_dir
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self.write_batch = max(write_batch, 1)
        timing = FlushTiming(flush_batch, flush_interval_s, poll_interval_s, backoff_initial_s, backoff_max_s)
        self._flusher = JournalFlusher(database, journal_dir, fsync, timing, chain)
        self._journal: Journal | None = None
        # a waiter, the waiters of one loop iteration, or None: stop
        self._queue: queue.SimpleQueue[Waiter | list[Waiter] | None] = queue.SimpleQueue()
        self._put_lock = threading.Lock()
        self._accepting = False
        self._writer: threading.Thread | None = None
        self._journal_healthy = True
        self._gathered: list[Waiter] = []  # recorded during this loop iteration, not yet handed off
        self._written_total = 0

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the journal, push what it holds beyond the database, start the writer and flusher.

        Does not migrate. A database that is down is no error: records wait in the journal.
        """
        if self._journal is not None:
            return
        journal = Journal(self.journal_dir, fsync=self.fsync, max_file_bytes=self.max_file_bytes)
        self._journal = journal
        self._flusher.open(journal)
        self._accepting = True
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, try a last flush, stop the threads. The rest is flushed on next open."""
        deadline = time.monotonic() + timeout_s
        with self._put_lock:
            was_accepting, self._accepting = self._accepting, False
            if was_accepting:
                self._queue.put(None)
        if self._writer is not None:
            self._writer.join(max(0.0, deadline - time.monotonic()))
            self._writer = None
        self._fail_queued()
        if not self._flusher.stop(deadline - time.monotonic()):
            # Still in its last attempt (a database that hangs): leave it the journal; it exits after.
            log.warning("audit flusher did not stop in time; the journal keeps the records")
            self._journal = None
            return
        if self._journal is not None:
            if not self.fsync:
                self._flusher.sync_journal()
            self._journal.close()
            self._journal = None

    def __enter__(self) -> AuditTrail:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- recording ------------------------------------------------------------------------------

    async def record(self, event: AuditEvent) -> None:
        """Return once ``event`` is in the journal; :class:`StoreUnavailable` if it cannot be.

        The events of one event-loop iteration are handed to the writer thread together, at the end
        of the iteration; the writer appends them in one write (with ``fsync``, durably on the disk;
        without, in the operating system) and then wakes their callers.
        """
        if not self._accepting:
            raise StoreUnavailable("audit trail is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._gathered.append((event, time.time_ns(), loop, future))
        if len(self._gathered) == 1:
            loop.call_soon(self._hand_off)
        await future

    def _hand_off(self) -> None:
        """The events gathered during one loop iteration, to the writer in one piece (runs on the loop)."""
        batch, self._gathered = self._gathered, []
        if not batch:
            return
        try:
            self._enqueue(batch)
        except StoreUnavailable as exc:
            resolve(batch, exc)

    def record_blocking(self, event: AuditEvent, timeout_s: float | None = None) -> None:
        """:meth:`record` for threads without an event loop."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._enqueue((event, time.time_ns(), None, future))
        try:
            future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise StoreUnavailable("audit journal write timed out") from exc

    def _enqueue(self, waiter: Waiter | list[Waiter]) -> None:
        with self._put_lock:
            if not self._accepting:
                raise StoreUnavailable("audit trail is not open")
            self._queue.put(waiter)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item) if isinstance(item, list) else [item]
            stop = False
            while len(batch) < self.write_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if isinstance(item, list):
                    batch.extend(item)
                else:
                    batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: Sequence[Waiter]) -> None:
        journal = self._journal
        try:
            if journal is None:
                raise StoreUnavailable("audit trail is not open")
            journal.append(
                [w[0] for w in batch], [w[1] for w in batch], lambda sealed: self._durable(batch, sealed)
            )
        except (MedserveError, OSError) as exc:
            error = exc if isinstance(exc, MedserveError) else StoreUnavailable(f"audit journal: {exc}")
            if self._journal_healthy:
                log.error("audit journal write failed: %s", error)
                self._journal_healthy = False
            resolve(batch, error)
        except Exception as exc:  # a bug: fail these callers loudly rather than leave them waiting
            log.exception("audit writer failed")
            resolve(batch, StoreUnavailable(f"audit writer failed: {type(exc).__name__}"))

    def _durable(self, batch: Sequence[Waiter], sealed: list[RecordValues]) -> None:
        """The batch is on disk: count it, wake its callers, then hand it to the flusher."""
        self._written_total += len(batch)
        self._flusher.note_journal_seq(int(sealed[-1]["seq"]))
        resolve(batch, None)
        if not self._journal_healthy:
            log.warning("audit journal writable again")
            self._journal_healthy = True
        self._flusher.written(sealed)

    def _fail_queued(self) -> None:
        """Fail anything left queued (only if the writer did not stop in time)."""
        leftovers: list[Waiter] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                leftovers.extend(item)
            elif item is not None:
                leftovers.append(item)
        if leftovers:
            resolve(leftovers, StoreUnavailable("audit trail closed before the event was written"))

    # -- flushing -------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records in the journal not yet known to be in the database."""
        return self._flusher.backlog

    @property
    def database_healthy(self) -> bool:
        return self._flusher.healthy

    @property
    def written_total(self) -> int:
        return self._written_total

    @property
    def flushed_total(self) -> int:
        return self._flusher.flushed_total

    @property
    def flush_failures_total(self) -> int:
        return self._flusher.flush_failures_total

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything journaled so far (by any process) is in the database."""
        if self._journal is None:
            return False
        return self._flusher.flush(timeout_s)
