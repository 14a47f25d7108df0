"""``medserve job run SPEC.yaml``: a job in the foreground, without a server (a laptop, a batch node).

The same core runs it, built by the same builder as the server's (``core.dataplane``): the models are
loaded through ``InferenceService`` under the job's caller (each load audited as ``model.load``),
requests go through it too (so every batch is audited), the same runner commits chunks to the same
store.
Running the same spec again resumes the unfinished job it left (found by the spec's digest); Ctrl-C
stops after the current chunk and leaves the job ``interrupted``, ready to resume.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from contextlib import suppress
from typing import Any, TextIO

from medserve.core.dataplane import build_dataplane
from medserve.jobs.manager import job_caller
from medserve.jobs.prepare import models_of, prepare
from medserve.jobs.runner import JobRunner, Progress
from medserve.jobs.scoring import CoreScorer, default_batch_size
from medserve.jobs.spec import JobSpec
from medserve.jobs.store import (
    FAILED,
    INTERRUPTED,
    LEASE_KIND,
    SUCCEEDED,
    UNFINISHED,
    JobStatus,
    JobStore,
    runner_name,
)
from medserve.settings import Settings
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import Lease, LeaseBook
from medserve.trust import build_trust
from medserve.values.errors import Conflict


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressBar:
    """One line on a terminal, rewritten in place: done/total, items/s, failures, ETA."""

    def __init__(self, out: TextIO, *, start_done: int = 0, every_s: float = 0.5) -> None:
        self.out = out
        self.tty = out.isatty()
        self.start_done = start_done
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.state not in ("running",)
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        handled = progress.items_done + progress.items_failed
        rate = (handled - self.start_done) / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        total = progress.items_total
        eta = (total - handled) / rate if total and rate > 0 else None
        if total:
            width = 30
            filled = min(width, int(width * handled / total))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {handled}/{total}"
        else:
            bar = f"{handled} items"
        line = (
            f"{bar}  {rate:,.0f} items/s  failed {progress.items_failed}  "
            f"ETA {_duration(eta)}  {progress.state}"
        )
        self.out.write(("\r" + line + " " * 4) if self.tty else line + "\n")
        if final and self.tty:
            self.out.write("\n")
        self.out.flush()


#: The lease of a stand-alone run: short, so a run killed -9 can be resumed seconds later.
STANDALONE_LEASE_S = 5.0


def _claim(store: JobStore, job_id: str, out: TextIO) -> tuple[JobStatus, Lease]:
    """Claim the job; while another runner's lease is live, wait up to twice a stand-alone lease (a
    run killed a moment ago stops renewing; a live one renews and the claim is refused)."""
    deadline = time.monotonic() + 2 * STANDALONE_LEASE_S
    said = False
    while True:
        try:
            return store.claim(job_id, store.leases.holder, allowed=(*UNFINISHED, FAILED, INTERRUPTED))
        except Conflict as exc:
            holder = store.running_elsewhere(job_id)
            if holder is None or time.monotonic() > deadline:
                raise
            if not said:
                out.write(f"{exc}; waiting for its lease to expire\n")
                said = True
            time.sleep(0.5)


def run_standalone(
    settings: Settings,
    spec: JobSpec,
    *,
    out: TextIO = sys.stderr,
    count_first: bool = True,
    install_signals: bool = True,
) -> tuple[str, str]:
    """Run (or resume) ``spec`` here; returns ``(job id, final state)``."""
    trust = build_trust(settings)
    store = JobStore(
        trust.database, LeaseBook(trust.database, runner_name("standalone"), ttl_s=STANDALONE_LEASE_S)
    )
    try:
        dataplane = build_dataplane(settings, trust, placement=False, monitoring=False)
        service = dataplane.service
        spec, workload = prepare(spec, service.require_in_repository)
        existing = store.unfinished_with_digest(spec.digest())
        if existing is not None:
            status = existing
            out.write(
                f"resuming job {status.id} ({status.state}): {status.items_done} scored, "
                f"{status.items_failed} failed so far\n"
            )
        else:
            status = store.create(spec, spec.model, "standalone")
            out.write(f"job {status.id}: {spec.workload} over {spec.source} -> {spec.sink.path}\n")
        status, lease = _claim(store, status.id, out)
        keeper = LeaseKeeper(store.leases)
        keeper.keep(lease)
        keeper.start()
        if count_first and status.items_total is None:
            total = sum(1 for _ in workload.items())
            store.set_total(status.id, total)
            status = store.get(status.id)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="medserve-job-loop", daemon=True)
        thread.start()
        stop = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        caller = job_caller(status)
        try:
            for model in models_of(spec, workload):
                asyncio.run_coroutine_threadsafe(service.load_model(model, caller), loop).result()
            scorer = CoreScorer(
                service,
                loop,
                caller,
                spec.model,
                version=spec.version,
                batch_size=spec.batch_size or default_batch_size(service, caller, spec.model, spec.version)
                if spec.model
                else 1,
                priority_class=settings.jobs_class(),
            )
            runner = JobRunner(
                store,
                status.id,
                spec,
                workload,
                scorer,
                settings.data_dir / "jobs" / status.id / "parts",
                stop=stop,
                retry_s=settings.jobs_retry_s,
                progress=ProgressBar(out, start_done=status.items_done + status.items_failed),
                stopped=(INTERRUPTED, "interrupted; run the same spec again to resume"),
                lease=lease,
                lease_lost=lambda: keeper.lost(LEASE_KIND, status.id),
            )
            state = runner.run()
        finally:
            keeper.stop()
            keeper.release(LEASE_KIND, status.id)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(dataplane.close(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        final = store.get(status.id)
        if state == SUCCEEDED:
            out.write(
                f"job {status.id} succeeded: {final.items_done} scored, {final.items_failed} failed, "
                f"results in {spec.sink.path}\n"
            )
        elif state == FAILED:
            out.write(f"job {status.id} failed: {final.error}\n")
        else:
            out.write(f"job {status.id} {state}\n")
        return status.id, state
    finally:
        trust.close()
