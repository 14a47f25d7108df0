"""The audit trail end to end: journal first, database soon after, through crashes and outages."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from databases import Outage
from sqlalchemy import func, select, text

from medserve.audit.commands import export_audit, format_verification, verify_audit
from medserve.audit.journal import Journal, journal_name
from medserve.audit.record import from_json_line, seal, to_dict, verify
from medserve.audit.rows import iter_records
from medserve.audit.trail import AuditTrail
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import OFFLOAD_DIGEST_BYTES, InferenceService
from medserve.repository.repository import ModelRepository
from medserve.security.authenticate import Authenticator
from medserve.store.database import Database
from medserve.store.tables import AuditRecordRow
from medserve.values.audit_event import INFERENCE, TOKEN_CREATE, AuditEvent
from medserve.values.digest import tensors_digest
from medserve.values.errors import StoreUnavailable
from medserve.values.types import InferenceRequest, Tensor

FAST = {"flush_interval_s": 0.01, "poll_interval_s": 0.05, "backoff_initial_s": 0.02, "backoff_max_s": 0.1}


def event(index: int) -> AuditEvent:
    return AuditEvent(INFERENCE, principal="svc", door="http", model="simple", request_id=str(index))


def stored_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(AuditRecordRow)) or 0


def request_ids(database: Database) -> list[str]:
    return [record.request_id for record in iter_records(database)]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


async def test_concurrent_records_reach_the_database_in_order(
    migrated_database: Database, tmp_path: Path
) -> None:
    trail = AuditTrail(migrated_database, tmp_path / "audit", **FAST)
    trail.open()
    try:
        await asyncio.gather(*(trail.record(event(i)) for i in range(500)))
        assert trail.written_total == 500
        assert trail.flush(10)
        assert trail.backlog == 0 and trail.flushed_total == 500 and trail.database_healthy
    finally:
        trail.close()
    assert request_ids(migrated_database) == [str(i) for i in range(500)]
    result = verify_audit(migrated_database, tmp_path / "audit")
    assert result.ok and result.count == 500, format_verification(result)


def test_record_blocking_from_threads(migrated_database: Database, tmp_path: Path) -> None:
    with AuditTrail(migrated_database, tmp_path / "audit", fsync=False, **FAST) as trail:
        threads = [
            threading.Thread(
                target=lambda k=k: [trail.record_blocking(event(k * 100 + i)) for i in range(50)]
            )
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert trail.flush(10)
    expected = sorted(k * 100 + i for k in range(4) for i in range(50))
    assert sorted(map(int, request_ids(migrated_database))) == expected
    assert verify_audit(migrated_database).ok


async def test_closed_trail_refuses(migrated_database: Database, tmp_path: Path) -> None:
    trail = AuditTrail(migrated_database, tmp_path / "audit", **FAST)
    with pytest.raises(StoreUnavailable):
        await trail.record(event(0))
    trail.open()
    await trail.record(event(1))
    trail.close()
    with pytest.raises(StoreUnavailable):
        trail.record_blocking(event(2))
    assert request_ids(migrated_database) == ["1"]  # the last flush on close


def run_python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode(errors="replace")


CRASHING_WRITER = """
    import os, sys
    from pathlib import Path
    from medserve.audit.record import AuditEvent
    from medserve.audit.trail import AuditTrail
    from medserve.store.database import Database

    trail = AuditTrail(Database(sys.argv[1]), Path(sys.argv[2]), flush_interval_s=60, poll_interval_s=60)
    trail.open()
    for i in range(int(sys.argv[3])):
        trail.record_blocking(AuditEvent("inference", request_id=str(i)))
    os._exit(0)  # dies without closing: the records are in the journal only
