"""The hash chain itself: sealing, the documented hash formula, and verify naming the first bad record."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from medserve.audit.record import (
    GENESIS,
    AuditRecord,
    canonical_json,
    event_values,
    from_json_line,
    from_row,
    record_hash,
    seal,
    to_dict,
    to_json_line,
    to_row,
    verify,
)
from medserve.values.audit_event import INFERENCE, TOKEN_CREATE, AuditEvent
from medserve.values.errors import InvalidInput


def chain(count: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = GENESIS
    for seq in range(1, count + 1):
        event = AuditEvent(INFERENCE, principal="svc", model="simple", request_id=f"r{seq}", latency_us=seq)
        record = seal(event, seq=seq, time=f"2026-01-01T00:00:{seq:02d}.000000Z", prev_hash=prev)
        records.append(record)
        prev = record.hash
    return records


def test_hash_is_the_documented_formula() -> None:
    record = chain(1)[0]
    fields = {k: v for k, v in to_dict(record).items() if k != "hash"}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert record.hash == hashlib.sha256(GENESIS.encode() + body).hexdigest()
    assert canonical_json(fields) == body
    assert record_hash(record) == record.hash
    assert record.prev_hash == GENESIS and record.seq == 1


def test_intact_chain_verifies() -> None:
    records = chain(5)
    result = verify(records)
    assert result.ok and result.count == 5 and result.head_seq == 5 and result.head_hash == records[-1].hash
    assert verify([]).ok and verify([]).head_hash == GENESIS


def test_edited_field_names_that_record() -> None:
    records = chain(5)
    records[2] = dataclasses.replace(records[2], principal="mallory")
    result = verify(records)
    assert not result.ok and result.bad_seq == 3 and "altered" in result.reason
    assert result.head_seq == 2 and result.head_hash == records[1].hash


def test_deleted_record_names_the_gap() -> None:
    records = chain(5)
    del records[1]
    result = verify(records)
    assert not result.ok and result.bad_seq == 2
    assert "record 2 is missing" in result.reason and "seq 3 follows seq 1" in result.reason
    del records[1:3]  # now 1, 5: records 2 to 4 missing
    assert "records 2 to 4 are missing" in verify(records).reason


def test_swapped_records_are_out_of_order() -> None:
    records = chain(5)
    records[2], records[3] = records[3], records[2]
    result = verify(records)
    assert not result.ok and result.bad_seq == 4 and "out of order" in result.reason


def test_duplicate_is_named() -> None:
    records = chain(3)
    result = verify([*records, records[1]])
    assert not result.ok and result.bad_seq == 2 and "duplicated" in result.reason


def test_rewritten_record_with_fresh_hash_breaks_the_next_link() -> None:
    records = chain(4)
    forged = seal(
        AuditEvent(INFERENCE, principal="mallory"), seq=2, time=records[1].time, prev_hash=records[0].hash
    )
    records[1] = forged
    result = verify(records)
    assert not result.ok and result.bad_seq == 3 and "prev_hash is not the hash of record 2" in result.reason


def test_renumbered_chain_after_delete_breaks_the_link() -> None:
    records = chain(4)
    renumbered = [records[0], *(dataclasses.replace(r, seq=r.seq - 1) for r in records[2:])]
    result = verify(renumbered)
    assert not result.ok and result.bad_seq == 2  # its hash no longer matches its (new) seq
    assert "altered" in result.reason


def test_verify_from_a_later_start() -> None:
    records = chain(6)
    assert verify(records[3:], start_seq=4, start_hash=records[2].hash).ok
    assert not verify(records[3:], start_seq=4, start_hash=GENESIS).ok


def test_verify_streams_a_generator() -> None:
    result = verify(record for record in chain(200))
    assert result.ok and result.count == 200


def test_json_line_and_row_round_trip() -> None:
    record = chain(2)[1]
    line = to_json_line(record)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert from_json_line(line) == record
    assert from_row(to_row(record)) == record
    with pytest.raises(InvalidInput):
        from_json_line(b'{"seq": 1}')
    with pytest.raises(InvalidInput):
        from_json_line(line.replace(b'"latency_us":2', b'"latency_us":"2"'))
    with pytest.raises(InvalidInput):
        from_json_line(b"not json")


def test_event_values_are_cleaned_for_every_database() -> None:
    event = AuditEvent(
        TOKEN_CREATE,
        principal="p" * 500,
        detail="a\x00b \ud800 é",
        request_id="ü" * 200,
        latency_us=-5,
    )
    values = event_values(event)
    assert values["principal"] == "p" * 128
    assert values["request_id"] == "ü" * 128
    assert values["detail"] == "a\ufffdb \ufffd é"
    assert values["latency_us"] == 0
    record = seal(event, seq=1, time="2026-01-01T00:00:00.000000Z", prev_hash=GENESIS)
    assert verify([record]).ok
    assert from_json_line(to_json_line(record)) == record
