"""Audit across replicas (SQLite and PostgreSQL): each replica writes a chain of its own into the shared
database; ``verify`` checks every chain and names the first edited, deleted or reordered record with
its chain; the merge of the chains by time is the fleet's history."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from sqlalchemy import text

from medserve.audit.commands import export_audit, format_verification, verify_audit
from medserve.audit.rows import chains, iter_records
from medserve.audit.trail import AuditTrail
from medserve.store.database import Database
from medserve.values.audit_event import INFERENCE, AuditEvent

FAST = {"flush_interval_s": 0.01, "poll_interval_s": 0.05, "backoff_initial_s": 0.02, "backoff_max_s": 0.1}


def _replica(database: Database, journal_dir: Path, chain: str, count: int, done: list[bool]) -> None:
    with AuditTrail(Database(database.url), journal_dir, fsync=False, chain=chain, **FAST) as trail:
        for i in range(count):
            trail.record_blocking(
                AuditEvent(INFERENCE, principal=chain or "single", request_id=f"{chain}-{i}")
            )
        done.append(trail.flush(10))


def _three_replicas(database: Database, tmp_path: Path, names: list[str], count: int) -> list[bool]:
    done: list[bool] = []
    threads = [
        threading.Thread(target=_replica, args=(database, tmp_path / f"audit-{i}", name, count, done))
        for i, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return done


def test_replicas_on_one_chain_lose_records(migrated_database: Database, tmp_path: Path) -> None:
    """What one chain for every replica did: two replicas open their journals on one chain; the second
    one's records do not continue the database's chain and never reach it."""
    first = AuditTrail(Database(migrated_database.url), tmp_path / "audit-0", fsync=False, **FAST)
    second = AuditTrail(Database(migrated_database.url), tmp_path / "audit-1", fsync=False, **FAST)
    first.open()
    second.open()
    try:
        for i in range(10):
            first.record_blocking(AuditEvent(INFERENCE, request_id=f"a-{i}"))
        first.flush(10)
        for i in range(10):
            second.record_blocking(AuditEvent(INFERENCE, request_id=f"b-{i}"))  # acknowledged
        second.flush(1)
    finally:
        first.close(2)
        second.close(2)
    stored = [r.request_id for r in iter_records(migrated_database)]
    assert stored == [f"a-{i}" for i in range(10)]  # b's acknowledged records are not there


def test_per_replica_chains_flush_and_verify(migrated_database: Database, tmp_path: Path) -> None:
    done = _three_replicas(migrated_database, tmp_path, ["replica-a", "replica-b", "replica-c"], 40)
    assert done == [True, True, True]
    assert chains(migrated_database) == ["replica-a", "replica-b", "replica-c"]
    for name in ("replica-a", "replica-b", "replica-c"):
        assert [r.request_id for r in iter_records(migrated_database, chain=name)] == [
            f"{name}-{i}" for i in range(40)
        ]
    result = verify_audit(migrated_database, tmp_path / "audit-1", journal_chain="replica-b")
    assert result.ok and result.count == 120 and result.chains == 3, format_verification(result)
    assert format_verification(result) == "audit trail intact: 120 records in 3 chains"

    out = io.StringIO()
    assert export_audit(migrated_database, out) == 120
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["chain"] == "replica-a" and first["seq"] == 1  # the replica's id in every record


def test_verify_names_the_broken_chain(migrated_database: Database, tmp_path: Path) -> None:
    _three_replicas(migrated_database, tmp_path, ["replica-a", "replica-b"], 10)
    with migrated_database.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_records SET principal = 'x' WHERE chain = 'replica-b' AND seq = 4")
        )
    result = verify_audit(migrated_database)
    assert not result.ok and (result.chain, result.bad_seq) == ("replica-b", 4)
    assert format_verification(result).startswith(
        "audit trail BROKEN at record seq 4 of chain replica-b: record was altered"
    )
    with migrated_database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE chain = 'replica-a' AND seq = 7"))
    result = verify_audit(migrated_database)
    assert not result.ok and (result.chain, result.bad_seq) == ("replica-a", 7) and "missing" in result.reason
