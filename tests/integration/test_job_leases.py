"""Who runs a job is a lease, never a PID or a hostname (SQLite and PostgreSQL): a job left running by
a pod that is gone is resumed by another replica once its lease expires, a live runner's job is never
claimed twice, and a runner that lost its lease cannot commit a chunk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from medserve.jobs.spec import parse_spec_text
from medserve.jobs.store import CANCELLED, QUEUED, RUNNING, JobStore
from medserve.store.database import Database
from medserve.store.leases import LeaseBook, LeaseLost
from medserve.store.tables import JobChunkRow, JobRow
from medserve.values.errors import Conflict


def _store(database: Database, holder: str, ttl_s: float = 30.0) -> JobStore:
    return JobStore(database, LeaseBook(database, holder, ttl_s=ttl_s))


def _job(store: JobStore, tmp_path: Path) -> str:
    (tmp_path / "in.csv").write_text("id,a\n1,2\n")
    source, sink = tmp_path / "in.csv", tmp_path / "out.csv"
    spec = parse_spec_text(f"workload: table\nsource: {source}\nmodel: simple\nsink: {{path: {sink}}}\n")
    return store.create(spec, "simple", "tester").id


def test_a_job_left_running_by_a_pod_that_is_gone_is_taken_over(
    migrated_database: Database, tmp_path: Path
) -> None:
    replica_b = _store(migrated_database, "replica-b")
    job_id = _job(replica_b, tmp_path)
    # What a pod that was rescheduled leaves behind: running, by a process on a host that no longer
    # exists (the PID/hostname check took such a runner for alive, on another host, forever).
    with migrated_database.session() as session, session.begin():
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(state=RUNNING, runner="server:1@pod-gone")
        )
    claimed = replica_b.claim_next("replica-b")
    assert claimed is not None
    status, lease = claimed
    assert (status.id, status.state, status.runner, lease.holder) == (
        job_id,
        RUNNING,
        "replica-b",
        "replica-b",
    )


def test_a_live_runners_job_is_not_claimed_until_its_lease_expires(
    migrated_database: Database, tmp_path: Path
) -> None:
    replica_a = _store(migrated_database, "replica-a", ttl_s=0.5)
    replica_b = _store(migrated_database, "replica-b")
    job_id = _job(replica_a, tmp_path)
    first = replica_a.claim_next("replica-a")
    assert first is not None and first[1].token == 1
    assert replica_b.claim_next("replica-b") is None
    with pytest.raises(Conflict, match="running in replica-a"):
        replica_b.claim(job_id, "replica-b")
    with pytest.raises(Conflict, match="running in replica-a"):
        replica_b.requeue(job_id)
    assert replica_b.request_cancel(job_id).state == RUNNING  # asked; the runner stops it
    with migrated_database.session() as session, session.begin():
        session.execute(update(JobRow).where(JobRow.id == job_id).values(cancel_requested=False))

    time.sleep(0.6)  # replica-a is killed: no heartbeat, the lease expires
    second = replica_b.claim_next("replica-b")
    assert second is not None and second[0].id == job_id and second[1].token == 2

    # replica-a wakes up and tries to commit under its old lease: refused, nothing written
    with pytest.raises(LeaseLost):
        replica_a.commit_chunk(
            job_id, 0, items=1, scored=1, rows=1, part="p", failures=[], busy_s=0, lease=first[1]
        )
    with migrated_database.session() as session:
        assert session.scalar(select(func.count()).select_from(JobChunkRow)) == 0
    replica_b.commit_chunk(
        job_id, 0, items=1, scored=1, rows=1, part="p", failures=[], busy_s=0, lease=second[1]
    )
    assert replica_b.committed(job_id).keys() == {0}


def test_a_job_nobody_holds_is_cancelled_at_once(migrated_database: Database, tmp_path: Path) -> None:
    store = _store(migrated_database, "replica-a")
    job_id = _job(store, tmp_path)
    with migrated_database.session() as session, session.begin():
        session.execute(
            update(JobRow).where(JobRow.id == job_id).values(state=RUNNING, runner="server:1@pod-gone")
        )
    assert store.request_cancel(job_id).state == CANCELLED
    other = _job(store, tmp_path)
    assert store.get(other).state == QUEUED
