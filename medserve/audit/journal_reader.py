"""Reading an audit journal forwards, file after file, without a lock: complete lines only.

The reader remembers where it stopped, so a flusher that reads forwards never rescans; a line still
being written (no newline yet) is left for the next read, and one torn by a crash is skipped once a
newer file exists.
"""

from __future__ import annotations

import threading
from pathlib import Path

from medserve.audit.journal_files import CHUNK, first_record, journal_name, journal_numbers, seq_of
from medserve.audit.record import RecordValues, values_from_json_line
from medserve.values.errors import InvalidInput, StoreUnavailable


class JournalReader:
    """Reads the records of the journal in ``directory`` by seq. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._mutex = threading.Lock()
        # The position: the next byte to read in file ``_number``, after seq ``_seq``.
        self._number = 0
        self._offset = 0
        self._seq = -1

    def _path(self, number: int) -> Path:
        return self.directory / journal_name(number)

    def read_values(self, after_seq: int = 0, limit: int | None = None) -> list[RecordValues]:
        """Complete records with seq above ``after_seq``, oldest first, at most ``limit``. Continues
        where the previous call stopped when ``after_seq`` is at or past it."""
        with self._mutex:
            if after_seq < self._seq or not self._path(self._number).exists():
                self._seek(after_seq)
            records: list[RecordValues] = []
            while limit is None or len(records) < limit:
                want = None if limit is None else limit - len(records)
                got, more = self._read_some(after_seq, want, records)
                if not got and not more:
                    break
            return records

    def _seek(self, after_seq: int) -> None:
        """Position the reader at the start of the file that holds ``after_seq + 1``."""
        start = None
        for number in journal_numbers(self.directory):
            first = first_record(self._path(number))
            if first is None:
                continue
            if start is None or first.seq <= after_seq + 1:
                start = number
            if first.seq > after_seq + 1:
                break
        self._number = start or 1
        self._offset = 0
        self._seq = -1

    def _read_some(self, after_seq: int, limit: int | None, into: list[RecordValues]) -> tuple[int, bool]:
        """Read one chunk of the current file; (records added, whether to go on)."""
        path = self._path(self._number)
        try:
            with path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read(CHUNK)
                while data and b"\n" not in data:
                    more = handle.read(CHUNK)
                    if not more:
                        break
                    data += more
        except FileNotFoundError:
            self._seek(max(after_seq, self._seq))
            return 0, self._path(self._number).exists()
        end = data.rfind(b"\n")
        if end < 0:
            # The end of this file, or a line still being written. A newer file means this one is
            # finished (a torn line left by a crash is skipped); re-read first if it grew meanwhile.
            if not self._path(self._number + 1).exists():
                return 0, False
            if path.stat().st_size > self._offset + len(data):
                return 0, True
            self._number += 1
            self._offset = 0
            return 0, True
        added = 0
        position = 0
        while position <= end:
            stop = data.index(b"\n", position)
            line = data[position:stop]
            seq = seq_of(line)
            record: RecordValues | None = None
            if seq is None or seq > after_seq:
                try:
                    record = values_from_json_line(line)
                except InvalidInput as exc:
                    raise StoreUnavailable(
                        f"audit journal {path.name} is corrupt at byte {self._offset + position}: {exc}"
                    ) from exc
                seq = int(record["seq"])
            position = stop + 1
            self._offset += len(line) + 1
            self._seq = seq
            if record is not None and seq > after_seq:
                into.append(record)
                added += 1
                if limit is not None and added >= limit:
                    break
        return added, True
