"""The audit trail: events go durably into the journal first, then, in batches, into the database.

``record`` only enqueues and awaits. A writer thread takes every waiting event, seals and writes
them in one append and wakes their callers, so concurrent requests share the write (group commit).
With ``fsync`` that write reaches the disk before the callers wake (survives power loss); without,
it reaches the operating system (survives any crash of the process) and the flusher syncs the
journal to the disk at each of its cycles, a fraction of a second later. A flusher thread copies
journaled records into ``audit_records`` in batches: only seqs above the database's newest, under a
lock, so another process flushing the same journal at once does no harm. While the database is
down, records wait in the journal; the flusher retries with capped exponential backoff, logs once
per outage, and catches up when it returns.

One journal directory belongs to one database: every process appending to that database (the server,
``medserve`` commands) must use the same directory, so all records form one chain.
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
from typing import Final

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medserve.audit.journal import Journal
from medserve.audit.record import RecordValues
from medserve.audit.rows import AUDIT_LOCK_KEY, database_head, insert_records, record_at
from medserve.store.database import Database, describe_error, lock_for_write
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError, StoreUnavailable

log = logging.getLogger(__name__)

#: Records kept in memory for the flusher (beyond this it reads them back from the journal).
_RECENT_MAX: Final = 100_000

#: An event, its wall-clock time (ns), and who waits for it: an event loop's future or a thread's.
_Waiter = tuple[
    AuditEvent, int, asyncio.AbstractEventLoop | None, asyncio.Future[None] | concurrent.futures.Future[None]
]


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
    ) -> None:
        self.database = database
        self.journal_dir = journal_dir
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self.write_batch = max(write_batch, 1)
        self.flush_batch = max(flush_batch, 1)
        self.flush_interval_s = flush_interval_s
        self.poll_interval_s = poll_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self._journal: Journal | None = None
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()  # None: stop
        self._put_lock = threading.Lock()
        self._accepting = False
        self._writer: threading.Thread | None = None
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()  # set by every write
        self._urgent = threading.Event()  # flush() or close(): flush now, pause or backoff notwithstanding
        self._last_attempt = 0.0
        self._stopping = False
        self._progress = threading.Condition()
        self._journal_seq = 0  # newest seq known to be in the journal
        self._db_seq = 0  # newest seq known to be in the database
        self._healthy = True
        self._journal_healthy = True
        # What this process wrote, for the flusher to insert without reading the journal back.
        self._recent: list[RecordValues] = []
        self._inline: list[_Waiter] = []  # awaiting the loop's next append (without fsync)
        self._recent_lock = threading.Lock()
        self._backoff = 0.0
        self._written_total = 0
        self._flushed_total = 0
        self._flush_failures_total = 0

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the journal, push what it holds beyond the database, start the writer and flusher.

        Does not migrate. A database that is down is no error: records wait in the journal.
        """
        if self._journal is not None:
            return
        journal = Journal(self.journal_dir, fsync=self.fsync, max_file_bytes=self.max_file_bytes)
        self._journal = journal
        self._journal_seq = journal.head()[0]
        first = journal.first_seq()
        self._db_seq = first - 1 if first is not None else self._journal_seq
        self._stopping = False
        self._urgent.clear()
        self._wake.clear()
        self._flush_cycle(adopt=True)
        self._accepting = True
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._flusher = threading.Thread(target=self._flush_loop, name="audit-flusher", daemon=True)
        self._writer.start()
        self._flusher.start()

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
        self._stopping = True
        self._urgent.set()
        self._wake.set()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.join(max(0.0, deadline - time.monotonic()))
            if flusher.is_alive():
                # Still in its last attempt (a database that hangs): leave it the journal; it exits after.
                log.warning("audit flusher did not stop in time; the journal keeps the records")
                self._journal = None
                return
        if self._journal is not None:
            if not self.fsync:
                self._sync_journal()
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

        Without ``fsync`` the append is a short write to the operating system: the records of one
        event-loop iteration are written together on the loop itself, sparing a thread handoff per
        request. With ``fsync`` the (slow) durable write happens on the writer thread.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter: _Waiter = (event, time.time_ns(), loop, future)
        if self.fsync:
            self._enqueue(waiter)
        else:
            if not self._accepting:
                raise StoreUnavailable("audit trail is not open")
            self._inline.append(waiter)
            if len(self._inline) == 1:
                loop.call_soon(self._write_inline)
        await future

    def _write_inline(self) -> None:
        """The records gathered during one loop iteration, in one append (runs on the loop)."""
        batch, self._inline = self._inline, []
        if batch:
            self._write(batch)

    def record_blocking(self, event: AuditEvent, timeout_s: float | None = None) -> None:
        """:meth:`record` for threads without an event loop."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._enqueue((event, time.time_ns(), None, future))
        try:
            future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise StoreUnavailable("audit journal write timed out") from exc

    def _enqueue(self, waiter: _Waiter) -> None:
        with self._put_lock:
            if not self._accepting:
                raise StoreUnavailable("audit trail is not open")
            self._queue.put(waiter)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.write_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: Sequence[_Waiter]) -> None:
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
            _resolve(batch, error)
        except Exception as exc:  # a bug: fail these callers loudly rather than leave them waiting
            log.exception("audit writer failed")
            _resolve(batch, StoreUnavailable(f"audit writer failed: {type(exc).__name__}"))

    def _durable(self, batch: Sequence[_Waiter], sealed: list[RecordValues]) -> None:
        """The batch is on disk: count it, wake its callers, then hand it to the flusher."""
        self._written_total += len(batch)
        self._note_journal_seq(int(sealed[-1]["seq"]))
        _resolve(batch, None)
        if not self._journal_healthy:
            log.warning("audit journal writable again")
            self._journal_healthy = True
        with self._recent_lock:
            if len(self._recent) < _RECENT_MAX:
                self._recent.extend(sealed)
        self._wake.set()

    def _fail_queued(self) -> None:
        """Fail anything left queued (only if the writer did not stop in time)."""
        leftovers: list[_Waiter] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers.append(item)
        if leftovers:
            _resolve(leftovers, StoreUnavailable("audit trail closed before the event was written"))

    # -- flushing -------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records in the journal not yet known to be in the database."""
        return max(0, self._journal_seq - self._db_seq)

    @property
    def database_healthy(self) -> bool:
        return self._healthy

    @property
    def written_total(self) -> int:
        return self._written_total

    @property
    def flushed_total(self) -> int:
        return self._flushed_total

    @property
    def flush_failures_total(self) -> int:
        return self._flush_failures_total

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything journaled so far (by any process) is in the database."""
        journal = self._journal
        if journal is None:
            return False
        deadline = time.monotonic() + timeout_s
        target = journal.head()[0]
        self._note_journal_seq(target)
        flusher = self._flusher
        while self._db_seq < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if flusher is None or not flusher.is_alive():
                self._flush_cycle()
                if self._db_seq < target:
                    time.sleep(min(remaining, self._backoff or self.backoff_initial_s))
                continue
            with self._progress:
                self._urgent.set()
                self._wake.set()
                self._progress.wait(min(remaining, 0.1))
        return True

    def _flush_loop(self) -> None:
        while True:
            woken = self._wake.wait(self.poll_interval_s) if self._healthy else True
            # Pause between attempts: records gather into bigger batches, or an outage backs off.
            pause = self.flush_interval_s if self._healthy else self._backoff
            remaining = self._last_attempt + pause - time.monotonic()
            if remaining > 0:
                self._urgent.wait(remaining)
            self._urgent.clear()
            self._wake.clear()
            if woken and not self.fsync:
                self._sync_journal()
            try:
                if self._stopping:
                    self._flush_cycle()
                    return
                if woken or self._journal_grew():
                    self._flush_cycle()
            except Exception:  # a bug: keep the thread alive, the records are safe in the journal
                log.exception("audit flusher failed; retrying")
                self._healthy = False
                self._backoff = self.backoff_max_s
                self._last_attempt = time.monotonic()
                if self._stopping:
                    return

    def _sync_journal(self) -> None:
        """Without ``fsync`` per write, records reach the disk here, one flush interval later at most."""
        journal = self._journal
        if journal is None:
            return
        try:
            journal.sync()
        except OSError as exc:
            log.warning("audit journal could not be synced to disk: %s", exc)

    def _journal_grew(self) -> bool:
        """Whether the journal (perhaps through another process) holds seqs the database lacks."""
        journal = self._journal
        if journal is None:
            return False
        try:
            self._note_journal_seq(journal.head()[0])
        except (MedserveError, OSError):
            return True
        return self._journal_seq > self._db_seq

    def _flush_cycle(self, adopt: bool = False) -> None:
        """Flush until the journal has nothing beyond the database; record and log failures."""
        self._last_attempt = time.monotonic()
        try:
            retries = 0
            while True:
                try:
                    if self._flush_once(adopt) == 0:
                        break
                except IntegrityError:
                    # Another writer inserted the same seqs between our lock and insert: re-read.
                    retries += 1
                    if retries > 3:
                        raise
                adopt = False
        except (SQLAlchemyError, MedserveError, OSError) as exc:
            self._flush_failures_total += 1
            self._backoff = min(max(self._backoff * 2, self.backoff_initial_s), self.backoff_max_s)
            if self._healthy:
                self._healthy = False
                message = describe_error(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
                log.warning(
                    "audit database unavailable (%s); records wait in the journal %s and are retried",
                    message,
                    self.journal_dir,
                )
            return
        journal = self._journal
        if journal is not None:
            try:
                if len(journal.numbers()) > 1:
                    journal.prune(self._db_seq)
            except (OSError, MedserveError) as exc:
                log.warning("audit journal files could not be pruned: %s", exc)

    def _flush_once(self, adopt: bool) -> int:
        """Insert one batch of journaled records the database lacks; returns how many."""
        journal = self._journal
        if journal is None:
            return 0
        with self.database.engine.connect() as connection:
            lock_for_write(connection, AUDIT_LOCK_KEY)
            head_seq, head_hash = database_head(connection)
            self._set_db_seq(head_seq)
            if adopt and head_seq > self._journal_seq:
                # The journal is new or older than the database: continue the database's chain.
                record = record_at(connection, head_seq)
                if record is not None and journal.adopt(record):
                    self._note_journal_seq(head_seq)
            records = self._take_recent(head_seq)
            if not records and self._journal_seq_now(journal) > head_seq:
                records = journal.read_values(head_seq, self.flush_batch)  # other processes, recovery
            if not records:
                connection.rollback()
                self._reachable()
                return 0
            first = records[0]
            if first["seq"] != head_seq + 1 or first["prev_hash"] != head_hash:
                raise StoreUnavailable(
                    f"audit journal does not continue the database's chain after seq {head_seq} "
                    f"(the journal has seq {first['seq']} next); records stay in the journal"
                )
            insert_records(connection, records)
            connection.commit()
        self._reachable()
        last = int(records[-1]["seq"])
        self._flushed_total += len(records)
        self._note_journal_seq(last)
        self._set_db_seq(last)
        self._drop_recent(last)
        return len(records)

    def _reachable(self) -> None:
        if not self._healthy:
            log.info("audit database available again; flushing the journal backlog")
        self._healthy = True
        self._backoff = 0.0

    def _take_recent(self, head_seq: int) -> list[RecordValues]:
        """The records in memory that continue seq ``head_seq`` without a gap (at most a batch)."""
        self._drop_recent(head_seq)
        with self._recent_lock:
            taken: list[RecordValues] = []
            expected = head_seq + 1
            for values in self._recent:
                if values["seq"] != expected or len(taken) >= self.flush_batch:
                    break
                taken.append(values)
                expected += 1
            return taken

    def _drop_recent(self, up_to_seq: int) -> None:
        with self._recent_lock:
            recent = self._recent
            count = 0
            while count < len(recent) and int(recent[count]["seq"]) <= up_to_seq:
                count += 1
            del recent[:count]

    def _journal_seq_now(self, journal: Journal) -> int:
        self._note_journal_seq(journal.head()[0])
        return self._journal_seq

    def _note_journal_seq(self, seq: int) -> None:
        with self._progress:
            self._journal_seq = max(self._journal_seq, seq)

    def _set_db_seq(self, seq: int) -> None:
        with self._progress:
            self._db_seq = seq
            self._progress.notify_all()


def _resolve(batch: Sequence[_Waiter], error: MedserveError | None) -> None:
    """Wake every waiter: one callback per event loop, results set directly for threads."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, _, loop, future in batch:
        if loop is None:
            if isinstance(future, concurrent.futures.Future) and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(StoreUnavailable(str(error)))
        elif isinstance(future, asyncio.Future):
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        message = str(error) if error is not None else None
        if _running_loop() is loop:
            _settle(futures, message)  # written on the loop itself: wake the callers directly
            continue
        try:
            loop.call_soon_threadsafe(_settle, futures, message)
        except RuntimeError:
            continue  # the loop is closed; nobody waits any more


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(StoreUnavailable(error))
