"""The audit journal: append-only JSON-lines files that several processes extend as one hash chain.

Files are ``journal-000001.jsonl``, ``journal-000002.jsonl``, ... in one directory. Every append
takes an exclusive ``flock`` on ``journal.lock``, finds the chain head, seals the batch onto it and
writes it with one ``write``; with ``fsync`` the files are opened ``O_DSYNC``, so that write returns
only once the data is on disk (what ``write`` + ``fdatasync`` do, in one system call).

The chain head is the last complete line of the newest non-empty file. So that an append need not
read it back each time, ``journal.lock`` also holds a small shared header (memory-mapped): a
generation counter, the newest file's number and size, and the head. An appender makes the
generation odd before writing and even after; a process that finds it unchanged trusts its cache,
one that finds it even but changed trusts the header, and one that finds it odd (an appender died
mid-write), or appends for the first time, reads the files and cuts a torn last line (never
acknowledged) off.

Once the newest file has passed ``max_file_bytes`` the next append starts a new file; older files are
immutable, and :meth:`Journal.prune` deletes those whose records the database holds, never the newest
non-empty one, so the head can always be found. Readers take no lock and see complete lines only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import orjson

from medserve.audit.record import (
    GENESIS,
    AuditRecord,
    RecordValues,
    event_values,
    from_json_line,
    to_json_line,
    values_from_json_line,
)
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import InvalidInput, StoreUnavailable

_NAME: Final = re.compile(r"^journal-(\d{6,})\.jsonl$")
_LOCK_NAME: Final = "journal.lock"
_CHUNK: Final = 1 << 20
_FILE_MODE: Final = 0o600


def journal_name(number: int) -> str:
    return f"journal-{number:06d}.jsonl"


class _Clock:
    """ISO 8601 UTC with microseconds and ``Z``; the date-time prefix is cached per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, time_ns: int) -> str:
        micros = time_ns // 1000
        second, micro = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micro:06d}Z"


@dataclass(frozen=True, slots=True)
class _State:
    number: int  # the newest file
    size: int  # its size in bytes
    seq: int  # the chain head
    hash: str
    generation: int = 0


