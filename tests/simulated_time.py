"""Simulated time for scheduler tests, shared by the unit and integration tiers.

``ManualClock`` is a :class:`medserve.scheduling.clock.Clock` that moves only when a test advances it;
its timers fire in time order, and between two instants the event loop runs everything that became
ready, so a test sees the scheduler exactly as it is at each instant. ``SimulatedExecutor`` stands in
for an instance pool's worker threads: a submitted engine call runs at once on the event loop's
thread, and its result is delivered once the simulated time the engine charged has passed on the
clock. ``SimulatedRuntime`` is an engine whose executions take a known simulated time. Together they
make every queue delay, deadline, service time and execution span a number the test can state
exactly, however busy the machine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.values.errors import InferenceFailed

T = TypeVar("T")

MS = 1_000_000
"""One millisecond in nanoseconds."""

#: Rounds of the event loop that :func:`settle` grants: far more than any chain of wake-ups the
#: scheduler makes at one instant (a timer, the batcher's task, the caller's task, ...).
_SETTLE_ROUNDS = 64


async def settle() -> None:
    """Let the event loop run everything that is ready at this instant."""
    for _ in range(_SETTLE_ROUNDS):
        await asyncio.sleep(0)


class ManualTimer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Stuck(AssertionError):
    """Simulated time cannot go on: tasks wait, but nothing is due on the clock."""


class ManualClock:
    """A clock that stands still until the test advances it."""

    def __init__(self, start_ns: int = 1_000_000 * MS) -> None:
        self._now = start_ns
        self._timers: list[tuple[int, int, ManualTimer]] = []
        self._order = itertools.count()

    def now_ns(self) -> int:
        return self._now

    def after(self, ms: float) -> int:
        """The time ``ms`` milliseconds from now (a deadline)."""
        return self._now + round(ms * MS)

    def call_at(self, when_ns: int, callback: Callable[..., object], *args: Any) -> ManualTimer:
        timer = ManualTimer(when_ns, callback, args)
        heapq.heappush(self._timers, (when_ns, next(self._order), timer))
        return timer

    def _next_due(self) -> int | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _fire_due(self) -> None:
        """Run the callbacks due by now, in time order (and in the order they were set)."""
        while (due := self._next_due()) is not None and due <= self._now:
            timer = heapq.heappop(self._timers)[2]
            timer.callback(*timer.args)

    async def _step_to(self, when: int) -> None:
        self._now = max(self._now, when)
        self._fire_due()
        await settle()

    async def sleep_until(self, when_ns: int) -> None:
        """Wait (in a task of the test's) until the clock reaches ``when_ns``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_at(when_ns, lambda: future.done() or future.set_result(None))
        await future

    async def advance(self, ms: float) -> None:
        """Let ``ms`` milliseconds pass, instant by instant: every timer due meanwhile fires at its time
        and what it wakes runs before the clock moves on."""
        target = self._now + round(ms * MS)
        await self._step_to(self._now)
        while (due := self._next_due()) is not None and due <= target:
            await self._step_to(due)
        await self._step_to(target)

    async def run(self, *awaitables: Awaitable[T], limit_ms: float = 3_600_000) -> list[T | BaseException]:
        """Let time pass until every awaitable is done; their results (or errors), in order."""
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        end = self._now + round(limit_ms * MS)
        await self._step_to(self._now)
        while not all(task.done() for task in tasks):
            due = self._next_due()
            if due is None:
                waiting = sum(not t.done() for t in tasks)
                raise Stuck(f"{waiting} task(s) wait, but nothing is due on the clock")
            if due > end:
                raise Stuck(f"the tasks are not done after {limit_ms} ms of simulated time")
            await self._step_to(due)
        return [task.exception() or task.result() for task in tasks]


class SimulatedExecutor(Executor):
    """Runs each call at once on the caller's thread; its result comes once the simulated time charged
    to it (:meth:`charge`) has passed on ``clock``."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._charged = 0

    def charge(self, ns: int) -> None:
        """The call being run takes ``ns`` more nanoseconds."""
        self._charged += ns

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._charged = 0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # delivered to the caller like a worker thread's error
            error: BaseException | None = exc
        else:
            error = None

        def deliver() -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        if self._charged > 0:
            self.clock.call_at(self.clock.now_ns() + self._charged, deliver)
        else:
            deliver()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


class SimulatedRuntime(Runtime):
    """An engine whose execution takes ``per_batch_ms + per_row_ms × rows`` of simulated time. Input
    ``x`` (rows of 3 values, or one row without a batch axis); output ``y``, the sum of each row. Logs
    each execution's tags (the first value of each row) and its span on the clock; a NaN in the input
    fails the execution."""

    name = "simulated"

    def __init__(
        self,
        executor: SimulatedExecutor,
        per_batch_ms: float = 20.0,
        per_row_ms: float = 0.0,
        device: str = "cpu",
    ) -> None:
        super().__init__(Path("simulated"), {})
        self.executor = executor
        self.per_batch_ms = per_batch_ms
        self.per_row_ms = per_row_ms
        self._device = device
        self.log: list[list[float]] = []
        self.spans: list[tuple[list[float], int, int]] = []  # (tags, start ns, end ns)

    def load(self) -> None:
        pass

    def device(self) -> str:
        return self._device

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, -1))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        rows = x.reshape(x.shape[0], -1) if x.ndim == 2 else x.reshape(1, -1)
        cost = round((self.per_batch_ms + self.per_row_ms * rows.shape[0]) * MS)
        self.executor.charge(cost)
        if np.isnan(rows).any():
            raise InferenceFailed("NaN in input")
        tags = [float(v) for v in rows[:, 0]]
        start = self.executor.clock.now_ns()
        self.log.append(tags)
        self.spans.append((tags, start, start + cost))
        y = rows.sum(axis=1, keepdims=True)
        return {"y": y if x.ndim == 2 else y[0]}

    def order(self) -> list[float]:
        """The tags in the order they ran."""
        return [tag for batch in self.log for tag in batch]

    def batches(self) -> list[int]:
        return [len(tags) for tags in self.log]
