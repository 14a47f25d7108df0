"""The async dynamic batcher and instance pool, driven by an engine whose runs take a known time.

``TimedRuntime`` is a real ``Runtime`` (sum along the batch rows after a GIL-free sleep), so the
scheduler is exercised exactly as with ONNX Runtime: worker threads, concurrent instances, splits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher, ExecutionTimes
from medserve.scheduling.pool import InstancePool
from medserve.values.errors import InferenceFailed, Overloaded


class TimedRuntime(Runtime):
    name = "timed"
    active = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, seconds: float) -> None:
        super().__init__(Path("timed"), {})
        self.seconds = seconds
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, -1))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        with TimedRuntime.lock:
            TimedRuntime.active += 1
            TimedRuntime.peak = max(TimedRuntime.peak, TimedRuntime.active)
        try:
            time.sleep(self.seconds)
            x = inputs["x"]
            if np.isnan(x).any():
                raise InferenceFailed("NaN in input")
            self.batches.append(x.shape[0])
            return {"y": x.sum(axis=1, keepdims=True)}
        finally:
            with TimedRuntime.lock:
                TimedRuntime.active -= 1


def make(
    instances: int = 1, seconds: float = 0.05, delay_us: int = 0, max_batch: int = 8, batching: bool = True
) -> tuple[DynamicBatcher, list[TimedRuntime], list[ExecutionTimes]]:
    engines = [TimedRuntime(seconds) for _ in range(instances)]
    executions: list[ExecutionTimes] = []
    batcher = DynamicBatcher(
        InstancePool(engines, "test"),
        ["y"],
        batching=batching,
        max_batch_size=max_batch,
        max_queue_delay_us=delay_us,
        on_execution=executions.append,
    )
    return batcher, engines, executions


def rows(n: int, value: float, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, np.float32)}


async def test_requests_queued_while_busy_are_batched_and_split_back() -> None:
    batcher, engines, executions = make()
    results = await asyncio.gather(*(batcher.submit(rows(1, i), 1) for i in range(9)))
    for i, result in enumerate(results):
        assert result.outputs["y"].tolist() == [[3.0 * i]]
    assert engines[0].batches == [8, 1]  # all nine were queued before the first dispatch
    assert len(executions) == len(engines[0].batches)
    await batcher.close()


async def test_queue_delay_gathers_requests_arriving_shortly_after() -> None:
    batcher, engines, _ = make(delay_us=200_000)

    async def later(i: int) -> None:
        await asyncio.sleep(0.01 * i)
        await batcher.submit(rows(1, 1), 1)

    await asyncio.gather(*(later(i) for i in range(4)))
    assert engines[0].batches == [4]
    await batcher.close()


async def test_max_batch_size_and_existing_batch_dims_are_respected() -> None:
    batcher, engines, _ = make(max_batch=4, delay_us=100_000)
    sizes = [3, 2, 1, 2, 4]
    results = await asyncio.gather(*(batcher.submit(rows(n, 1), n) for n in sizes))
    assert [r.outputs["y"].shape[0] for r in results] == sizes
    assert all(b <= 4 for b in engines[0].batches) and sum(engines[0].batches) == sum(sizes)
    await batcher.close()


async def test_incompatible_shapes_are_not_merged() -> None:
    batcher, engines, _ = make(delay_us=100_000)
    results = await asyncio.gather(
        batcher.submit(rows(1, 1, width=2), 1),
        batcher.submit(rows(1, 1, width=5), 1),
        batcher.submit(rows(1, 1, width=2), 1),
    )
    assert [r.outputs["y"][0, 0] for r in results] == [2.0, 5.0, 2.0]
    assert sorted(engines[0].batches) == [1, 2]
    await batcher.close()


async def test_instances_run_concurrently() -> None:
    TimedRuntime.peak = 0
    batcher, engines, _ = make(instances=2, seconds=0.2, batching=False)
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(rows(1, 1), 1) for _ in range(4)))
    elapsed = time.perf_counter() - started
    assert TimedRuntime.peak == 2
    assert all(len(e.batches) == 2 for e in engines)
    assert elapsed < 0.75  # 4 runs of 0.2 s on 2 instances take ~0.4 s, not 0.8 s
    await batcher.close()


async def test_event_loop_stays_free_while_the_engine_runs() -> None:
    batcher, _, _ = make(seconds=0.3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await batcher.submit(rows(1, 1), 1)
    task.cancel()
    assert ticks >= 10
    await batcher.close()


async def test_a_failing_request_fails_alone() -> None:
    batcher, _, _ = make(delay_us=100_000)
    good = [batcher.submit(rows(1, 1), 1) for _ in range(3)]
    bad = batcher.submit(rows(1, float("nan")), 1)
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(results[-1], InferenceFailed)
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    batcher, _, _ = make(seconds=0.05, batching=False)
    pending = [asyncio.create_task(batcher.submit(rows(1, 1), 1)) for _ in range(3)]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(t.done() and not t.exception() for t in pending)
    with pytest.raises(Overloaded):
        await batcher.submit(rows(1, 1), 1)
