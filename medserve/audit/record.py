"""Audit events and hash-chained audit records: sealing, hashing, verification, conversions.

A record is an event plus ``seq`` (1, 2, ...), ``time`` (ISO 8601 UTC, microseconds, ``Z``),
``prev_hash`` (the previous record's ``hash``; :data:`GENESIS` for seq 1) and ``hash``:

    hash = SHA-256 hex of ( prev_hash as ASCII  +  canonical JSON of every field except ``hash`` )

Canonical JSON is UTF-8 with sorted keys and no whitespace, exactly what Python's
``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes; anyone can
recompute a hash without medserve. Values are strings and integers only. Before sealing, strings are
cut to their column's length (``detail`` to :data:`DETAIL_MAX_CHARS`), NUL characters and lone
surrogates become U+FFFD, and ``latency_us`` becomes a non-negative integer, so every database stores
exactly what was hashed.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson

from medserve.store.tables import AuditRecordRow
from medserve.values.audit_event import (
    AuditEvent,
)
from medserve.values.errors import InvalidInput

GENESIS: Final = "0" * 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """A sealed event: its place in the chain and the hash that covers it."""

    seq: int
    time: str
    event: str
    principal: str = ""
    door: str = ""
    model: str = ""
    model_version: str = ""
    model_digest: str = ""
    device: str = ""
    request_id: str = ""
    input_digest: str = ""
    output_digest: str = ""
    status: str = "ok"
    latency_us: int = 0
    study_ref: str = ""
    patient_ref: str = ""
    detail: str = ""
    prev_hash: str
    hash: str


EVENT_FIELDS: Final = tuple(f.name for f in fields(AuditEvent))
RECORD_FIELDS: Final = tuple(f.name for f in fields(AuditRecord))
_INT_FIELDS: Final = frozenset({"seq", "latency_us"})
_MAX_INT: Final = 2**63 - 1
#: ``detail`` is unbounded in the database; records keep at most this many characters of it.
DETAIL_MAX_CHARS: Final = 8192

#: A record as plain values: every field of :class:`AuditRecord` by name.
RecordValues = dict[str, str | int]


def _column_limits() -> dict[str, int]:
    limits: dict[str, int] = {}
    for column in AuditRecordRow.__table__.columns:
        length = getattr(column.type, "length", None)
        limits[column.name] = length if isinstance(length, int) else DETAIL_MAX_CHARS
    return limits


_LIMITS: Final = _column_limits()
_RECORD_KEYS: Final = frozenset(RECORD_FIELDS)
_FIELD_TYPES: Final = tuple((name, int if name in _INT_FIELDS else str) for name in RECORD_FIELDS)
_STRING_FIELDS: Final = tuple(name for name in EVENT_FIELDS if name != "latency_us")
_STRING_LIMITS: Final = tuple(_LIMITS[name] for name in _STRING_FIELDS)
_get_strings: Final = operator.attrgetter(*_STRING_FIELDS)
_get_record: Final = operator.attrgetter(*RECORD_FIELDS)
record_tuple: Final = operator.itemgetter(*RECORD_FIELDS)
"""``record_tuple(values)``: a :data:`RecordValues` as a tuple in :data:`RECORD_FIELDS` order."""


def _clean(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def _as_int(value: object) -> int:
    if not isinstance(value, int | float | str):
        return 0
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return 0
    return min(max(number, 0), _MAX_INT)


def event_values(event: AuditEvent) -> RecordValues:
    """The event's fields, cleaned for storage: cut to their column, no NUL, valid UTF-8, int latency."""
    strings = _get_strings(event)
    try:
        joined = "".join(strings)  # also a type check: every field a str
        clean = (
            "\x00" not in joined
            and joined.isascii()
            and all(map(operator.le, map(len, strings), _STRING_LIMITS))
        )
    except TypeError:
        clean = False
    if not clean:
        strings = tuple(_clean(text, limit) for text, limit in zip(strings, _STRING_LIMITS))
    values: RecordValues = dict(zip(_STRING_FIELDS, strings))
    latency = event.latency_us
    values["latency_us"] = latency if type(latency) is int and 0 <= latency <= _MAX_INT else _as_int(latency)
    return values


def canonical_json(values: Mapping[str, object]) -> bytes:
    """Sorted keys, no whitespace, UTF-8; byte for byte what ``json.dumps`` writes with those options."""
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)


def hash_values(values: Mapping[str, object]) -> str:
    """The hash of a record given as a mapping of every field but ``hash``."""
    prev_hash = values["prev_hash"]
    if not isinstance(prev_hash, str):
        raise InvalidInput("prev_hash must be a string")
    return hashlib.sha256(prev_hash.encode("ascii", "replace") + canonical_json(values)).hexdigest()


def record_hash(record: AuditRecord) -> str:
    """The hash ``record`` must carry: over its ``prev_hash`` and all its fields but ``hash``."""
    values = to_dict(record)
    del values["hash"]
    return hash_values(values)