"""


def test_crash_recovery_flushes_the_journal_on_open(migrated_database: Database, tmp_path: Path) -> None:
    journal_dir = tmp_path / "audit"
    finish(run_python(CRASHING_WRITER, migrated_database.url, str(journal_dir), "200"))
    assert stored_count(migrated_database) < 200
    # A torn line, as a crash in the middle of a write leaves it: never acknowledged, cut off.
    with (journal_dir / journal_name(1)).open("ab") as handle:
        handle.write(b'{"seq": 201, "time": "2026')
    trail = AuditTrail(migrated_database, journal_dir, **FAST)
    trail.open()  # recovery happens here, before open returns
    try:
        assert stored_count(migrated_database) == 200
        trail.record_blocking(event(200))
        assert trail.flush(10)
    finally:
        trail.close()
    assert request_ids(migrated_database) == [str(i) for i in range(201)]
    result = verify_audit(migrated_database, journal_dir)
    assert result.ok and result.count == 201, format_verification(result)


async def test_database_down_at_start_records_wait_in_the_journal(
    outage: Outage, database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outage.database.migrate()
    outage.begin()
    trail = AuditTrail(outage.database, tmp_path / "audit", **FAST)
    with caplog.at_level(logging.WARNING, logger="medserve.audit.flusher"):
        trail.open()  # no error: the database being down is not the journal's problem
        try:
            await asyncio.gather(*(trail.record(event(i)) for i in range(50)))
            assert not trail.database_healthy and trail.backlog == 50
            wait_until(lambda: trail.flush_failures_total >= 3)
            assert stored_count(database) == 0
            outage.end()
            assert trail.flush(20)
            assert trail.database_healthy and trail.backlog == 0
        finally:
            trail.close()
    warnings = [r for r in caplog.records if "audit database unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, however many retries
    assert request_ids(database) == [str(i) for i in range(50)]
    assert verify_audit(database, tmp_path / "audit").ok


async def test_database_outage_while_running(outage: Outage, database: Database, tmp_path: Path) -> None:
    outage.database.migrate()
    trail = AuditTrail(outage.database, tmp_path / "audit", **FAST)
    trail.open()
    try:
        await asyncio.gather(*(trail.record(event(i)) for i in range(10)))
        assert trail.flush(10)
        outage.begin()
        await asyncio.gather(*(trail.record(event(i)) for i in range(10, 30)))
        wait_until(lambda: not trail.database_healthy)
        assert not trail.flush(0.3)
        assert trail.backlog == 20
        outage.end()
        assert trail.flush(20)
        await trail.record(event(30))
        assert trail.flush(10)
    finally:
        trail.close()
    assert request_ids(database) == [str(i) for i in range(31)]
    assert verify_audit(database).ok


CONCURRENT_WRITER = """
    import sys, threading
    from pathlib import Path
    from medserve.audit.record import AuditEvent
    from medserve.audit.trail import AuditTrail
    from medserve.store.database import Database

    name, count = sys.argv[3], int(sys.argv[4])
    trail = AuditTrail(Database(sys.argv[1]), Path(sys.argv[2]), flush_interval_s=0.01)
    trail.open()
    def write(k):
        for i in range(count):
            trail.record_blocking(AuditEvent("inference", principal=name, request_id=f"{k}-{i}"))
    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert trail.flush(60)
    trail.close()
