"""Jobs in the store: create, claim, commit chunks, read progress and failures, cancel.

Every change is one transaction. A chunk's commit writes its row, its failures and the job's counters
together, so the store never says a chunk is done without its failures or the other way round.

Who runs a job is a ``job`` lease (:mod:`medserve.store.leases`), never a PID or a hostname: a runner
holds the lease and renews it while it runs; its chunk commits are fenced by it. A job whose runner
died (its lease expired) is taken over by the next replica that polls, from its last committed chunk.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update

from medserve.jobs.spec import JobSpec, parse_spec
from medserve.jobs.workload import ItemFailure
from medserve.store.database import Database
from medserve.store.leases import Lease, LeaseBook
from medserve.store.tables import JobChunkRow, JobFailureRow, JobRow
from medserve.values.errors import Conflict, JobNotFound
from medserve.values.times import as_utc

QUEUED, RUNNING, PAUSED = "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
INTERRUPTED = "interrupted"  # a stand-alone run stopped by Ctrl-C; ``job run`` or ``job resume`` goes on
UNFINISHED = (QUEUED, RUNNING, PAUSED, INTERRUPTED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
LEASE_KIND = "job"


def _now() -> datetime:
    return datetime.now(UTC)


def runner_name(kind: str) -> str:
    """``server:<pid>@<host>`` or ``standalone:<pid>@<host>``: who runs a job (shown, and the lease
    holder of a process that has no replica id)."""
    return f"{kind}:{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class JobStatus:
    """What ``medserve job status`` and ``GET /jobs/{id}`` show."""

    id: str
    name: str
    workload: str
    model: str
    state: str
    submitted_by: str
    runner: str
    items_done: int
    items_failed: int
    items_total: int | None
    chunks_done: int
    busy_s: float
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    spec: dict[str, Any]

    @property
    def items_per_s(self) -> float | None:
        done = self.items_done + self.items_failed
        return done / self.busy_s if self.busy_s > 0 and done else None

    @property
    def eta_s(self) -> float | None:
        rate = self.items_per_s
        if self.items_total is None or rate is None or self.state in FINISHED:
            return None
        return max(0.0, (self.items_total - self.items_done - self.items_failed) / rate)

    def document(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "id": self.id,
            "name": self.name,
            "workload": self.workload,
            "model": self.model,
            "state": self.state,
            "submitted_by": self.submitted_by,
            "runner": self.runner,
            "items_done": self.items_done,
            "items_failed": self.items_failed,
            "items_total": self.items_total,
            "chunks_done": self.chunks_done,
            "items_per_s": round(self.items_per_s, 2) if self.items_per_s else None,
            "eta_s": round(self.eta_s, 1) if self.eta_s is not None else None,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "sink": self.spec.get("sink", {}).get("path"),
            "spec": self.spec,
        }


def _status(row: JobRow) -> JobStatus:
    return JobStatus(
        row.id,
        row.name,
        row.workload,
        row.model,
        row.state,
        row.submitted_by,
        row.runner,
        int(row.items_done),
        int(row.items_failed),
        None if row.items_total is None else int(row.items_total),
        row.chunks_done,
        float(row.busy_s),
        row.error,
        as_utc(row.created_at) or _now(),
        as_utc(row.started_at),
        as_utc(row.finished_at),
        bool(row.cancel_requested),
        dict(row.spec),
    )


@dataclass(frozen=True)
class CommittedChunk:
    chunk: int
    items: int
    rows: int
    part: str


class JobStore:
    """Jobs in ``database``; ``leases`` is the book of whoever runs jobs through this store (a replica's,
    or by default one of this process alone)."""

    def __init__(self, database: Database, leases: LeaseBook | None = None) -> None:
        self.database = database
        self.leases = leases or LeaseBook(database, runner_name("process"), ttl_s=30.0)

    # -- jobs -------------------------------------------------------------------------------
    def create(self, spec: JobSpec, model: str, submitted_by: str) -> JobStatus:
        now = _now()
        document = spec.document()
        document["model"] = model
        row = JobRow(
            id=uuid.uuid4().hex[:16],
            name=spec.name,
            spec=document,
            spec_digest=spec.digest(),
            workload=spec.workload,
            model=model,
            state=QUEUED,
            submitted_by=submitted_by,
            runner="",
            cancel_requested=False,
            items_done=0,
            items_failed=0,
            items_total=None,
            chunks_done=0,
            busy_s=0.0,
            error="",
            created_at=now,
            updated_at=now,
        )
        with self.database.session() as session, session.begin():
            session.add(row)
        return _status(row)

    def get(self, job_id: str) -> JobStatus:
        with self.database.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobNotFound(f"no job '{job_id}'")
            return _status(row)

    def spec(self, job_id: str) -> JobSpec:
        return parse_spec(self.get(job_id).spec, where=f"job {job_id}")

    def recent(self, limit: int = 100, states: Sequence[str] | None = None) -> list[JobStatus]:
        query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
        if states:
            query = query.where(JobRow.state.in_(list(states)))
        with self.database.session() as session:
            return [_status(row) for row in session.scalars(query)]

    def unfinished_with_digest(self, digest: str) -> JobStatus | None:
        query = (
            select(JobRow)
            .where(JobRow.spec_digest == digest, JobRow.state.in_(UNFINISHED + (FAILED,)))
            .order_by(JobRow.created_at.desc())
            .limit(1)
        )
        with self.database.session() as session:
            row = session.scalars(query).first()
            return None if row is None else _status(row)

    def claim(
        self, job_id: str, runner: str, *, allowed: Sequence[str] = UNFINISHED
    ) -> tuple[JobStatus, Lease]:
        """Take the job's lease and mark it running by ``runner``; ``Conflict`` when it is in another
        state, asked to cancel, or another live runner holds its lease."""
        lease = self.leases.acquire(LEASE_KIND, job_id)
        if lease is None:
            holder = self.leases.live_holder(LEASE_KIND, job_id) or "another runner"
            raise Conflict(f"job {job_id} is running in {holder}")
        try:
            return self._mark_running(job_id, runner, lease, allowed), lease
        except (Conflict, JobNotFound):
            self.leases.release(lease)
            raise

    def claim_next(self, runner: str) -> tuple[JobStatus, Lease] | None:
        """Lease the oldest job to run: queued, or left running or paused by a runner whose lease
        expired (it died); None when there is none."""
        candidates = (
            select(JobRow.id)
            .where(
                or_(JobRow.state == QUEUED, JobRow.state.in_([RUNNING, PAUSED])),
                JobRow.cancel_requested.is_(False),
            )
            .order_by(JobRow.created_at)
        )
        for lease in self.leases.claim(LEASE_KIND, candidates, 1):
            try:
                return self._mark_running(lease.key, runner, lease, UNFINISHED), lease
            except (Conflict, JobNotFound):  # cancelled or ended between the claim and now
                self.leases.release(lease)
        return None

    def _mark_running(self, job_id: str, runner: str, lease: Lease, allowed: Sequence[str]) -> JobStatus:
        with self.database.session() as session, session.begin():
            self.leases.fence(session.connection(), lease)
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise JobNotFound(f"no job '{job_id}'")
            if row.state not in allowed:
                raise Conflict(f"job {job_id} is {row.state}")
            if row.cancel_requested:
                raise Conflict(f"job {job_id} was asked to cancel")
            now = _now()
            row.state, row.runner, row.error, row.updated_at = RUNNING, runner, "", now
            row.started_at = row.started_at or now
            row.finished_at = None
            return _status(row)

    def interrupted(self, runner: str) -> list[str]:
        """Jobs left running or paused by ``runner`` that no live lease covers (it was stopped hard)."""
        query = select(JobRow.id).where(JobRow.state.in_([RUNNING, PAUSED]), JobRow.runner == runner)
        with self.database.session() as session:
            ids = list(session.scalars(query))
        return [job_id for job_id in ids if self.running_elsewhere(job_id) is None]

    def running_elsewhere(self, job_id: str) -> str | None:
        """Who runs the job now (the holder of its live lease); None when nobody does."""
        return self.leases.live_holder(LEASE_KIND, job_id)

    def set_state(
        self,
        job_id: str,
        state: str,
        *,
        error: str = "",
        runner: str | None = None,
        lease: Lease | None = None,
    ) -> None:
        """Set the job's state (fenced by ``lease`` when given)."""
        values: dict[str, Any] = {"state": state, "error": error[:4000], "updated_at": _now()}
        if state in FINISHED:
            values["finished_at"] = _now()
        if runner is not None:
            values["runner"] = runner
        with self.database.session() as session, session.begin():
            if lease is not None:
                self.leases.fence(session.connection(), lease)
            session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def add_busy(self, job_id: str, seconds: float) -> None:
        with self.database.session() as session, session.begin():
            session.execute(
                update(JobRow).where(JobRow.id == job_id).values(busy_s=JobRow.busy_s + max(0.0, seconds))
            )

    def set_total(self, job_id: str, total: int) -> None:
        with self.database.session() as session, session.begin():
            session.execute(update(JobRow).where(JobRow.id == job_id).values(items_total=total))

    def request_cancel(self, job_id: str) -> JobStatus:
        """Ask the job to stop; a job nobody runs is cancelled at once."""
        with self.database.session() as session, session.begin():
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise JobNotFound(f"no job '{job_id}'")
            if row.state in FINISHED:
                raise Conflict(f"job {job_id} has already ended: {row.state}")
            row.cancel_requested = True
            row.updated_at = _now()
            if row.state in (QUEUED, INTERRUPTED) or (
                row.state in (RUNNING, PAUSED) and self.running_elsewhere(job_id) is None
            ):
                row.state, row.finished_at = CANCELLED, _now()
            return _status(row)

    def cancel_requested(self, job_id: str) -> bool:
        with self.database.session() as session:
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def requeue(self, job_id: str) -> JobStatus:
        """A failed (or stranded) job back in the queue; its committed chunks are kept."""
        with self.database.session() as session, session.begin():
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise JobNotFound(f"no job '{job_id}'")
            if row.state in (SUCCEEDED, CANCELLED):
                raise Conflict(f"job {job_id} has ended: {row.state}")
            if row.state == RUNNING and (holder := self.running_elsewhere(job_id)) is not None:
                raise Conflict(f"job {job_id} is running in {holder}")
            row.state, row.runner, row.error, row.updated_at = QUEUED, "", "", _now()
            return _status(row)

    # -- chunks and failures ----------------------------------------------------------------
    def committed(self, job_id: str) -> dict[int, CommittedChunk]:
        query = select(JobChunkRow).where(JobChunkRow.job_id == job_id).order_by(JobChunkRow.chunk)
        with self.database.session() as session:
            return {
                row.chunk: CommittedChunk(row.chunk, row.items, row.rows, row.part)
                for row in session.scalars(query)
            }

    def commit_chunk(
        self,
        job_id: str,
        chunk: int,
        *,
        items: int,
        scored: int,
        rows: int,
        part: str,
        failures: Sequence[ItemFailure],
        busy_s: float,
        lease: Lease | None = None,
    ) -> None:
        """The chunk, its failures and the job's counters, in one transaction (fenced by ``lease``:
        :class:`LeaseLost` when another runner has taken the job over)."""
        now = _now()
        with self.database.session() as session, session.begin():
            if lease is not None:
                self.leases.fence(session.connection(), lease)
            session.add(
                JobChunkRow(
                    job_id=job_id,
                    chunk=chunk,
                    items=items,
                    scored=scored,
                    failed=len(failures),
                    rows=rows,
                    part=part,
                    committed_at=now,
                )
            )
            for failure in failures:
                session.add(
                    JobFailureRow(
                        job_id=job_id,
                        item=failure.index,
                        locator=failure.locator[:256],
                        reason=failure.reason[:2000],
                    )
                )
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(
                    items_done=JobRow.items_done + scored,
                    items_failed=JobRow.items_failed + len(failures),
                    chunks_done=JobRow.chunks_done + 1,
                    busy_s=JobRow.busy_s + max(0.0, busy_s),
                    updated_at=now,
                    error="",
                    state=RUNNING,
                )
            )

    def failures(self, job_id: str, *, offset: int = 0, limit: int = 1000) -> list[ItemFailure]:
        query = (
            select(JobFailureRow)
            .where(JobFailureRow.job_id == job_id)
            .order_by(JobFailureRow.item)
            .offset(offset)
            .limit(limit)
        )
        with self.database.session() as session:
            return [ItemFailure(int(row.item), row.locator, row.reason) for row in session.scalars(query)]

    def iter_failures(self, job_id: str, page: int = 5000) -> Iterator[ItemFailure]:
        offset = 0
        while batch := self.failures(job_id, offset=offset, limit=page):
            yield from batch
            offset += len(batch)

    def failure_count(self, job_id: str) -> int:
        with self.database.session() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(JobFailureRow).where(JobFailureRow.job_id == job_id)
                )
                or 0
            )
