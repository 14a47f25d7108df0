"""Jobs inside the server: accept them (REST or CLI, through the store), run up to
``jobs_concurrency`` at once in worker threads, resume those a crash interrupted, stop them cleanly.

Jobs share the models with real-time traffic: their requests go through the same batchers in the
least urgent priority class, so a STAT request overtakes every queued job batch. The store is the
queue: ``medserve job submit`` on the same host writes a queued job that the server picks up within
``jobs_poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medserve.core.service import InferenceService
from medserve.jobs.prepare import prepare
from medserve.jobs.runner import JobRunner, failures_path
from medserve.jobs.scoring import CoreScorer, default_batch_size
from medserve.jobs.spec import JobSpec
from medserve.jobs.store import FAILED, LEASE_KIND, SUCCEEDED, JobStatus, JobStore
from medserve.jobs.workload import ItemFailure
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import Lease
from medserve.values.access import Action, Caller, Principal, Role
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError

log = logging.getLogger("medserve.jobs")


@dataclass(frozen=True)
class JobSettings:
    jobs_dir: Path  # parts of running jobs: <jobs_dir>/<id>/parts
    concurrency: int = 1
    priority_class: str = "bulk"
    poll_s: float = 2.0
    retry_s: float = 30.0


def job_caller(status: JobStatus) -> Caller:
    """The caller a job's inference requests carry: the submitter's name, door ``job:<id>``."""
    principal = Principal(status.submitted_by or "medserve", Role.ADMIN, None, f"job:{status.id}")
    return Caller(principal, f"job:{status.id}", status.id)


class JobManager:
    def __init__(self, service: InferenceService, store: JobStore, settings: JobSettings) -> None:
        self.service = service
        self.store = store
        self.settings = settings
        # shown as the job's runner; the lease names the replica
        self.runner = f"server:{store.leases.holder}"
        self.keeper = LeaseKeeper(store.leases)
        self._stop = threading.Event()
        self._running: dict[str, asyncio.Task[str]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- the API every door uses -----------------------------------------------------------------
    async def submit(self, spec: JobSpec, caller: Caller) -> JobStatus:
        """Check and queue a job (``manage`` role: a job reads and writes files on the server)."""
        caller.principal.require(Action.MANAGE)
        spec, _ = await asyncio.to_thread(prepare, spec, self._model_loaded(caller))
        status = await asyncio.to_thread(self.store.create, spec, spec.model, caller.principal.name)
        await self._audit(caller, status, "job.submit")
        self._wake.set()
        return status

    async def _audit(self, caller: Caller, status: JobStatus, event: str) -> None:
        await self.service.record(
            AuditEvent(
                event=event,
                principal=caller.principal.name,
                door=caller.door,
                model=status.model,
                request_id=status.id,
                status="ok",
                detail=f"{status.workload} job {status.id}: {status.state}",
            )
        )

    def _model_loaded(self, caller: Caller) -> Callable[[str], None]:
        """For ``prepare``: raises ``ModelNotFound`` for a model that is not loaded."""

        def check(model: str) -> None:
            self.service.model_info(model, caller)

        return check

    async def status(self, job_id: str, caller: Caller) -> JobStatus:
        caller.principal.require(Action.READ)
        return await asyncio.to_thread(self.store.get, job_id)

    async def recent(self, caller: Caller, limit: int = 100) -> list[JobStatus]:
        caller.principal.require(Action.READ)
        return await asyncio.to_thread(self.store.recent, limit)

    async def cancel(self, job_id: str, caller: Caller) -> JobStatus:
        caller.principal.require(Action.MANAGE)
        status = await asyncio.to_thread(self.store.request_cancel, job_id)
        await self._audit(caller, status, "job.cancel")
        return status

    async def resume(self, job_id: str, caller: Caller) -> JobStatus:
        """Queue a failed or interrupted job again (as ``medserve job resume``); the server resumes it
        from its last committed chunk (``manage`` role)."""
        caller.principal.require(Action.MANAGE)
        status = await asyncio.to_thread(self.store.requeue, job_id)
        await self._audit(caller, status, "job.resume")
        self._wake.set()
        return status

    async def failures(self, job_id: str, caller: Caller, offset: int, limit: int) -> list[ItemFailure]:
        caller.principal.require(Action.READ)
        await asyncio.to_thread(self.store.get, job_id)
        return await asyncio.to_thread(self.store.failures, job_id, offset=offset, limit=limit)

    async def results(self, job_id: str, caller: Caller) -> tuple[JobStatus, Path, Path | None]:
        """The finished job, its sink file and its failure list (if any)."""
        caller.principal.require(Action.READ)
        status = await asyncio.to_thread(self.store.get, job_id)
        spec = await asyncio.to_thread(self.store.spec, job_id)
        failures = failures_path(spec)
        return status, spec.sink.path, failures if failures.exists() else None

    # -- running ----------------------------------------------------------------------------------
    async def start(self) -> None:
        # Jobs this replica ran before a restart (the server gave their leases up as it started) and
        # those of a replica that died (their leases expire) are resumed by the poll.
        interrupted = await asyncio.to_thread(self.store.interrupted, self.runner)
        if interrupted:
            log.info(
                "resuming %d job(s) interrupted by a restart: %s", len(interrupted), ", ".join(interrupted)
            )
        self.keeper.start()
        if self.settings.concurrency > 0:
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                while len(self._running) < self.settings.concurrency:
                    claimed = await asyncio.to_thread(self.store.claim_next, self.runner)
                    if claimed is None:
                        break
                    self._launch(*claimed)
            except MedserveError as exc:  # the store is unreachable for a moment: try again later
                log.warning("job queue: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    def _launch(self, status: JobStatus, lease: Lease) -> None:
        """Run a claimed job in a worker thread, its lease renewed by the heartbeat until it ends."""
        job_id = status.id
        self.keeper.keep(lease)
        task = asyncio.create_task(asyncio.to_thread(self._run, status, lease, asyncio.get_running_loop()))
        self._running[job_id] = task

        def done(_: asyncio.Task[str]) -> None:
            self._running.pop(job_id, None)
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self.keeper.release, LEASE_KIND, job_id)
            self._wake.set()

        task.add_done_callback(done)

    def _run(self, status: JobStatus, lease: Lease, loop: asyncio.AbstractEventLoop) -> str:
        """Worker thread: open the workload and run the job to its end (or a stop)."""
        caller = job_caller(status)
        try:
            spec = self.store.spec(status.id)
            spec, workload = prepare(spec, self._model_loaded(caller))
            scorer = CoreScorer(
                self.service,
                loop,
                caller,
                spec.model,
                version=spec.version,
                batch_size=spec.batch_size
                or default_batch_size(self.service, caller, spec.model, spec.version)
                if spec.model
                else 1,
                priority_class=self.settings.priority_class,
            )
        except MedserveError as exc:
            self.store.set_state(status.id, FAILED, error=str(exc), lease=lease)
            log.warning("job %s cannot start: %s", status.id, exc)
            return FAILED
        log.info("job %s (%s over %s) started", status.id, spec.workload, spec.source)
        runner = JobRunner(
            self.store,
            status.id,
            spec,
            workload,
            scorer,
            self.settings.jobs_dir / status.id / "parts",
            stop=self._stop,
            retry_s=self.settings.retry_s,
            lease=lease,
            lease_lost=lambda: self.keeper.lost(LEASE_KIND, status.id),
        )
        state = runner.run()
        if state == SUCCEEDED:
            log.info("job %s succeeded", status.id)
        return state

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs; running ones stop after their current chunk (queued again for the next
        start), waited for up to ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._running:
            done, pending = await asyncio.wait(list(self._running.values()), timeout=timeout_s)
            if pending:
                log.warning(
                    "%d job(s) still finishing a chunk at shutdown; they resume on restart", len(pending)
                )
        await asyncio.to_thread(self.keeper.stop)
