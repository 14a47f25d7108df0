"""Batches of an engine measured to take microseconds run on the event loop; slower ones on a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import INLINE_AFTER_RUNS, INLINE_MAX_NS, DynamicBatcher
from medserve.scheduling.pool import InstancePool


class TimedRuntime(Runtime):
    """Sums its rows; each run takes at least ``seconds`` of real time and notes its thread."""

    name = "timed"

    def __init__(self, seconds: float) -> None:
        super().__init__(Path("timed"), {})
        self.seconds = seconds
        self.threads: list[str] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, -1))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        if self.seconds:
            end = time.perf_counter() + self.seconds
            while time.perf_counter() < end:
                pass
        return {"y": inputs["x"].sum(axis=1, keepdims=True)}


def rows(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, np.float32)}


async def run_sequentially(engine: TimedRuntime, count: int) -> DynamicBatcher:
    batcher = DynamicBatcher(InstancePool([engine], "test"), ["y"], batching=True, max_batch_size=4)
    for i in range(count):
        result = await batcher.submit(rows(i), 1)
        assert result.outputs["y"].tolist() == [[3.0 * i]]
    return batcher


async def test_a_fast_engine_runs_inline_once_measured() -> None:
    engine = TimedRuntime(0.0)
    batcher = DynamicBatcher(InstancePool([engine], "test"), ["y"], batching=True, max_batch_size=4)
    loop_thread = threading.current_thread().name
    for i in range(2000):  # a sum of three floats takes microseconds; a busy machine may delay a few
        result = await batcher.submit(rows(i), 1)
        assert result.outputs["y"].tolist() == [[3.0 * i]]
        if engine.threads[-1] == loop_thread:
            break
    # measured on the worker thread first, then on the loop
    assert all(name != loop_thread for name in engine.threads[:INLINE_AFTER_RUNS])
    assert engine.threads[-1] == loop_thread
    await batcher.close()


async def test_a_slow_engine_always_runs_on_the_worker_thread() -> None:
    engine = TimedRuntime(5 * INLINE_MAX_NS / 1e9)  # five times the threshold
    batcher = await run_sequentially(engine, INLINE_AFTER_RUNS + 5)
    loop_thread = threading.current_thread().name
    assert engine.threads and loop_thread not in engine.threads
    assert not batcher.runs_inline(1)
    await batcher.close()


async def test_the_decision_follows_the_measured_time() -> None:
    pool = InstancePool([TimedRuntime(0.0)], "test")
    batcher = DynamicBatcher(pool, ["y"], batching=True, max_batch_size=4)
    assert not batcher.runs_inline(1)  # nothing measured yet: the thread
    for ns in (INLINE_MAX_NS * 5, INLINE_MAX_NS * 4, INLINE_MAX_NS // 10):
        batcher.observe_engine(1, ns)  # one fast run among slow ones (a thread waiting for the GIL)
    batcher.observe_engine(4, INLINE_MAX_NS * 3)
    assert batcher.runs_inline(1) and not batcher.runs_inline(4)
    assert not batcher.runs_inline(2)  # a size never measured goes to the thread first
    for _ in range(30):  # the engine slows down for good: back to the thread
        batcher.observe_engine(1, INLINE_MAX_NS * 10)
    assert not batcher.runs_inline(1)
    await asyncio.sleep(0)
    await batcher.close()


async def test_a_given_executor_takes_every_run() -> None:
    """A pool on an executor of the caller's (a test's simulated time) never runs a batch inline."""
    with ThreadPoolExecutor(1) as executor:
        pool = InstancePool([TimedRuntime(0.0)], "test", executor=executor)
        batcher = DynamicBatcher(pool, ["y"], batching=True, max_batch_size=4)
        for _ in range(INLINE_AFTER_RUNS + 1):
            batcher.observe_engine(1, INLINE_MAX_NS // 10)
        assert not batcher.runs_inline(1)
        await batcher.close()
