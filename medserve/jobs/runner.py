"""Runs one job: stream the source, featurise and score chunk by chunk, commit each chunk, then write
the sink. Blocking; runs in a worker thread (server) or the main thread (``medserve job run``).

Exactly once: chunk ``k`` holds the items with ``k * chunk_size <= index < (k + 1) * chunk_size``.
Its result rows go to ``parts/chunk-<k>.parquet`` (atomic rename), then one transaction records the
chunk, its failures and the counters. A chunk without a record is done again on resume and its part
file overwritten with the same rows, so a job killed at any moment loses nothing and writes nothing
twice. The sink is assembled from the parts when every chunk is in, atomically, and may be assembled
again after a crash. The runner works under the job's lease: every commit is fenced by it, and when
the lease is lost (this process stalled past its expiry and another replica took the job over) the
runner stops without touching the job. When the disk is full the job pauses, says why, and tries the
same write again every ``retry_s`` until it fits.
"""

from __future__ import annotations

import csv
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa

from medserve.explanations.service import DEFAULT_MAX_PERTURBATIONS
from medserve.jobs import sinks
from medserve.jobs.explain_columns import ExplainColumns
from medserve.jobs.scoring import CoreScorer
from medserve.jobs.spec import GENERIC_SINKS, JobSpec
from medserve.jobs.store import CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED, JobStore
from medserve.jobs.workload import Item, ItemFailure, Workload
from medserve.store.leases import Lease, LeaseLost
from medserve.values.errors import MedserveError

log = logging.getLogger("medserve.jobs")

T = TypeVar("T")


class Scorer(Protocol):
    """Runs the job's model on one chunk's inputs (it splits them into batches itself)."""

    batch_size: int

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Future[dict[str, np.ndarray]]: ...


@dataclass
class _Pending:
    """A chunk featurised and submitted, not yet committed."""

    chunk: int
    items: int
    failures: list[ItemFailure]
    kept: list[Item] = field(default_factory=list)
    outputs: Future[dict[str, np.ndarray]] | None = None
    table: pa.Table | None = None
    scored: int = 0
    inputs: dict[str, np.ndarray] | None = None  # kept for the explain option's columns


@dataclass(frozen=True)
class Progress:
    job_id: str
    items_done: int
    items_failed: int
    items_seen: int
    items_total: int | None
    elapsed_s: float
    state: str


#: What :meth:`JobRunner.run` returns when the job's lease was lost: another runner goes on with it.
LOST = "lost"


class Stopped(Exception):
    """The runner was asked to stop (shutdown) or the job to cancel."""


