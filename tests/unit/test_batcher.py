"""The async dynamic batcher and its instance pool.

Batching is tested in simulated time (``simulated_time``): the engine's executions take a stated
number of milliseconds on a clock the test advances, so queue delays, batch sizes and execution spans
are exact. Two tests use real worker threads to show what simulation cannot: instances really run at
once, and the event loop stays free while an engine runs.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from simulated_time import MS, ManualClock, SimulatedExecutor, SimulatedRuntime

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher, ExecutionTimes
from medserve.scheduling.pool import InstancePool
from medserve.values.errors import InferenceFailed, Overloaded

#: How long a real-thread test waits for a thread before it fails (a guard, not a measurement).
GUARD_S = 30.0


def make(
    per_batch_ms: float = 50.0, delay_us: int = 0, max_batch: int = 8, batching: bool = True
) -> tuple[DynamicBatcher, SimulatedRuntime, ManualClock, list[ExecutionTimes]]:
    clock = ManualClock()
    executor = SimulatedExecutor(clock)
    engine = SimulatedRuntime(executor, per_batch_ms)
    executions: list[ExecutionTimes] = []
    batcher = DynamicBatcher(
        InstancePool([engine], "test", executor=executor),
        ["y"],
        batching=batching,
        max_batch_size=max_batch,
        max_queue_delay_us=delay_us,
        on_execution=executions.append,
        clock=clock,
    )
    return batcher, engine, clock, executions


def rows(n: int, value: float, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, np.float32)}


async def test_requests_queued_while_busy_are_batched_and_split_back() -> None:
    batcher, engine, clock, executions = make()
    results = await clock.run(*(batcher.submit(rows(1, i), 1) for i in range(9)))
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException)
        assert result.outputs["y"].tolist() == [[3.0 * i]]
    assert engine.batches() == [8, 1]  # all nine were queued before the first dispatch
    assert [e.batch_size for e in executions] == [8, 1]
    # each execution occupied the instance 50 ms, as the event loop saw it
    assert batcher.service_times.snapshot() == {1: 50 * MS, 8: 50 * MS}
    await batcher.close()


async def test_queue_delay_gathers_requests_arriving_shortly_after() -> None:
    batcher, engine, clock, _ = make(delay_us=200_000)
    start = clock.now_ns()
    tasks = []
    for _ in range(4):  # one request every 10 ms
        tasks.append(asyncio.create_task(batcher.submit(rows(1, 1), 1)))
        await clock.advance(10)
    await clock.advance(159.999)
    assert engine.log == []  # the first request has waited 199.999 ms of its 200
    await clock.advance(0.001)
    assert engine.batches() == [4]
    assert engine.spans[0][1] == start + 200 * MS
    results = await clock.run(*tasks)
    assert [r.queue_ns for r in results] == [200 * MS, 190 * MS, 180 * MS, 170 * MS]
    await batcher.close()


async def test_max_batch_size_and_existing_batch_dims_are_respected() -> None:
    batcher, engine, clock, _ = make(max_batch=4, delay_us=100_000)
    t0 = clock.now_ns()
    sizes = [3, 2, 1, 2, 4]
    results = await clock.run(*(batcher.submit(rows(n, 1), n) for n in sizes))
    assert [r.outputs["y"].shape[0] for r in results] == sizes
    # in arrival order, each batch stops at the first request that does not fit: 3 (+2 is 5), then
    # 2 + 1 (+2 is 5), then 2 (+4 is 6), then 4; the first waits its 100 ms for more, the later ones
    # have waited that long already when the engine is free
    assert engine.batches() == [3, 3, 2, 4]
    assert [(start - t0) / MS for _, start, _ in engine.spans] == [100, 150, 200, 250]
    await batcher.close()


async def test_incompatible_shapes_are_not_merged() -> None:
    batcher, engine, clock, _ = make(delay_us=100_000)
    results = await clock.run(
        batcher.submit(rows(1, 1, width=2), 1),
        batcher.submit(rows(1, 1, width=5), 1),
        batcher.submit(rows(1, 1, width=2), 1),
    )
    assert [r.outputs["y"][0, 0] for r in results] == [2.0, 5.0, 2.0]
    assert engine.batches() == [2, 1]
    await batcher.close()


async def test_a_failing_request_fails_alone() -> None:
    batcher, engine, clock, _ = make(delay_us=100_000)
    good = [batcher.submit(rows(1, 1), 1) for _ in range(3)]
    bad = batcher.submit(rows(1, float("nan")), 1)
    results = await clock.run(*good, bad)
    assert isinstance(results[-1], InferenceFailed)
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    assert engine.batches() == [1, 1, 1]  # the batch of 4 failed; each request was retried alone
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    batcher, engine, clock, _ = make(batching=False)
    pending = [asyncio.create_task(batcher.submit(rows(1, i), 1)) for i in range(3)]
    closing = asyncio.create_task(batcher.close())
    await clock.advance(149)
    assert not closing.done() and engine.order() == [0, 1, 2] and not pending[2].done()
    await clock.advance(1)
    assert closing.done() and all(t.done() and not t.exception() for t in pending)
    with pytest.raises(Overloaded):
        await batcher.submit(rows(1, 1), 1)


async def test_close_gives_up_after_its_timeout_and_fails_what_is_still_queued() -> None:
    batcher, engine, clock, _ = make(per_batch_ms=60_000, batching=False)
    running = asyncio.create_task(batcher.submit(rows(1, 0), 1))
    queued = asyncio.create_task(batcher.submit(rows(1, 1), 1))
    closing = asyncio.create_task(batcher.close(timeout=2.0))
    await clock.advance(1999)
    assert not closing.done()
    await clock.advance(1)
    assert closing.done() and isinstance(queued.exception(), Overloaded)
    assert "unloaded" in str(queued.exception())
    await clock.run(running)  # the running execution still ends, a minute after it started
    assert running.exception() is None and engine.order() == [0]


# -- real worker threads ------------------------------------------------------------------------
class ThreadedRuntime(Runtime):
    """Runs on the pool's real worker threads; ``run`` waits at ``barrier`` when one is given, and
    reports entering to the event loop, then waits for ``release`` when one is given."""

    name = "threaded"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        barrier: threading.Barrier | None = None,
        release: threading.Event | None = None,
    ) -> None:
        super().__init__(Path("threaded"), {})
        self.loop = loop
        self.barrier = barrier
        self.release = release
        self.entered = asyncio.Event()
        self.threads: list[str] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, -1))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        if self.barrier is not None:
            self.barrier.wait(GUARD_S)  # BrokenBarrierError unless the other instance runs meanwhile
        self.loop.call_soon_threadsafe(self.entered.set)
        if self.release is not None and not self.release.wait(GUARD_S):
            raise InferenceFailed("never released")
        return {"y": inputs["x"].sum(axis=1, keepdims=True)}


async def test_instances_run_concurrently_on_worker_threads() -> None:
    loop = asyncio.get_running_loop()
    barrier = threading.Barrier(2)  # each run waits until the other instance is running too
    engines = [ThreadedRuntime(loop, barrier) for _ in range(2)]
    batcher = DynamicBatcher(InstancePool(engines, "test"), ["y"], batching=False, max_batch_size=1)
    results = await asyncio.gather(*(batcher.submit(rows(1, 1), 1) for _ in range(4)))
    assert all(r.outputs["y"].tolist() == [[3.0]] for r in results)
    assert [len(e.threads) for e in engines] == [2, 2]
    assert not barrier.broken
    assert all(name.startswith("medserve-test") for e in engines for name in e.threads)
    await batcher.close()


async def test_event_loop_stays_free_while_the_engine_runs() -> None:
    release = threading.Event()  # only a coroutine on the loop sets it: the engine must not block the loop
    engine = ThreadedRuntime(asyncio.get_running_loop(), release=release)
    batcher = DynamicBatcher(InstancePool([engine], "test"), ["y"], batching=True, max_batch_size=4)
    first = asyncio.create_task(batcher.submit(rows(1, 1), 1))
    await asyncio.wait_for(engine.entered.wait(), GUARD_S)
    second = asyncio.create_task(batcher.submit(rows(1, 2), 1))  # the loop queues work meanwhile
    await asyncio.sleep(0)
    assert batcher.queue_depth() == 1 and not first.done()
    release.set()
    assert (await first).outputs["y"].tolist() == [[3.0]]
    assert (await second).outputs["y"].tolist() == [[6.0]]
    await batcher.close()