"""


def test_two_processes_append_one_chain(migrated_database: Database, tmp_path: Path) -> None:
    journal_dir = tmp_path / "audit"
    processes = [
        run_python(CONCURRENT_WRITER, migrated_database.url, str(journal_dir), name, "100")
        for name in ("server", "cli")
    ]
    for process in processes:
        finish(process)
    records = list(iter_records(migrated_database))
    assert len(records) == 800
    assert {r.principal for r in records} == {"server", "cli"}
    result = verify_audit(migrated_database, journal_dir)
    assert result.ok and result.count == 800, format_verification(result)
    journal = Journal(journal_dir)
    assert verify(journal.iter_records()).ok
    journal.close()


async def test_export_writes_json_lines(migrated_database: Database, tmp_path: Path) -> None:
    with AuditTrail(migrated_database, tmp_path / "audit", **FAST) as trail:
        for i in range(5):
            await trail.record(event(i))
        await trail.record(AuditEvent(TOKEN_CREATE, principal="admin", detail="token t1 for svc"))
        assert trail.flush(10)
    out = io.StringIO()
    assert export_audit(migrated_database, out) == 6
    lines = out.getvalue().splitlines()
    records = [from_json_line(line) for line in lines]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6] and records[-1].event == TOKEN_CREATE
    assert verify(records).ok
    tail = io.StringIO()
    assert export_audit(migrated_database, tail, since_seq=4) == 2
    assert tail.getvalue().splitlines() == lines[4:]


def fill(database: Database, journal_dir: Path, count: int) -> None:
    with AuditTrail(database, journal_dir, fsync=False, **FAST) as trail:
        for i in range(count):
            trail.record_blocking(event(i))
        assert trail.flush(10)


def test_verify_names_an_edited_record(migrated_database: Database, tmp_path: Path) -> None:
    fill(migrated_database, tmp_path / "audit", 8)
    with migrated_database.engine.begin() as connection:
        connection.execute(text("UPDATE audit_records SET principal = 'mallory' WHERE seq = 3"))
    result = verify_audit(migrated_database)
    assert not result.ok and result.bad_seq == 3
    assert format_verification(result).startswith("audit trail BROKEN at record seq 3: record was altered")


def test_verify_names_a_deleted_record(migrated_database: Database, tmp_path: Path) -> None:
    fill(migrated_database, tmp_path / "audit", 8)
    with migrated_database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE seq = 5"))
    result = verify_audit(migrated_database)
    assert not result.ok and result.bad_seq == 5 and "missing" in result.reason
    assert format_verification(result).startswith("audit trail BROKEN at record seq 5:")


def test_verify_against_the_journal_catches_a_rewritten_chain(
    migrated_database: Database, tmp_path: Path
) -> None:
    journal_dir = tmp_path / "audit"
    fill(migrated_database, journal_dir, 6)
    records = list(iter_records(migrated_database))
    forged, prev = [], records[2].prev_hash
    for record in records[2:]:
        fake = seal(
            AuditEvent(record.event, principal="mallory"), seq=record.seq, time=record.time, prev_hash=prev
        )
        forged.append(fake)
        prev = fake.hash
    with migrated_database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE seq >= 3"))
        connection.execute(AuditRecordRow.__table__.insert(), [to_dict(r) for r in forged])
    assert verify_audit(migrated_database).ok  # the chain alone is consistent again
    result = verify_audit(migrated_database, journal_dir)
    assert not result.ok and result.bad_seq == 3 and "differs from the journal" in result.reason


def test_verify_intact(migrated_database: Database, tmp_path: Path) -> None:
    fill(migrated_database, tmp_path / "audit", 3)
    result = verify_audit(migrated_database, tmp_path / "audit")
    assert format_verification(result) == f"audit trail intact: 3 records, head {result.head_hash}"


def test_journal_rotates_and_prunes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "audit", fsync=False, max_file_bytes=2000)
    for start in range(0, 60, 6):
        journal.append([event(i) for i in range(start, start + 6)])
    numbers = journal.numbers()
    assert len(numbers) > 3
    assert verify(journal.iter_records()).ok and journal.head()[0] == 60
    again = Journal(tmp_path / "audit", fsync=False, max_file_bytes=2000)
    assert again.head() == journal.head()
    assert [v["seq"] for v in again.read_values(after_seq=40, limit=5)] == [41, 42, 43, 44, 45]
    deleted = again.prune(flushed_seq=30)
    assert deleted > 0
    remaining = again.read()
    assert remaining[0].seq <= 31 and remaining[-1].seq == 60
    again.prune(flushed_seq=60)
    assert len(again.numbers()) >= 1 and again.head()[0] == 60  # the newest file stays
    journal.append([event(60)])
    assert again.head()[0] == 61
    assert [r.seq for r in again.read(after_seq=59)] == [60, 61]
    journal.close()
    again.close()


def test_journal_appends_from_two_handles_keep_one_chain(tmp_path: Path) -> None:
    first, second = Journal(tmp_path / "audit"), Journal(tmp_path / "audit")
    for i in range(10):
        (first if i % 2 else second).append([event(i), event(i)])
    assert verify(first.iter_records()).ok and second.head()[0] == 20
    first.close()
    second.close()


async def test_inference_records_name_inputs_and_outputs_by_digest(
    migrated_database: Database, example_repository: Path, tmp_path: Path
) -> None:
    """Every inference's record carries the SHA-256 of its inputs and outputs; a request above
    ``OFFLOAD_DIGEST_BYTES`` is hashed in a worker thread while the model runs, with the same result,
    and a caller-supplied digest (a job's, made off the loop) is recorded as given."""
    trail = AuditTrail(migrated_database, tmp_path / "audit", **FAST)
    trail.open()
    registry = ModelRegistry(ModelRepository(example_repository), ServingMetrics())
    await registry.load("identity_fp32")
    service = InferenceService(registry, Authenticator(None, None, disabled=True), audit=trail)
    rng = np.random.default_rng(0)
    sent: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    try:
        for request_id, count in (("small", 16), ("large", OFFLOAD_DIGEST_BYTES // 4 + 1024)):
            data = rng.random((1, count), dtype=np.float32)
            inputs = [Tensor("INPUT0", "FP32", data.shape, data)]
            caller = await service.authenticate(None, door="test", request_id=request_id)
            response = await service.infer(
                InferenceRequest("identity_fp32", id=request_id, inputs=inputs), caller
            )
            assert np.array_equal(response.outputs[0].data, data)
            sent[request_id] = (inputs, response.outputs)
        given = await service.authenticate(None, door="job:test", request_id="given")
        inputs = sent["small"][0]
        await service.infer(
            InferenceRequest("identity_fp32", id="given", inputs=inputs), given, input_digest="ab" * 32
        )
        wait_until(lambda: stored_count(migrated_database) == 3)
    finally:
        await registry.close()
        trail.close()
    records = {r.request_id: r for r in iter_records(migrated_database)}
    assert sent["large"][0][0].data.nbytes > OFFLOAD_DIGEST_BYTES
    for request_id, (inputs, outputs) in sent.items():
        record = records[request_id]
        assert (record.event, record.model, record.status) == (INFERENCE, "identity_fp32", "ok")
        assert record.input_digest == tensors_digest(inputs) and record.output_digest == tensors_digest(
            outputs
        )
    assert records["given"].input_digest == "ab" * 32
    assert records["given"].output_digest == records["small"].output_digest