def part_name(chunk: int) -> str:
    return f"chunk-{chunk:08d}.parquet"


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        spec: JobSpec,
        workload: Workload,
        scorer: Scorer,
        parts_dir: Path,
        *,
        stop: threading.Event | None = None,
        retry_s: float = 30.0,
        progress: Callable[[Progress], None] | None = None,
        stopped: tuple[str, str] = (QUEUED, ""),
        lease: Lease | None = None,
        lease_lost: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.workload = workload
        self.scorer = scorer
        self.parts_dir = parts_dir
        self.stop = stop or threading.Event()
        self.retry_s = retry_s
        self.progress = progress
        self.stopped = stopped  # the state (and note) a job stopped by ``stop`` is left in
        self.lease = lease  # fences every commit
        self.lease_lost = lease_lost or (lambda: False)  # the heartbeat found the lease taken over
        self._started = time.monotonic()
        self._done = 0
        self._failed = 0
        self._seen = 0
        self._total: int | None = None
        self._last_commit = time.monotonic()
        self._explain: ExplainColumns | None = None  # the spec's explain option, made at the first chunk

    # -- the whole job ------------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end, a cancel or a stop; return the job's state afterwards (after a stop,
        ``stopped``'s state: ``queued`` for a server shutting down, so the next start resumes it)."""
        try:
            try:
                self._run_chunks()
                self._finish()
            except Stopped:
                if self.store.cancel_requested(self.job_id):
                    self._set(CANCELLED, error="cancelled on request")
                    shutil.rmtree(self.parts_dir, ignore_errors=True)
                    return CANCELLED
                state, note = self.stopped
                self._set(state, error=note, runner="")
                return state
            except LeaseLost:
                raise
            except MedserveError as exc:
                log.warning("job %s failed: %s", self.job_id, exc)
                self._set(FAILED, error=str(exc))
                return FAILED
            except (
                Exception
            ) as exc:  # a bug or an engine fault: the job fails with the reason, the server stays
                log.exception("job %s failed", self.job_id)
                self._set(FAILED, error=f"{type(exc).__name__}: {exc}")
                return FAILED
        except LeaseLost as exc:  # another runner has the job: leave the row and the parts to it
            log.warning("job %s stopped here: %s", self.job_id, exc)
            return LOST
        return SUCCEEDED

    def _set(self, state: str, *, error: str = "", runner: str | None = None) -> None:
        self.store.set_state(self.job_id, state, error=error, runner=runner, lease=self.lease)

    def _check(self) -> None:
        if self.lease_lost():
            raise LeaseLost(f"the lease on job {self.job_id} was lost to another runner")
        if self.stop.is_set() or self.store.cancel_requested(self.job_id):
            raise Stopped

    def _run_chunks(self) -> None:
        committed = self.store.committed(self.job_id)
        status = self.store.get(self.job_id)
        self._done, self._failed = status.items_done, status.items_failed
        self._total = status.items_total
        self._last_commit = time.monotonic()
        size = self.spec.chunk_size
        chunk: int | None = None
        buffer: list[Item | ItemFailure] = []
        pending: _Pending | None = None
        seen = 0
        for entry in self.workload.items():
            seen += 1  # entries, not the last index: a workload's indices may skip (history-only rows)
            self._seen = seen
            k = entry.index // size
            if k != chunk:
                if chunk is not None and buffer:
                    pending = self._next(pending, self._start(chunk, buffer))
                buffer = []
                chunk = k
                self._check()
            if k not in committed:
                buffer.append(entry)
        if chunk is not None and buffer:
            pending = self._next(pending, self._start(chunk, buffer))
        self._next(pending, None)
        self._check()
        if self._total != seen:
            self._total = seen
            self.store.set_total(self.job_id, seen)

    # -- one chunk ------------------------------------------------------------------------------
    def _next(self, pending: _Pending | None, started: _Pending | None) -> _Pending | None:
        """Commit the chunk in flight (its successor is already featurised and submitted, so the
        model works on one while the runner reads and featurises the next)."""
        if pending is not None:
            self._complete(pending)
        return started

    def _start(self, chunk: int, entries: list[Item | ItemFailure]) -> _Pending:
        """Featurise a chunk and submit it to the model (or run a pipeline workload's chunk)."""
        items = [e for e in entries if isinstance(e, Item)]
        pending = _Pending(chunk, len(entries), [e for e in entries if isinstance(e, ItemFailure)])
        run_chunk = getattr(self.workload, "run_chunk", None)
        if items and run_chunk is not None:  # a pipeline workload calls its models itself
            pending.table, unusable = run_chunk(items, self.scorer, self._with_room)
            pending.failures.extend(unusable)
            pending.scored = len(items) - len(unusable)
        elif items:
            inputs, kept, unusable = self.workload.featurise(items)
            pending.failures.extend(unusable)
            if kept:
                pending.kept = kept
                pending.outputs = self.scorer.submit(inputs)
                if self.spec.explain is not None:
                    pending.inputs = dict(inputs)
        return pending

    def _complete(self, pending: _Pending) -> None:
        """Wait for the chunk's outputs, write its part file, then commit it with its failures."""
        table = pending.table
        if pending.outputs is not None:
            table = self.workload.rows(pending.kept, pending.outputs.result())
            pending.scored = len(pending.kept)
            if pending.inputs is not None and isinstance(self.scorer, CoreScorer):
                if self._explain is None:
                    self._explain = ExplainColumns(
                        self.spec.explain or {}, self.scorer, DEFAULT_MAX_PERTURBATIONS
                    )
                table = self._explain.add(table, pending.kept, pending.inputs)
        chunk = pending.chunk
        part = ""
        if table is not None and table.num_rows:
            part = part_name(chunk)
            path = self.parts_dir / part
            self._with_room(lambda: sinks.write_part(path, table), f"writing results of chunk {chunk}")
        failures = sorted(pending.failures, key=lambda f: f.index)
        now = time.monotonic()
        self.store.commit_chunk(
            self.job_id,
            chunk,
            items=pending.items,
            scored=pending.scored,
            rows=0 if table is None else table.num_rows,
            part=part,
            failures=failures,
            busy_s=now - self._last_commit,
            lease=self.lease,
        )
        self._last_commit = now
        self._done += pending.scored
        self._failed += len(failures)
        self._report(RUNNING)

    def _with_room(self, write: Callable[[], T], what: str) -> T:
        """Run ``write`` and return its value; while the disk is full, pause the job and try again
        every ``retry_s``."""
        paused = False
        while True:
            try:
                value = write()
            except OSError as exc:
                if not sinks.is_no_space(exc):
                    raise
                message = (
                    f"paused: no space left while {what} ({exc.strerror}); retrying every {self.retry_s:g} s"
                )
                if not paused:
                    log.warning("job %s %s", self.job_id, message)
                    self._set(PAUSED, error=message)
                    self._report(PAUSED)
                    paused = True
                if self.stop.wait(self.retry_s) or self.store.cancel_requested(self.job_id):
                    raise Stopped from None
                continue
            if paused:
                log.info("job %s resumed: %s succeeded", self.job_id, what)
                self._set(RUNNING)
            return value

    # -- the sink -------------------------------------------------------------------------------
    def _finish(self) -> None:
        committed = self.store.committed(self.job_id)
        parts = [self.parts_dir / c.part for _, c in sorted(committed.items()) if c.part]
        sink = self.spec.sink
        sink_format = sink.resolved_format()
        self._with_room(lambda: self._write_sink(parts, sink_format), f"writing the sink {sink.path}")
        self._with_room(self._write_failures, "writing the failure list")
        self._set(SUCCEEDED)
        self._report(SUCCEEDED)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        log.info(
            "job %s succeeded: %d scored, %d failed, results in %s",
            self.job_id,
            self._done,
            self._failed,
            sink.path,
        )

    def _write_sink(self, parts: list[Path], sink_format: str) -> None:
        sink = self.spec.sink
        with sinks.atomic_path(sink.path) as temporary:
            written = False
            if sink_format not in GENERIC_SINKS:
                written = self.workload.write_sink(
                    sinks.read_parts(parts), sink_format, temporary, self.spec.options
                )
                if not written:
                    raise MedserveError(
                        f"workload '{self.spec.workload}' cannot write sink format '{sink_format}'; "
                        f"use one of {', '.join(GENERIC_SINKS)}"
                    )
            else:
                rank = self.workload.rank_by
                if sink.rank_by is not None:
                    rank = (sink.rank_by, True if sink.descending is None else sink.descending)
                elif rank is not None and sink.descending is not None:
                    rank = (rank[0], sink.descending)
                sinks.write_generic(
                    sinks.read_parts(parts), sink_format, temporary, top_k=sink.top_k, rank_by=rank
                )

    def _write_failures(self) -> None:
        path = failures_path(self.spec)
        if self._failed == 0 and self.store.failure_count(self.job_id) == 0:
            path.unlink(missing_ok=True)
            return
        with (
            sinks.atomic_path(path) as temporary,
            temporary.open("w", newline="", encoding="utf-8") as handle,
        ):
            writer = csv.writer(handle)
            writer.writerow(["index", "locator", "reason"])
            for failure in self.store.iter_failures(self.job_id):
                writer.writerow([failure.index, failure.locator, failure.reason])

    def _report(self, state: str) -> None:
        if self.progress is not None:
            self.progress(
                Progress(
                    self.job_id,
                    self._done,
                    self._failed,
                    self._seen,
                    self._total,
                    time.monotonic() - self._started,
                    state,
                )
            )


def failures_path(spec: JobSpec) -> Path:
    """Where the failure list goes: beside the sink, ``<sink name>.failures.csv``."""
    return spec.sink.path.with_name(spec.sink.path.name + ".failures.csv")