class _Header:
    """The shared header in the lock file: magic, generation, newest file number and size, head."""

    _LAYOUT: Final = struct.Struct("<8sQQQQ64s")
    _MAGIC: Final = b"MSAUDIT1"
    _SIZE: Final = 4096

    def __init__(self, fd: int) -> None:
        if os.fstat(fd).st_size < self._SIZE:
            os.ftruncate(fd, self._SIZE)  # zeros: generation 0, "no header yet"
        self._map = mmap.mmap(fd, self._SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def generation(self) -> int:
        value: int = struct.unpack_from("<Q", self._map, 8)[0]
        return value

    def read(self) -> _State | None:
        """The published state; None while a write is in progress, after a crash, or before any."""
        magic, generation, number, size, seq, hash_ = self._LAYOUT.unpack_from(self._map, 0)
        if magic != self._MAGIC or generation == 0 or generation % 2 or self.generation() != generation:
            return None
        return _State(number, size, seq, hash_.decode("ascii", "replace"), generation)

    def begin(self) -> int:
        """Mark a write in progress (odd generation); returns that generation."""
        current = self.generation()
        odd = current + 1 if current % 2 == 0 else current + 2
        struct.pack_into("<Q", self._map, 8, odd)
        return odd

    def end(self, odd: int, state: _State) -> int:
        """Publish ``state`` and end the write (even generation); returns that generation."""
        even = odd + 1
        self._LAYOUT.pack_into(
            self._map, 0, self._MAGIC, odd, state.number, state.size, state.seq, state.hash.encode("ascii")
        )
        struct.pack_into("<Q", self._map, 8, even)
        return even

    def publish(self, state: _State) -> int:
        return self.end(self.begin(), state)

    def close(self) -> None:
        self._map.close()


class Journal:
    """One journal directory. Thread-safe; safe across processes through the lock file."""

    def __init__(self, directory: Path, *, fsync: bool = True, max_file_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_file_bytes = max(max_file_bytes, 1)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
            self._header = _Header(self._lock_fd)
        except OSError as exc:
            raise StoreUnavailable(f"audit journal directory {directory} is not usable: {exc}") from exc
        self._mutex = threading.Lock()
        self._read_mutex = threading.Lock()
        self._clock = _Clock()
        # The file appends go to, as last seen under the lock.
        self._fd: int | None = None
        self._number = 0
        self._size = 0
        self._head: tuple[int, str] = (0, GENESIS)
        self._generation: int | None = None  # the header generation the cache matches
        # The reader's position: the next byte to read in file ``_read_number``, after seq ``_read_seq``.
        self._read_number = 0
        self._read_offset = 0
        self._read_seq = -1
        self._last_seqs: dict[int, int] = {}  # last seq of older (immutable) files

    # -- files ----------------------------------------------------------------------------------

    def numbers(self) -> list[int]:
        """The numbers of the journal files present, ascending."""
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                match = _NAME.match(entry.name)
                if match:
                    found.append(int(match.group(1)))
        return sorted(found)

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
            clock = self._clock.format
            lines = []
            for values, time_ns in zip(sealed, times_ns):
                seq += 1
                values["seq"] = seq
                values["time"] = clock(time_ns)
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
        self._generation = self._header.end(generation, _State(self._number, self._size, *head))

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
            _cut_torn_tail(self._path(newest), self.fsync)
            for number in reversed(numbers):
                head = _last_record(self._path(number))
                if head is not None:
                    break
        self._head = head or (0, GENESIS)
        self._open(newest)
        self._size = os.fstat(self._fd).st_size if self._fd is not None else 0
        self._generation = self._header.publish(_State(self._number, self._size, *self._head))

    def _open(self, number: int) -> None:
        """Make file ``number`` the one appends go to (created if missing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self._path(number)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_DSYNC if self.fsync else 0)
        try:
            self._fd = os.open(path, flags, _FILE_MODE)
        except OSError as exc:
            raise StoreUnavailable(f"audit journal {path} cannot be opened: {exc.strerror or exc}") from exc
        if created and self.fsync:
            _fsync_directory(self.directory)
        self._number = number
        self._size = 0 if created else os.fstat(self._fd).st_size

    # -- reading --------------------------------------------------------------------------------

    def read(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Complete records with seq above ``after_seq``, oldest first, at most ``limit``."""
        return [AuditRecord(**values) for values in self.read_values(after_seq, limit)]  # type: ignore[arg-type]

    def read_values(self, after_seq: int = 0, limit: int | None = None) -> list[RecordValues]:
        """:meth:`read` as plain values. Continues where the previous call stopped when ``after_seq``
        is at or past it, so a flusher reading forwards never rescans."""
        with self._read_mutex:
            if after_seq < self._read_seq or not self._path(self._read_number).exists():
                self._seek(after_seq)
            records: list[RecordValues] = []
            while limit is None or len(records) < limit:
                want = None if limit is None else limit - len(records)
                got, more = self._read_some(after_seq, want, records)
                if not got and not more:
                    break
            return records

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
            record = _first_record(self._path(number))
            if record is not None:
                return record.seq
        return None

    def _seek(self, after_seq: int) -> None:
        """Position the reader at the start of the file that holds ``after_seq + 1``."""
        start = None
        for number in self.numbers():
            first = _first_record(self._path(number))
            if first is None:
                continue
            if start is None or first.seq <= after_seq + 1:
                start = number
            if first.seq > after_seq + 1:
                break
        self._read_number = start or 1
        self._read_offset = 0
        self._read_seq = -1

    def _read_some(self, after_seq: int, limit: int | None, into: list[RecordValues]) -> tuple[int, bool]:
        """Read one chunk of the current file; (records added, whether to go on)."""
        path = self._path(self._read_number)
        try:
            with path.open("rb") as handle:
                handle.seek(self._read_offset)
                data = handle.read(_CHUNK)
                while data and b"\n" not in data:
                    more = handle.read(_CHUNK)
                    if not more:
                        break
                    data += more
        except FileNotFoundError:
            self._seek(max(after_seq, self._read_seq))
            return 0, self._path(self._read_number).exists()
        end = data.rfind(b"\n")
        if end < 0:
            # The end of this file, or a line still being written. A newer file means this one is
            # finished (a torn line left by a crash is skipped); re-read first if it grew meanwhile.
            if not self._path(self._read_number + 1).exists():
                return 0, False
            if path.stat().st_size > self._read_offset + len(data):
                return 0, True
            self._read_number += 1
            self._read_offset = 0
            return 0, True
        added = 0
        position = 0
        while position <= end:
            stop = data.index(b"\n", position)
            line = data[position:stop]
            seq = _seq_of(line)
            record: RecordValues | None = None
            if seq is None or seq > after_seq:
                try:
                    record = values_from_json_line(line)
                except InvalidInput as exc:
                    raise StoreUnavailable(
                        f"audit journal {path.name} is corrupt at byte {self._read_offset + position}: {exc}"
                    ) from exc
                seq = int(record["seq"])
            position = stop + 1
            self._read_offset += len(line) + 1
            self._read_seq = seq
            if record is not None and seq > after_seq:
                into.append(record)
                added += 1
                if limit is not None and added >= limit:
                    break
        return added, True

    # -- pruning --------------------------------------------------------------------------------

    def prune(self, flushed_seq: int) -> int:
        """Delete older files whose records all have seq at most ``flushed_seq``; returns how many."""
        deleted = 0
        with self._locked():
            numbers = self.numbers()
            newest = None
            for number in reversed(numbers):
                if _last_record(self._path(number)) is not None:
                    newest = number
                    break
            for number in numbers:
                if newest is None or number >= newest:
                    break
                last = self._last_seqs.get(number)
                if last is None:
                    head = _last_record(self._path(number))
                    last = head[0] if head is not None else 0
                    self._last_seqs[number] = last
                if last > flushed_seq:
                    break
                self._path(number).unlink(missing_ok=True)
                self._last_seqs.pop(number, None)
                deleted += 1
        return deleted

    def sync(self) -> None:
        """Flush appended records to the disk (for journals opened without ``fsync``)."""
        with self._mutex:
            if self._fd is not None:
                os.fdatasync(self._fd)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                self._header.close()
                os.close(self._lock_fd)
                self._lock_fd = -1


def _seq_of(line: bytes) -> int | None:
    """The seq of a journal line without parsing all of it (to skip records quickly); None if unsure.

    ``,"seq":`` cannot occur inside a JSON string (its quotes would be escaped), so the first
    occurrence is the key.
    """
    start = line.find(b',"seq":')
    if start < 0:
        return None
    start += 7
    stop = line.find(b",", start)
    digits = line[start:stop] if stop >= 0 else b""
    return int(digits) if digits.isdigit() else None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(path: Path, fsync: bool) -> None:
    """Cut an incomplete last line (never acknowledged) so the next line starts cleanly."""
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        keep = _last_newline(handle, size) + 1
        handle.truncate(keep)
        if fsync:
            os.fsync(handle.fileno())


def _last_newline(handle: BinaryIO, size: int) -> int:
    """The offset of the last ``\\n`` before ``size``; -1 for none."""
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        handle.seek(start)
        data = handle.read(position - start)
        index = data.rfind(b"\n")
        if index >= 0:
            return start + index
        position = start
    return -1


def _last_record(path: Path) -> tuple[int, str] | None:
    """The seq and hash of the last complete line of ``path``; None if it has none."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            end = _last_newline(handle, size)
            if end < 0:
                return None
            start = _last_newline(handle, end) + 1
            handle.seek(start)
            line = handle.read(end - start)
    except FileNotFoundError:
        return None
    try:
        values = orjson.loads(line)
        seq, hash_ = values["seq"], values["hash"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StoreUnavailable(f"audit journal {path.name} ends in a corrupt line") from exc
    if not isinstance(seq, int) or not isinstance(hash_, str):
        raise StoreUnavailable(f"audit journal {path.name} ends in a corrupt line")
    return seq, hash_


def _first_record(path: Path) -> AuditRecord | None:
    try:
        with path.open("rb") as handle:
            line = handle.readline()
    except FileNotFoundError:
        return None
    if not line.endswith(b"\n"):
        return None
    try:
        return from_json_line(line)
    except InvalidInput as exc:
        raise StoreUnavailable(f"audit journal {path.name} starts with a corrupt line") from exc