def seal(event: AuditEvent, *, seq: int, time: str, prev_hash: str) -> AuditRecord:
    """The record of ``event`` at ``seq``, chained to ``prev_hash``."""
    values: RecordValues = {"seq": seq, "time": time, **event_values(event), "prev_hash": prev_hash}
    values["hash"] = hash_values(values)
    return from_dict(values)


# -- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of checking a chain: ``ok``, or the first bad record's ``bad_seq`` and ``reason``."""

    ok: bool
    count: int  # records read
    head_seq: int  # the last good record's seq (start_seq - 1 if none)
    head_hash: str  # the last good record's hash
    bad_seq: int | None = None
    reason: str = ""
    chain: str = ""  # the chain checked (the broken one when not ok)
    chains: int = 1  # how many chains were checked


def verify(records: Iterable[AuditRecord], *, start_seq: int = 1, start_hash: str = GENESIS) -> Verification:
    """Check that ``records`` (in seq order) form one unbroken chain from ``start_seq``/``start_hash``.

    Streams with one record of look-ahead. Detects an edited record (its hash does not match its
    contents), a deleted record (a seq gap), records out of order or duplicated, and a broken link
    (``prev_hash`` is not the previous record's hash: a record was rewritten with a fresh hash, or
    records were removed and renumbered). Names the first bad record.
    """
    iterator = iter(records)
    expected_seq, expected_prev, count = start_seq, start_hash, 0
    lookahead: AuditRecord | None = None
    while True:
        record = lookahead if lookahead is not None else next(iterator, None)
        lookahead = None
        if record is None:
            return Verification(True, count, expected_seq - 1, expected_prev)
        count += 1
        if record.seq == expected_seq:
            reason = _check(record, expected_seq, expected_prev, start_seq)
            if not reason:
                expected_seq, expected_prev = record.seq + 1, record.hash
                continue
        elif record.seq < expected_seq:
            reason = f"out of order or duplicated: seq {record.seq} comes after seq {expected_seq - 1}"
        else:
            lookahead = next(iterator, None)
            if lookahead is not None and lookahead.seq == expected_seq:
                reason = f"out of order: seq {record.seq} comes before seq {expected_seq}"
            else:
                gap = record.seq - expected_seq
                missing = (
                    f"record {expected_seq}" if gap == 1 else f"records {expected_seq} to {record.seq - 1}"
                )
                after = f"seq {expected_seq - 1}" if expected_seq > start_seq else "the chain's start"
                return Verification(
                    False,
                    count,
                    expected_seq - 1,
                    expected_prev,
                    expected_seq,
                    f"{missing} {'is' if gap == 1 else 'are'} missing (deleted): "
                    f"seq {record.seq} follows {after}",
                )
        return Verification(False, count, expected_seq - 1, expected_prev, record.seq, reason)


def _check(record: AuditRecord, expected_seq: int, expected_prev: str, start_seq: int) -> str:
    if record_hash(record) != record.hash:
        return "record was altered: its hash does not match its contents"
    if record.prev_hash != expected_prev:
        previous = f"record {expected_seq - 1}" if expected_seq > start_seq else "the chain's start"
        return (
            f"chain link broken: prev_hash is not the hash of {previous} "
            "(a record was rewritten with a new hash, or records were removed and renumbered)"
        )
    return ""


# -- conversions ----------------------------------------------------------------------------------


def to_dict(record: AuditRecord) -> RecordValues:
    return dict(zip(RECORD_FIELDS, _get_record(record)))


def check_values(values: object) -> RecordValues:
    """``values`` if it is a record (exactly its fields, right types); :class:`InvalidInput` if not."""
    if not isinstance(values, dict):
        raise InvalidInput("audit record is not a mapping")
    if values.keys() != _RECORD_KEYS:
        missing = sorted(_RECORD_KEYS - values.keys())
        extra = sorted(str(name) for name in values.keys() - _RECORD_KEYS)
        raise InvalidInput(f"audit record lacks {missing} or has unknown fields {extra}")
    for name, wanted in _FIELD_TYPES:
        if type(values[name]) is not wanted:
            raise InvalidInput(f"audit record field {name} must be {wanted.__name__}")
    return values


def from_dict(values: Mapping[str, Any]) -> AuditRecord:
    """A record from a mapping with exactly the record's fields; :class:`InvalidInput` otherwise."""
    checked = check_values(dict(values))
    return AuditRecord(**checked)  # type: ignore[arg-type]


def to_row(record: AuditRecord) -> AuditRecordRow:
    return AuditRecordRow(**to_dict(record))


def from_row(row: AuditRecordRow) -> AuditRecord:
    return from_dict({name: getattr(row, name) for name in RECORD_FIELDS})


def to_json_line(record: AuditRecord) -> bytes:
    """One JSON object and ``\\n``, keys in canonical order."""
    return canonical_json(to_dict(record)) + b"\n"


def values_from_json_line(line: bytes | str) -> RecordValues:
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"audit line is not JSON: {exc}") from exc
    return check_values(values)


def from_json_line(line: bytes | str) -> AuditRecord:
    return AuditRecord(**values_from_json_line(line))  # type: ignore[arg-type]
