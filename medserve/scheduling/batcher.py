"""The dynamic batcher of one model version: a bounded priority queue in front of its instance pool.

Requests are ordered by urgency (:func:`medserve.scheduling.slo.urgency`): strict precedence across
priority classes, earliest deadline first within one. When an instance is free, the most urgent request
and compatible ones behind it form a batch (:func:`~medserve.scheduling.slo.select_urgent_batch`, which
keeps the batch small enough for its members' deadlines), which goes at once when full (max batch size,
or the largest preferred size) or when the head request has waited ``max_queue_delay`` (sooner if a
member's deadline needs it). Merging, running and splitting happen on the instance's worker thread, so
the event loop only moves references, except for an engine measured to take at most
:data:`INLINE_MAX_NS` for the batch's size (a tiny model): such a batch runs on the loop itself, where
the hop to a thread and back would cost more than the run. The engine's own time is measured on the
real clock in either place; its estimate falls at once to a faster run (a run on a thread may wait for
the interpreter) and rises towards slower ones, so a model that slows down goes back to the thread
within a few runs.

An execution is not interrupted, so while requests of a more urgent class have been arriving (within
the last 10 s) a batch headed by a less urgent one is kept short enough that such a request, arriving
just after it started, can still run alone within its deadline (the *reserve*); and a less urgent
request joins an urgent one's batch only when the urgent one keeps one lone execution of slack.

Admission: a request with a deadline is refused at once (``Overloaded`` with ``retry_after_s``) when the
work queued ahead of it, at the measured service times (stretched by the more urgent work arriving
meanwhile, at its recent rate), would make it miss a deadline it could meet alone; before any
measurement every request is admitted. Service times are measured as the event loop sees an execution
(the hop to the worker thread included). The queue holds at most ``max_queue_size``
requests: when full, a request of a lower class than the newcomer is shed to make room, else the
newcomer is refused. A request whose deadline passes while queued is dropped with ``DeadlineExceeded``;
one whose caller goes away (its awaiting task is cancelled: a client disconnected, a gRPC call was
cancelled) leaves the queue at once, before it runs. ``on_drop`` hears each request that left the
queue without running, with its reason (:data:`~medserve.scheduling.queue.DROP_REASONS`).

Across models: with an ``arbiter`` (:mod:`medserve.scheduling.arbiter`, one per registry) a batch
does not start on a device while another model has a more urgent request queued for it or executing on
it (for at most the arbiter's ``max_wait_s`` per batch).

Instances (:mod:`medserve.scheduling.pool`) may differ in device and batch limit: the batch is formed
for the instance that takes it. Device faults: when ``faults`` recognises an engine error as one (a
CUDA error, out of memory), a batch is not retried request by request on that instance; ``faults``
takes the device out of service and starts its replacement, and the batch's requests go back to the
queue, in their place by urgency, to be retried once on another instance. ``meter`` (optional) wraps
each engine run to attribute energy to it (``ExecutionTimes.joules``).

Time: every reading of the time and every timer (queue delay, deadline expiry, the arbiter's wait)
goes through ``clock`` (:mod:`medserve.scheduling.clock`; ``time.perf_counter_ns`` unless a test
gives a clock it advances by hand), and deadlines are given on that clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from medserve.scheduling.arbiter import DeviceArbiter
from medserve.scheduling.batching import batch_is_full, batch_key
from medserve.scheduling.clock import SYSTEM_CLOCK, Clock, Wakeup
from medserve.scheduling.execution import (
    DeviceFaults,
    ExecutionListener,
    ExecutionTimes,
    Meter,
    Outcome,
    RunOptions,
    run_batch,
)
from medserve.scheduling.pool import InstancePool, Slot
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass
from medserve.scheduling.queue import DROP_SHED, Pending, UrgencyQueue
from medserve.scheduling.slo import (
    ArrivalRates,
    ServiceTimes,
    estimate_completion_ns,
    latest_start_ns,
    retry_after_s,
    select_urgent_batch,
    stretched_ns,
    urgency,
)
from medserve.values.errors import DeadlineExceeded, MedserveError, ModelNotReady, Overloaded

INLINE_MAX_NS = 250_000
"""A batch runs on the event loop when its engine is measured to take at most this long (250 µs) for
the batch's size; longer ones, and any before the first measurements, run on the worker thread. The
hop to the thread and back costs about 100 µs on a 2-core machine (a tiny MLP's batch of 8 measured
190 µs at best on the thread, 84 µs on the loop), and a run on the thread is measured with it."""
INLINE_AFTER_RUNS = 3
"""Executions measured on the worker thread before a batch may run inline."""

__all__ = [
    "INLINE_MAX_NS",
    "DeviceFaults",
    "DynamicBatcher",
    "ExecutionListener",
    "ExecutionTimes",
    "Meter",
    "ScheduledResult",
]


@dataclass(slots=True)
class ScheduledResult:
    outputs: dict[str, np.ndarray]
    queue_ns: int
    execution: ExecutionTimes


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
        faults: DeviceFaults | None = None,
        meter: Meter | None = None,
        arbiter: DeviceArbiter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self._now = clock.now_ns
        self.output_names = output_names
        self.batching = batching
        self.max_batch_size = max(max_batch_size, 1)
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.preferred = list(preferred_batch_sizes)
        self.max_queue_size = max_queue_size
        self.label = label
        self.service_times = service_times if service_times is not None else ServiceTimes()
        self.engine_ns: dict[int, float] = {}  # the engine's own time per batch size (real clock)
        self._engine_runs = 0
        self._on_execution = on_execution
        self._faults = faults
        is_fault = faults.is_fault if faults is not None else None
        self._run = RunOptions(output_names, batching, meter, is_fault, clock.now_ns)
        self._arrival = Wakeup(clock)  # a request was queued
        self._settled = Wakeup(clock)  # while closing: an execution ended or the queue emptied
        self._queue = UrgencyQueue(label, clock)
        self._queue.on_drop = on_drop
        self._seq = itertools.count()
        self._arrivals = ArrivalRates()
        self._inflight: dict[int, tuple[int, int]] = {}  # execution token -> (start ns, batch size)
        self._tokens = itertools.count()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._arbiter = arbiter
        if arbiter is not None:
            arbiter.join(self)
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    def queue_depth(self, class_name: str | None = None) -> int:
        """Requests waiting, in all classes or in the class named ``class_name``."""
        if class_name is None:
            return len(self._queue)
        return self._queue.depth(class_name)

    def devices(self) -> list[str]:
        """The devices its instances are on."""
        return self.pool.devices()

    def most_urgent_queued(self) -> int | None:
        """The priority level of the most urgent queued request (None: nothing queued)."""
        return self._queue[0].priority if self._queue else None

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
        requests; ``deadline_ns`` (on the batcher's clock) is when it must be done. Raises
        ``Overloaded`` when it is refused or shed, ``DeadlineExceeded`` when its deadline passes first.
        """
        if self._closing:
            raise Overloaded("model version is being unloaded")
        if self._faults is not None and (why := self._faults.unavailable()) is not None:
            raise ModelNotReady(f"{self.label}: {why}")
        cls = request_class if request_class is not None else DEFAULT_CLASSES.default
        now = self._now()
        if deadline_ns is not None and deadline_ns <= now:
            raise DeadlineExceeded(
                f"{self.label}: the deadline of this '{cls.name}' request passed before it was queued"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScheduledResult] = loop.create_future()
        order = urgency(cls.priority, deadline_ns, next(self._seq))
        pending = Pending(inputs, size, batch_key(inputs), now, future, cls, deadline_ns, order)
        self._arrivals.note(cls.priority, now, size, None if deadline_ns is None else deadline_ns - now)
        self._admit(pending, now)
        self._make_room(pending)
        self._queue.insert(pending)
        future.add_done_callback(partial(self._settle, pending))
        self._arrival.notify()
        if self._arbiter is not None:
            self._arbiter.notify()
        return await future

    def _settle(self, pending: Pending, future: asyncio.Future[ScheduledResult]) -> None:
        """A cancelled caller (client gone) takes its request out of the queue at once."""
        if future.cancelled():
            self._queue.abandon(pending)

    def _busy_ns(self, now: int) -> list[int]:
        """The estimated remaining time of each running execution."""
        estimate = self.service_times.estimate_ns
        return [max(0, (estimate(size) or 0) - (now - start)) for start, size in self._inflight.values()]

    def _completion_ns(self, pending: Pending, ahead: int, now: int) -> int | None:
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

    def _item_ns(self) -> int | None:
        """Estimated instance time of one batch item, at the largest batch size the model runs."""
        full = self.service_times.estimate_ns(self.max_batch_size)
        return None if full is None else full // self.max_batch_size // max(len(self.pool), 1)

    def _admit(self, pending: Pending, now: int) -> None:
        """Refuse ``pending`` now if, at the measured service times, it would miss its deadline."""
        if pending.deadline_ns is None or not self.service_times.measured:
            return
        budget = pending.deadline_ns - now
        alone = self.service_times.estimate_ns(pending.size)
        if alone is not None and alone > budget:
            return  # it misses even on an idle server: refusing helps nobody, so it runs as soon as it can
        ahead = self._queue.position(pending.order)
        completion = self._completion_ns(pending, ahead, now)
        if completion is not None:  # more urgent requests arriving meanwhile will go first
            urgent = self._arrivals.above(pending.priority, now)
            completion = stretched_ns(completion, urgent, self._item_ns())
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

    def _make_room(self, pending: Pending) -> None:
        """Keep the queue within its bound: shed a request of a lower class, or refuse ``pending``."""
        if self.max_queue_size is None or len(self._queue) < self.max_queue_size:
            return
        last = self._queue[-1]
        completion = self._completion_ns(pending, len(self._queue), self._now())
        retry = max(1.0, completion / 2e9) if completion is not None else 1.0
        if last.priority > pending.priority:
            self._queue.remove(len(self._queue) - 1)
            self._queue.dropped(DROP_SHED)
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
    def _limit(self, slot: Slot) -> int:
        """The largest batch ``slot``'s instance takes."""
        return min(self.max_batch_size, slot.max_batch_size or self.max_batch_size)

    def _select(self, now: int, limit: int) -> list[int]:
        if not self.batching:
            return [0]
        return select_urgent_batch(
            self._queue, limit, now, self.service_times.estimate_ns, self._reserve_ns(now)
        )

    def _reserve_ns(self, now: int) -> int | None:
        """Longest a batch headed by a lower class may run so that a more urgent request arriving just
        after it started still meets its deadline (None: no such request lately, or not measured)."""
        budget = self._arrivals.urgent_budget_ns(self._queue[0].priority, now)
        own = self.service_times.estimate_ns(1)
        if budget is None or own is None:
            return None
        return max(budget - own, 0)

    async def _next_batch(self) -> tuple[Slot, list[Pending]]:
        """The instance that takes the next batch, and the batch (formed for that instance)."""
        yielding_since: int | None = None  # when this batch began to wait for other models' urgent work
        while True:
            now = self._now()
            self._queue.purge(now)
            if not self._queue:
                await self._arrival.wait()
                continue
            slot = self.pool.best()
            if slot is None:  # its instances were retired (device fault) meanwhile
                await self.pool.wait_free()
                continue
            limit = self._limit(slot)
            chosen = self._select(now, limit)
            if self.batching and self.max_queue_delay_ns > 0:
                members = [self._queue[i] for i in chosen]
                queued = sum(p.size for p in members)
                if not batch_is_full(queued, limit, self.preferred):
                    until = members[0].enqueued_ns + self.max_queue_delay_ns
                    latest = latest_start_ns(
                        (p.deadline_ns for p in members), self.service_times.estimate_ns(queued), now
                    )
                    if latest is not None:
                        until = min(until, latest)
                    if until > now:
                        await self._arrival.wait(until)
                        continue
            if self._arbiter is not None:
                if yielding_since is None:
                    yielding_since = now
                until = yielding_since + self._arbiter.max_wait_ns
                head = min(self._queue[i].priority for i in chosen)
                if await self._arbiter.wait_turn(self, slot.device, head, now, until):
                    if yielding_since == now:
                        self._arbiter.waits_total += 1
                    continue
            return slot, [self._queue.remove(index) for index in reversed(chosen)][::-1]

    async def _dispatch_loop(self) -> None:
        while True:
            await self.pool.wait_free()
            slot, batch = await self._next_batch()
            self.pool.take(slot, sum(p.size for p in batch))
            if self._arbiter is not None:
                self._arbiter.started(self, slot.device, min(p.priority for p in batch))
            task = asyncio.get_running_loop().create_task(self._execute(slot, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if self._closing:
                task.add_done_callback(self._wake_closer)

    def _wake_closer(self, task: asyncio.Task[None]) -> None:
        self._settled.notify()

    async def _execute(self, slot: Slot, batch: list[Pending]) -> None:
        started = self._now()
        token = next(self._tokens)
        self._inflight[token] = (started, sum(p.size for p in batch))
        executions: list[ExecutionTimes] = []
        size = sum(p.size for p in batch)
        items = [(p.inputs, p.size) for p in batch]
        engine_ns: list[int] = []
        try:
            if self.runs_inline(size):
                results = self._timed_run(slot, items, executions, engine_ns)
            else:
                results = await self.pool.call(lambda: self._timed_run(slot, items, executions, engine_ns))
            if engine_ns:
                self.observe_engine(size, engine_ns[0])
        except BaseException as exc:  # delivered to every waiting request, never lost
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            del self._inflight[token]
            self.pool.release(slot.instance)
            if self._arbiter is not None:
                self._arbiter.finished(self, slot.device, min(p.priority for p in batch))
        # one execution: its time as the event loop sees it (the hop to the worker thread and back
        # included), so queue estimates count what a batch really occupies the instance for
        whole = self._now() - started if len(executions) == 1 else 0
        for execution in executions:
            self.service_times.observe(execution.batch_size, max(execution.total_ns, whole))
            if self._on_execution is not None:
                self._on_execution(execution)
        retried = self._retry_after_fault(slot, batch, results)
        for pending, result in zip(batch, results):
            if pending.future.done() or id(pending) in retried:
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                outputs, execution = result
                pending.future.set_result(ScheduledResult(outputs, started - pending.enqueued_ns, execution))

    def runs_inline(self, size: int) -> bool:
        """Whether a batch of ``size`` runs on the event loop: its engine measured fast enough."""
        if self._engine_runs < INLINE_AFTER_RUNS or not self.pool.own_threads:
            return False
        estimate = self.engine_ns.get(size)
        return estimate is not None and estimate <= INLINE_MAX_NS

    def observe_engine(self, size: int, ns: int) -> None:
        """Note a run of the engine on a batch of ``size``: down at once to a faster time, up by a
        fifth of the way to a slower one."""
        previous = self.engine_ns.get(size)
        self.engine_ns[size] = (
            float(ns) if previous is None or ns < previous else previous + 0.2 * (ns - previous)
        )
        self._engine_runs += 1

    def _timed_run(
        self,
        slot: Slot,
        items: list[tuple[dict[str, np.ndarray], int]],
        executions: list[ExecutionTimes],
        engine_ns: list[int],
    ) -> list[Outcome]:
        """Run the batch (on the loop or the worker thread); its real time goes to ``engine_ns``."""
        started = time.perf_counter_ns()
        results = run_batch(slot, items, self._run, executions)
        engine_ns.append(time.perf_counter_ns() - started)
        return results

    def _retry_after_fault(
        self,
        slot: Slot,
        batch: list[Pending],
        results: Sequence[Outcome],
    ) -> set[int]:
        """Ids of the requests of ``batch`` put back in the queue because the device failed under them."""
        if self._faults is None:
            return set()
        fault = next((r for r in results if isinstance(r, MedserveError) and self._faults.is_fault(r)), None)
        if fault is None:
            return set()
        moving = self._faults.moved(slot, fault)
        why = self._faults.unavailable()
        if why is not None:  # nothing left to run anything: the queued requests fail now
            self._queue.fail_all(ModelNotReady(f"{self.label}: {why}"))
        if not moving:
            return set()
        retried: set[int] = set()
        now = self._now()
        for pending, result in zip(batch, results):
            if pending.future.done() or not isinstance(result, MedserveError) or pending.attempts > 0:
                continue
            if pending.deadline_ns is not None and pending.deadline_ns <= now:
                continue  # it fails with the device's error: no time is left to retry it
            pending.attempts += 1
            self._queue.insert(pending)
            retried.add(id(pending))
        if retried:
            self._arrival.notify()
        return retried

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, finish the queued and running ones (for at most ``timeout`` seconds on
        the batcher's clock), then stop."""
        self._closing = True
        self._queue.on_empty = self._settled.notify
        for task in self._running:  # each running execution wakes this when it ends (as new ones will)
            task.add_done_callback(self._wake_closer)
        now = self._now()
        deadline = now + round(timeout * 1e9)
        while (self._queue or self._running) and now < deadline:
            await self._settled.wait(deadline)
            now = self._now()
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._queue.fail_all(Overloaded("model version was unloaded"))
        if self._arbiter is not None:
            self._arbiter.leave(self)
        await self.pool.call(lambda: None)
