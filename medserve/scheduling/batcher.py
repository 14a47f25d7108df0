"""The dynamic batcher of one model version: a bounded priority queue in front of its instance pool.

Requests are ordered by urgency (:func:`medserve.scheduling.slo.urgency`): strict precedence across
priority classes, earliest deadline first within one. When an instance is free, the most urgent request
and compatible ones behind it form a batch (:func:`~medserve.scheduling.slo.select_urgent_batch`, which
keeps the batch small enough for its members' deadlines), which goes at once when full (max batch size,
or the largest preferred size) or when the head request has waited ``max_queue_delay`` (sooner if a
member's deadline needs it). Merging, running and splitting happen on the instance's worker thread, so
the event loop only moves references.

Admission: a request with a deadline is refused at once (``Overloaded`` with ``retry_after_s``) when the
work queued ahead of it, at the measured service times, would make it miss a deadline it could meet
alone; before any measurement every request is admitted. The queue holds at most ``max_queue_size``
requests: when full, a request of a lower class than the newcomer is shed to make room, else the
newcomer is refused. A request whose deadline passes while queued is dropped with ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medserve.core.errors import DeadlineExceeded, InferenceFailed, MedserveError, Overloaded
from medserve.runtimes.base import Runtime
from medserve.scheduling.batching import BatchKey, batch_is_full, batch_key, merge, split
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass
from medserve.scheduling.slo import (
    ServiceTimes,
    Urgency,
    estimate_completion_ns,
    latest_start_ns,
    retry_after_s,
    select_urgent_batch,
    urgency,
)


@dataclass(slots=True)
class ExecutionTimes:
    """One engine execution: its batch size and where its time went (nanoseconds)."""

    batch_size: int
    input_ns: int
    infer_ns: int
    output_ns: int

    @property
    def total_ns(self) -> int:
        return self.input_ns + self.infer_ns + self.output_ns


@dataclass(slots=True)
class ScheduledResult:
    outputs: dict[str, np.ndarray]
    queue_ns: int
    execution: ExecutionTimes


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    size: int
    key: BatchKey
    enqueued_ns: int
    future: asyncio.Future[ScheduledResult] = field(repr=False)
    request_class: PriorityClass
    deadline_ns: int | None
    order: Urgency
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def priority(self) -> int:
        return self.request_class.priority


def _order(pending: _Pending) -> Urgency:
    return pending.order


ExecutionListener = Callable[[ExecutionTimes], None]


class DynamicBatcher:
    """Queues requests for one model version and runs them, batched when ``batching`` is on."""

    def __init__(
        self,
        pool: InstancePool,
        output_names: list[str],
        *,
        batching: bool,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        on_execution: ExecutionListener | None = None,
        max_queue_size: int | None = None,
        label: str = "model",
        service_times: ServiceTimes | None = None,
    ) -> None:
        self.pool = pool
        self.output_names = output_names
        self.batching = batching
        self.max_batch_size = max(max_batch_size, 1)
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.preferred = list(preferred_batch_sizes)
        self.max_queue_size = max_queue_size
        self.label = label
        self.service_times = service_times if service_times is not None else ServiceTimes()
        self._on_execution = on_execution
        self._queue: list[_Pending] = []  # sorted by urgency, most urgent first
        self._seq = itertools.count()
        self._by_class: dict[str, int] = {}
        self._inflight: dict[int, tuple[int, int]] = {}  # execution token -> (start ns, batch size)
        self._tokens = itertools.count()
        self._arrival = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    def queue_depth(self, class_name: str | None = None) -> int:
        """Requests waiting, in all classes or in the class named ``class_name``."""
        if class_name is None:
            return len(self._queue)
        return self._by_class.get(class_name, 0)

    # -- admission ----------------------------------------------------------------------------
    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        size: int,
        *,
        request_class: PriorityClass | None = None,
        deadline_ns: int | None = None,
    ) -> ScheduledResult:
        """Queue a request of batch size ``size`` and wait for its outputs.

        ``request_class`` (default: the default class, without its deadline) orders it against other
        requests; ``deadline_ns`` (``time.perf_counter_ns`` time) is when it must be done. Raises
        ``Overloaded`` when it is refused or shed, ``DeadlineExceeded`` when its deadline passes first.
        """
        if self._closing:
            raise Overloaded("model version is being unloaded")
        cls = request_class if request_class is not None else DEFAULT_CLASSES.default
        now = time.perf_counter_ns()
        if deadline_ns is not None and deadline_ns <= now:
            raise DeadlineExceeded(
                f"{self.label}: the deadline of this '{cls.name}' request passed before it was queued"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScheduledResult] = loop.create_future()
        order = urgency(cls.priority, deadline_ns, next(self._seq))
        pending = _Pending(inputs, size, batch_key(inputs), now, future, cls, deadline_ns, order)
        self._admit(pending, now)
        self._make_room(pending)
        bisect.insort(self._queue, pending, key=_order)
        self._by_class[cls.name] = self._by_class.get(cls.name, 0) + 1
        if deadline_ns is not None:
            pending.timer = loop.call_later((deadline_ns - now) / 1e9, self._expire, pending)
        self._arrival.set()
        return await future

    def _busy_ns(self, now: int) -> list[int]:
        """The estimated remaining time of each running execution."""
        estimate = self.service_times.estimate_ns
        return [max(0, (estimate(size) or 0) - (now - start)) for start, size in self._inflight.values()]

    def _completion_ns(self, pending: _Pending, ahead: int, now: int) -> int | None:
        """Estimated time until ``pending`` completes behind the first ``ahead`` queued requests."""
        return estimate_completion_ns(
            ((p.key, p.size) for p in itertools.islice(self._queue, ahead)),
            (pending.key, pending.size),
            batching=self.batching,
            max_batch_size=self.max_batch_size,
            busy_ns=self._busy_ns(now),
            instances=len(self.pool),
            estimate=self.service_times.estimate_ns,
        )

    def _admit(self, pending: _Pending, now: int) -> None:
        """Refuse ``pending`` now if, at the measured service times, it would miss its deadline."""
        if pending.deadline_ns is None or not self.service_times.measured:
            return
        budget = pending.deadline_ns - now
        alone = self.service_times.estimate_ns(pending.size)
        if alone is not None and alone > budget:
            return  # it misses even on an idle server: refusing helps nobody, so it runs as soon as it can
        ahead = bisect.bisect_left(self._queue, pending.order, key=_order)
        completion = self._completion_ns(pending, ahead, now)
        retry = None if completion is None else retry_after_s(completion, budget)
        if completion is None or retry is None:
            return
        raise Overloaded(
            f"{self.label} is saturated: this '{pending.request_class.name}' request has "
            f"{budget / 1e6:.0f} ms left of its deadline but would complete in about "
            f"{completion / 1e6:.0f} ms ({ahead} request(s) of equal or higher urgency queued ahead, "
            f"{len(self._inflight)} execution(s) running); retry after {retry:.0f} s or with a more "
            "urgent class",
            retry,
        )

    def _make_room(self, pending: _Pending) -> None:
        """Keep the queue within its bound: shed a request of a lower class, or refuse ``pending``."""
        if self.max_queue_size is None or len(self._queue) < self.max_queue_size:
            return
        last = self._queue[-1]
        completion = self._completion_ns(pending, len(self._queue), time.perf_counter_ns())
        retry = max(1.0, completion / 2e9) if completion is not None else 1.0
        if last.priority > pending.priority:
            self._remove(len(self._queue) - 1)
            if not last.future.done():
                last.future.set_exception(
                    Overloaded(
                        f"{self.label}: queue full ({len(self._queue) + 1} requests); this "
                        f"'{last.request_class.name}' request was shed for a more urgent "
                        f"'{pending.request_class.name}' one; retry after {retry:.0f} s",
                        retry,
                    )
                )
            return
        raise Overloaded(
            f"{self.label}: queue full ({len(self._queue)} requests waiting, at most "
            f"{self.max_queue_size}) for this '{pending.request_class.name}' request; "
            f"retry after {retry:.0f} s",
            retry,
        )

    # -- the queue ------------------------------------------------------------------------------
    def _remove(self, index: int) -> _Pending:
        pending = self._queue.pop(index)
        self._by_class[pending.request_class.name] -= 1
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return pending

    def _expire(self, pending: _Pending) -> None:
        """Timer: drop ``pending`` if it is still queued when its deadline passes."""
        pending.timer = None
        index = bisect.bisect_left(self._queue, pending.order, key=_order)
        if index < len(self._queue) and self._queue[index] is pending:
            self._remove(index)
            self._fail_expired(pending, index)

    def _fail_expired(self, pending: _Pending, ahead: int) -> None:
        if pending.future.done():
            return
        waited_ms = (time.perf_counter_ns() - pending.enqueued_ns) / 1e6
        pending.future.set_exception(
            DeadlineExceeded(
                f"{self.label}: the deadline of this '{pending.request_class.name}' request passed "
                f"after {waited_ms:.0f} ms in the queue ({ahead} more urgent request(s) still ahead); "
                "it was not run"
            )
        )

    def _purge(self, now: int) -> None:
        """Drop requests whose caller has gone and those whose deadline has passed."""
        index = 0
        while index < len(self._queue):
            pending = self._queue[index]
            if pending.future.done():
                self._remove(index)
            elif pending.deadline_ns is not None and pending.deadline_ns <= now:
                self._remove(index)
                self._fail_expired(pending, index)
            else:
                index += 1

    async def _wait_for_arrival(self, timeout_ns: int | None) -> None:
        self._arrival.clear()
        if timeout_ns is None:
            await self._arrival.wait()
            return
        if timeout_ns <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrival.wait(), timeout_ns / 1e9)

    def _select(self, now: int) -> list[int]:
        if not self.batching:
            return [0]
        return select_urgent_batch(self._queue, self.max_batch_size, now, self.service_times.estimate_ns)

    async def _next_batch(self) -> list[_Pending]:
        while True:
            now = time.perf_counter_ns()
            self._purge(now)
            if not self._queue:
                await self._wait_for_arrival(None)
                continue
            chosen = self._select(now)
            if self.batching and self.max_queue_delay_ns > 0:
                members = [self._queue[i] for i in chosen]
                queued = sum(p.size for p in members)
                if not batch_is_full(queued, self.max_batch_size, self.preferred):
                    until = members[0].enqueued_ns + self.max_queue_delay_ns
                    latest = latest_start_ns(
                        (p.deadline_ns for p in members), self.service_times.estimate_ns(queued), now
                    )
                    if latest is not None:
                        until = min(until, latest)
                    if until > now:
                        await self._wait_for_arrival(until - now)
                        continue
            return [self._remove(index) for index in reversed(chosen)][::-1]

    async def _dispatch_loop(self) -> None:
        while True:
            instance = await self.pool.acquire()
            try:
                batch = await self._next_batch()
            except asyncio.CancelledError:
                self.pool.release(instance)
                raise
            task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, instance: Runtime, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        token = next(self._tokens)
        self._inflight[token] = (started, sum(p.size for p in batch))
        executions: list[ExecutionTimes] = []
        try:
            results = await self.pool.call(lambda: self._run_batch(instance, batch, executions))
        except BaseException as exc:  # delivered to every waiting request, never lost
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            del self._inflight[token]
            self.pool.release(instance)
        for execution in executions:
            self.service_times.observe(execution.batch_size, execution.total_ns)
            if self._on_execution is not None:
                self._on_execution(execution)
        for pending, result in zip(batch, results):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                outputs, execution = result
                pending.future.set_result(ScheduledResult(outputs, started - pending.enqueued_ns, execution))

    def _run_batch(
        self, instance: Runtime, batch: list[_Pending], executions: list[ExecutionTimes]
    ) -> list[tuple[dict[str, np.ndarray], ExecutionTimes] | MedserveError]:
        """Worker thread: merge, run, split. A failing batch is retried request by request, so
        one bad request fails alone."""
        try:
            return list(self._run_once(instance, batch, executions))
        except MedserveError as exc:
            if len(batch) == 1:
                return [exc]
        results: list[tuple[dict[str, np.ndarray], ExecutionTimes] | MedserveError] = []
        for pending in batch:
            try:
                results.extend(self._run_once(instance, [pending], executions))
            except MedserveError as exc:
                results.append(exc)
        return results

    def _run_once(
        self, instance: Runtime, batch: list[_Pending], executions: list[ExecutionTimes]
    ) -> list[tuple[dict[str, np.ndarray], ExecutionTimes]]:
        t0 = time.perf_counter_ns()
        merged = merge([p.inputs for p in batch])
        t1 = time.perf_counter_ns()
        outputs = instance.run(merged, self.output_names)
        t2 = time.perf_counter_ns()
        sizes = [p.size for p in batch]
        try:
            parts = split(outputs, sizes) if self.batching else [outputs]
        except ValueError as exc:
            raise InferenceFailed(str(exc)) from None
        t3 = time.perf_counter_ns()
        execution = ExecutionTimes(sum(sizes), t1 - t0, t2 - t1, t3 - t2)
        executions.append(execution)
        return [(part, execution) for part in parts]

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, finish the queued and running ones, then stop."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        while self._queue:
            pending = self._remove(len(self._queue) - 1)
            if not pending.future.done():
                pending.future.set_exception(Overloaded("model version was unloaded"))
        await self.pool.call(lambda: None)
