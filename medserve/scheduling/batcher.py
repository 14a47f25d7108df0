"""The dynamic batcher of one model version: an async queue in front of its instance pool.

Requests wait until an instance is free; then the oldest request and the compatible ones behind it form
a batch, which goes at once when full (max batch size, or the largest preferred size) or when the oldest
request has waited ``max_queue_delay``. Merging, running and splitting happen on the instance's worker
thread, so the event loop only moves references.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medserve.core.errors import InferenceFailed, MedserveError, Overloaded
from medserve.runtimes.base import Runtime
from medserve.scheduling.batching import BatchKey, batch_is_full, batch_key, merge, select_batch, split
from medserve.scheduling.pool import InstancePool


@dataclass(slots=True)
class ExecutionTimes:
    """One engine execution: its batch size and where its time went (nanoseconds)."""

    batch_size: int
    input_ns: int
    infer_ns: int
    output_ns: int


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
    ) -> None:
        self.pool = pool
        self.output_names = output_names
        self.batching = batching
        self.max_batch_size = max(max_batch_size, 1)
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.preferred = list(preferred_batch_sizes)
        self._on_execution = on_execution
        self._queue: deque[_Pending] = deque()
        self._arrival = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    def queue_depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: dict[str, np.ndarray], size: int) -> ScheduledResult:
        if self._closing:
            raise Overloaded("model version is being unloaded")
        future: asyncio.Future[ScheduledResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, size, batch_key(inputs), time.perf_counter_ns(), future))
        self._arrival.set()
        return await future

    async def _wait_for_arrival(self, timeout_ns: int | None) -> None:
        self._arrival.clear()
        if timeout_ns is None:
            await self._arrival.wait()
            return
        if timeout_ns <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrival.wait(), timeout_ns / 1e9)

    def _select(self) -> list[int]:
        queue = self._queue
        if not self.batching:
            return [0]
        return select_batch([p.size for p in queue], [p.key for p in queue], self.max_batch_size)

    async def _next_batch(self) -> list[_Pending]:
        while not self._queue:
            await self._wait_for_arrival(None)
        chosen = self._select()
        if self.batching and self.max_queue_delay_ns > 0:
            while True:
                queued = sum(self._queue[i].size for i in chosen)
                if batch_is_full(queued, self.max_batch_size, self.preferred):
                    break
                deadline = self._queue[0].enqueued_ns + self.max_queue_delay_ns
                remaining = deadline - time.perf_counter_ns()
                if remaining <= 0:
                    break
                await self._wait_for_arrival(remaining)
                chosen = self._select()
        batch = [self._queue[i] for i in chosen]
        for index in reversed(chosen):
            del self._queue[index]
        return batch

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
            self.pool.release(instance)
        if self._on_execution is not None:
            for execution in executions:
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
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Overloaded("model version was unloaded"))
        self._queue.clear()
        await self.pool.call(lambda: None)
