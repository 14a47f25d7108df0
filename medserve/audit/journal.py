"""The audit journal: append-only JSON-lines files that several processes extend as one hash chain.

Files are ``journal-000001.jsonl``, ``journal-000002.jsonl``, ... in one directory
(:mod:`.journal_files`). Every append takes an exclusive ``flock`` on ``journal.lock``, finds the chain
head, seals the batch onto it and writes it with one ``write``; with ``fsync`` the files are opened
``O_DSYNC``, so that write returns only once the data is on disk (what ``write`` + ``fdatasync`` do, in
one system call).

The chain head is the last complete line of the newest non-empty file. So that an append need not
read it back each time, ``journal.lock`` also holds a small shared header (:mod:`.journal_header`); a
process that cannot trust it (an appender died mid-write), or appends for the first time, reads the
files and cuts a torn last line (never acknowledged) off.

Once the newest file has passed ``max_file_bytes`` the next append starts a new file; older files are
immutable, and :meth:`Journal.prune` deletes those whose records the database holds, never the newest
non-empty one, so the head can always be found. Readers take no lock and see complete lines only
(:mod:`.journal_reader`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson

from medserve.audit.journal_files import (
    FILE_MODE,
    LOCK_NAME,
    cut_torn_tail,
    first_record,
    journal_name,
    journal_numbers,
    last_record,
)
from medserve.audit.journal_header import JournalState, SharedHeader
from medserve.audit.journal_reader import JournalReader
from medserve.audit.record import GENESIS, AuditRecord, RecordValues, event_values, to_json_line
from medserve.audit.timestamps import UtcTimestamps
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import StoreUnavailable
from medserve.values.files import fsync_directory

__all__ = ["Journal", "journal_name"]


class Journal:
    """One journal directory. Thread-safe; safe across processes through the lock file."""

    def __init__(self, directory: Path, *, fsync: bool = True, max_file_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_file_bytes = max(max_file_bytes, 1)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
            self._header = SharedHeader(self._lock_fd)
        except OSError as exc:
            raise StoreUnavailable(f"audit journal directory {directory} is not usable: {exc}") from exc
        self._mutex = threading.Lock()
        self._timestamps = UtcTimestamps()
        self._reader = JournalReader(directory)
        # The file appends go to, as last seen under the lock.
        self._fd: int | None = None
        self._number = 0
        self._size = 0
        self._head: tuple[int, str] = (0, GENESIS)
        self._generation: int | None = None  # the header generation the cache matches
        self._last_seqs: dict[int, int] = {}  # last seq of older (immutable) files

    # -- files ----------------------------------------------------------------------------------

    def numbers(self) -> list[int]:
        """The numbers of the journal files present, ascending."""
        return journal_numbers(self.directory)

    def files(self) -> list[Path]:
        return [self.directory / journal_name(n) for n in self.numbers()]

    def _path(self, number: int) -> Path:
        return self.directory / journal_name(number)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- appending ------------------------------------------------------------------------------

    def append(
        self,
        events: Sequence[AuditEvent],
        times_ns: Sequence[int] | None = None,
        on_durable: Callable[[list[RecordValues]], None] | None = None,
    ) -> list[RecordValues]:
        """Seal ``events`` onto the chain head and write them durably; returns the sealed records.

        ``times_ns`` (wall clock, ``time.time_ns()``) gives each event's time; default: now.
        ``on_durable`` is called with the records as soon as they are durable, before the lock is
        released (callers waiting on them need not wait for the unlock).
        """
        if not events:
            return []
        if times_ns is None:
            times_ns = [time.time_ns()] * len(events)
        sealed = [event_values(event) for event in events]
        with self._locked():
            self._sync()
            seq, prev_hash = self._head
            timestamp = self._timestamps.format
            lines = []
            for values, time_ns in zip(sealed, times_ns):
                seq += 1
                values["seq"] = seq
                values["time"] = timestamp(time_ns)
                values["prev_hash"] = prev_hash
                body = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
                prev_hash = hashlib.sha256(prev_hash.encode() + body).hexdigest()
                values["hash"] = prev_hash
                lines.append(body[:-1])
                lines.append(b',"hash":"%s"}\n' % prev_hash.encode())
            self._write(b"".join(lines), (seq, prev_hash))
            if on_durable is not None:
                on_durable(sealed)
        return sealed

    def adopt(self, record: AuditRecord) -> bool:
        """Continue the chain from ``record`` (the database's head) if the journal is behind it."""
        with self._locked():
            self._sync()
            if self._head[0] >= record.seq:
                return False
            self._write(to_json_line(record), (record.seq, record.hash))
            return True

    def head(self) -> tuple[int, str]:
        """The chain head on disk: the last record's seq and hash; ``(0, GENESIS)`` for none."""
        if self._generation is not None:  # the header is trusted once this process has read the files
            state = self._header.read()
            if state is not None:
                return state.seq, state.hash
        with self._locked():
            self._sync()
            return self._head

    def _write(self, data: bytes, head: tuple[int, str]) -> None:
        """Write ``data`` (whole lines) at the end of the newest file; durable when ``fsync``."""
        if self._fd is None:
            raise StoreUnavailable("audit journal is closed")
        if self._size >= self.max_file_bytes:
            self._open(self._number + 1)
        # An odd generation marks a write in progress: if this process dies before the end, the next
        # appender finds it odd and rescans the files (cutting a torn line) instead of trusting it.
        generation = self._header.begin()
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._generation = None  # rescan on the next append; the header stays odd
            raise StoreUnavailable(f"audit journal write failed: {exc.strerror or exc}") from exc
        self._size += len(data)
        self._head = head
        self._generation = self._header.end(generation, JournalState(self._number, self._size, *head))

    def _sync(self) -> None:
        """Make the cached file and head match the disk (another process may have appended).

        Costs no system call when nobody else appended: the shared header's generation tells.
        """
        generation = self._header.generation()
        if generation == self._generation and self._fd is not None:
            return
        state = self._header.read() if self._generation is not None else None
        if state is not None:
            self._head = (state.seq, state.hash)
            if state.number != self._number or self._fd is None:
                self._open(state.number)
            self._size = state.size
            self._generation = state.generation
            return
        # First append of this process, or another one died mid-write: read the files themselves.
        numbers = self.numbers()
        head: tuple[int, str] | None = None
        newest = numbers[-1] if numbers else 1
        if numbers:
            cut_torn_tail(self._path(newest), self.fsync)
            for number in reversed(numbers):
                head = last_record(self._path(number))
                if head is not None:
                    break
        self._head = head or (0, GENESIS)
        self._open(newest)
        self._size = os.fstat(self._fd).st_size if self._fd is not None else 0
        self._generation = self._header.publish(JournalState(self._number, self._size, *self._head))

    def _open(self, number: int) -> None:
        """Make file ``number`` the one appends go to (created if missing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self._path(number)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_DSYNC if self.fsync else 0)
        try:
            self._fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            raise StoreUnavailable(f"audit journal {path} cannot be opened: {exc.strerror or exc}") from exc
        if created and self.fsync:
            fsync_directory(self.directory, strict=True)
        self._number = number
        self._size = 0 if created else os.fstat(self._fd).st_size

    # -- reading --------------------------------------------------------------------------------

    def read(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Complete records with seq above ``after_seq``, oldest first, at most ``limit``."""
        return [AuditRecord(**values) for values in self.read_values(after_seq, limit)]  # type: ignore[arg-type]

    def read_values(self, after_seq: int = 0, limit: int | None = None) -> list[RecordValues]:
        """:meth:`read` as plain values. Continues where the previous call stopped when ``after_seq``
        is at or past it, so a flusher reading forwards never rescans."""
        return self._reader.read_values(after_seq, limit)

    def iter_records(self, after_seq: int = 0, page: int = 1000) -> Iterator[AuditRecord]:
        """Every complete record above ``after_seq``, in bounded pages."""
        while True:
            records = self.read(after_seq, page)
            if not records:
                return
            yield from records
            after_seq = records[-1].seq

    def first_seq(self) -> int | None:
        """The seq of the oldest record still in the journal."""
        for number in self.numbers():
            record = first_record(self._path(number))
            if record is not None:
                return record.seq
        return None

    # -- pruning --------------------------------------------------------------------------------

    def prune(self, flushed_seq: int) -> int:
        """Delete older files whose records all have seq at most ``flushed_seq``; returns how many."""
        deleted = 0
        with self._locked():
            numbers = self.numbers()
            newest = None
            for number in reversed(numbers):
                if last_record(self._path(number)) is not None:
                    newest = number
                    break
            for number in numbers:
                if newest is None or number >= newest:
                    break
                last = self._last_seqs.get(number)
                if last is None:
                    head = last_record(self._path(number))
                    last = head[0] if head is not None else 0
                    self._last_seqs[number] = last
                if last > flushed_seq:
                    break
                self._path(number).unlink(missing_ok=True)
                self._last_seqs.pop(number, None)
                deleted += 1
        return deleted

    def sync(self) -> None:
        """Flush appended records to the disk (for journals opened without ``fsync``).

        Syncs a duplicate of the file's descriptor outside the mutex, so appenders do not wait for the
        disk meanwhile (a rotation may close the original); everything appended before the call is in
        the file the duplicate names."""
        with self._mutex:
            if self._fd is None:
                return
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                self._header.close()
                os.close(self._lock_fd)
                self._lock_fd = -1
