"""Copying journaled audit records into the database, in batches, on a thread of its own.

Only seqs above the database's newest are inserted, under a lock, so another process flushing the
same journal at once does no harm. Records this process wrote are taken from memory; others (written
by other processes, or left from before a restart) are read back from the journal. While the database
is down, records wait in the journal; the flusher retries with capped exponential backoff, logs once
per outage, and catches up when it returns. Without ``fsync`` per write, each cycle also syncs the
journal to the disk.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medserve.audit.journal import Journal
from medserve.audit.record import RecordValues
from medserve.audit.rows import AUDIT_LOCK_KEY, database_head, insert_records, record_at
from medserve.store.database import Database
from medserve.store.sql import describe_error, lock_for_write
from medserve.values.errors import MedserveError, StoreUnavailable

log = logging.getLogger(__name__)

#: Records kept in memory for the flusher (beyond this it reads them back from the journal).
_RECENT_MAX: Final = 100_000


@dataclass(frozen=True, slots=True)
class FlushTiming:
    """How often the flusher looks, and how it backs off while the database is down."""

    flush_batch: int = 2000
    flush_interval_s: float = 0.2
    poll_interval_s: float = 1.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0


class JournalFlusher:
    """Keeps the database's ``audit_records`` up with one journal (see the module)."""

    def __init__(
        self, database: Database, journal_dir: Path, fsync: bool, timing: FlushTiming, chain: str = ""
    ) -> None:
        self.database = database
        self.chain = chain  # the database chain this journal continues (this replica's)
        self.journal_dir = journal_dir
        self.fsync = fsync
        self.flush_batch = max(timing.flush_batch, 1)
        self.flush_interval_s = timing.flush_interval_s
        self.poll_interval_s = timing.poll_interval_s
        self.backoff_initial_s = timing.backoff_initial_s
        self.backoff_max_s = max(timing.backoff_max_s, timing.backoff_initial_s)
        self._journal: Journal | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set by every write
        self._urgent = threading.Event()  # flush() or stop(): flush now, pause or backoff notwithstanding
        self._last_attempt = 0.0
        self._stopping = False
        self._progress = threading.Condition()
        self._journal_seq = 0  # newest seq known to be in the journal
        self._db_seq = 0  # newest seq known to be in the database
        self._healthy = True
        # What this process wrote, for inserting without reading the journal back.
        self._recent: list[RecordValues] = []
        self._recent_lock = threading.Lock()
        self._backoff = 0.0
        self._flushed_total = 0
        self._flush_failures_total = 0

    # -- life cycle -----------------------------------------------------------------------------

    def open(self, journal: Journal) -> None:
        """Push what ``journal`` holds beyond the database (continuing the database's chain if the
        journal is behind it), then start the thread."""
        self._journal = journal
        self._journal_seq = journal.head()[0]
        first = journal.first_seq()
        self._db_seq = first - 1 if first is not None else self._journal_seq
        self._stopping = False
        self._urgent.clear()
        self._wake.clear()
        self._flush_cycle(adopt=True)
        self._thread = threading.Thread(target=self._flush_loop, name="audit-flusher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Try a last flush and stop the thread; False when it is still in its last attempt (a database
        that hangs): it then leaves the journal alone and exits after."""
        self._stopping = True
        self._urgent.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(max(0.0, timeout_s))
            if thread.is_alive():
                self._journal = None
                return False
        return True

    # -- what the writer tells ------------------------------------------------------------------

    def written(self, sealed: list[RecordValues]) -> None:
        """``sealed`` records are in the journal: keep them for the next insert and wake the thread."""
        with self._recent_lock:
            if len(self._recent) < _RECENT_MAX:
                self._recent.extend(sealed)
        self._wake.set()

    def note_journal_seq(self, seq: int) -> None:
        with self._progress:
            self._journal_seq = max(self._journal_seq, seq)

    # -- state ----------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records in the journal not yet known to be in the database."""
        return max(0, self._journal_seq - self._db_seq)

    @property
    def healthy(self) -> bool:
        return self._healthy

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
        self.note_journal_seq(target)
        thread = self._thread
        while self._db_seq < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if thread is None or not thread.is_alive():
                self._flush_cycle()
                if self._db_seq < target:
                    time.sleep(min(remaining, self._backoff or self.backoff_initial_s))
                continue
            with self._progress:
                self._urgent.set()
                self._wake.set()
                self._progress.wait(min(remaining, 0.1))
        return True

    def sync_journal(self) -> None:
        """Without ``fsync`` per write, records reach the disk here, one flush interval later at most."""
        journal = self._journal
        if journal is None:
            return
        try:
            journal.sync()
        except OSError as exc:
            log.warning("audit journal could not be synced to disk: %s", exc)

    # -- the thread -----------------------------------------------------------------------------

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
                self.sync_journal()
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

    def _journal_grew(self) -> bool:
        """Whether the journal (perhaps through another process) holds seqs the database lacks."""
        journal = self._journal
        if journal is None:
            return False
        try:
            self.note_journal_seq(journal.head()[0])
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
            head_seq, head_hash = database_head(connection, self.chain)
            self._set_db_seq(head_seq)
            if adopt and head_seq > self._journal_seq:
                # The journal is new or older than the database: continue the database's chain.
                record = record_at(connection, head_seq, self.chain)
                if record is not None and journal.adopt(record):
                    self.note_journal_seq(head_seq)
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
            insert_records(connection, records, self.chain)
            connection.commit()
        self._reachable()
        last = int(records[-1]["seq"])
        self._flushed_total += len(records)
        self.note_journal_seq(last)
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
        self.note_journal_seq(journal.head()[0])
        return self._journal_seq

    def _set_db_seq(self, seq: int) -> None:
        with self._progress:
            self._db_seq = seq
            self._progress.notify_all()
