"""The files of an audit journal: their names, and reading their first and last lines.

Files are ``journal-000001.jsonl``, ``journal-000002.jsonl``, ... in one directory, one JSON record a
line; a last line without its newline is torn (written by an appender that died) and was never
acknowledged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO, Final

import orjson

from medserve.audit.record import AuditRecord, from_json_line
from medserve.values.errors import InvalidInput, StoreUnavailable

NAME: Final = re.compile(r"^journal-(\d{6,})\.jsonl$")
LOCK_NAME: Final = "journal.lock"
FILE_MODE: Final = 0o600
CHUNK: Final = 1 << 20


def journal_name(number: int) -> str:
    return f"journal-{number:06d}.jsonl"


def journal_numbers(directory: Path) -> list[int]:
    """The numbers of the journal files in ``directory``, ascending."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = NAME.match(entry.name)
            if match:
                found.append(int(match.group(1)))
    return sorted(found)


def seq_of(line: bytes) -> int | None:
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


def cut_torn_tail(path: Path, fsync: bool) -> None:
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
        start = max(0, position - CHUNK)
        handle.seek(start)
        data = handle.read(position - start)
        index = data.rfind(b"\n")
        if index >= 0:
            return start + index
        position = start
    return -1


def last_record(path: Path) -> tuple[int, str] | None:
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


def first_record(path: Path) -> AuditRecord | None:
    """The first complete record of ``path``; None if it has none (or is gone)."""
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
