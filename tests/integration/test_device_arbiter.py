"""Precedence across models on one device: two batchers with slow engines (GIL-free sleeps on real
worker threads) share a ``DeviceArbiter``, as the registry's models do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from test_priority_scheduler import BULK, ROUTINE, STAT, SlowRuntime, rows

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.repository.repository import ModelRepository
from medserve.scheduling.arbiter import DeviceArbiter
from medserve.scheduling.batcher import DynamicBatcher
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import PriorityClass


class TimedRuntime(SlowRuntime):
    """A slow engine on ``device`` that logs when each execution started and ended."""

    def __init__(self, per_batch: float, device: str = "cpu") -> None:
        super().__init__(per_batch)
        self._device = device
        self.spans: list[tuple[float, float, float]] = []  # (tag, start, end), perf_counter seconds

    def device(self) -> str:
        return self._device

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = super().run(inputs, output_names)
        self.spans.append((float(inputs["x"].reshape(-1)[0]), started, time.perf_counter()))
        return outputs


def model(
    name: str, arbiter: DeviceArbiter | None, per_batch: float, device: str = "cpu"
) -> tuple[DynamicBatcher, TimedRuntime]:
    engine = TimedRuntime(per_batch, device)
    batcher = DynamicBatcher(
        InstancePool([engine], name),
        ["y"],
        batching=False,
        max_batch_size=1,
        label=f"model '{name}' version 1",
        arbiter=arbiter,
    )
    return batcher, engine


def send(batcher: DynamicBatcher, tag: float, cls: PriorityClass) -> asyncio.Task[Any]:
    return asyncio.create_task(batcher.submit(rows(tag), 1, request_class=cls))


async def stat_behind_routine(arbiter: DeviceArbiter | None) -> tuple[TimedRuntime, TimedRuntime]:
    """Model B runs a routine request (60 ms) when a STAT request arrives for it; model A has routine
    requests (30 ms each) queued all along. Returns the engines of A and B."""
    a, engine_a = model("a", arbiter, 0.03)
    b, engine_b = model("b", arbiter, 0.06)
    tasks = [send(a, float(k), ROUTINE) for k in range(8)]
    tasks.append(send(b, 100.0, ROUTINE))
    await asyncio.sleep(0.01)
    tasks.append(send(b, 200.0, STAT))  # waits for b's instance, about 50 ms
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    await a.close()
    await b.close()
    return engine_a, engine_b


def starts_during(engine: TimedRuntime, begin: float, end: float) -> list[float]:
    return [tag for tag, started, _ in engine.spans if begin < started < end]


async def test_a_routine_batch_does_not_start_while_another_model_has_stat_queued_or_running() -> None:
    arbiter = DeviceArbiter(max_wait_s=5.0)
    engine_a, engine_b = await stat_behind_routine(arbiter)
    ((_, stat_start, stat_end),) = [s for s in engine_b.spans if s[0] == 200.0]
    ((_, routine_start, _),) = [s for s in engine_b.spans if s[0] == 100.0]
    arrived = routine_start + 0.01  # the STAT request came 10 ms after b's routine one
    # From the STAT request's arrival to the end of its execution model A started nothing.
    assert starts_during(engine_a, arrived + 0.005, stat_end) == []
    assert sorted(tag for tag, _, _ in engine_a.spans) == [float(k) for k in range(8)]  # then all ran
    assert arbiter.waits_total >= 1
    assert stat_start >= routine_start  # b's own order: routine first (it was running), then STAT


async def test_without_the_arbiter_the_other_model_runs_on_meanwhile() -> None:
    engine_a, engine_b = await stat_behind_routine(None)
    ((_, stat_start, stat_end),) = [s for s in engine_b.spans if s[0] == 200.0]
    ((_, routine_start, _),) = [s for s in engine_b.spans if s[0] == 100.0]
    assert len(starts_during(engine_a, routine_start + 0.015, stat_end)) >= 2


async def test_equal_classes_and_other_devices_do_not_wait() -> None:
    arbiter = DeviceArbiter(max_wait_s=5.0)
    a, engine_a = model("a", arbiter, 0.02)
    b, _ = model("b", arbiter, 0.2)
    gpu, engine_gpu = model("gpu", arbiter, 0.02, device="cuda:0")
    stat_b = send(b, 1.0, STAT)  # b executes STAT work on the CPU for 200 ms
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await asyncio.gather(send(a, 2.0, STAT), send(gpu, 3.0, BULK))
    assert time.perf_counter() - started < 0.15  # neither waited for b's 200 ms STAT execution
    await stat_b
    assert arbiter.waits_total == 0
    for batcher in (a, b, gpu):
        await batcher.close()
    assert len(engine_a.spans) == len(engine_gpu.spans) == 1


async def test_sustained_urgent_load_slows_another_model_without_stopping_it() -> None:
    arbiter = DeviceArbiter(max_wait_s=0.1)
    a, engine_a = model("a", arbiter, 0.01)
    b, _ = model("b", arbiter, 0.02)
    flood = [send(b, float(k), STAT) for k in range(30)]  # 600 ms of STAT work queued on b
    await asyncio.sleep(0.005)
    started = time.perf_counter()
    await send(a, 99.0, BULK)
    waited = time.perf_counter() - started
    assert 0.08 <= waited < 0.4, waited  # held about max_wait_s, then run while b's queue is still full
    assert b.queue_depth() > 0
    await asyncio.gather(*flood)
    for batcher in (a, b):
        await batcher.close()
    assert [tag for tag, _, _ in engine_a.spans] == [99.0]


async def test_the_registry_s_models_share_one_arbiter(example_repository: Path) -> None:
    registry = ModelRegistry(ModelRepository(example_repository), ServingMetrics())
    assert registry.arbiter is not None
    await registry.load("identity_fp32")
    await registry.load("simple")
    try:
        members = registry.arbiter.members
        assert {id(m) for m in members} == {id(registry.get(n).batcher) for n in ("identity_fp32", "simple")}
        await registry.unload("simple")
        assert registry.arbiter.members == (registry.get("identity_fp32").batcher,)
    finally:
        await registry.close()
    assert (
        ModelRegistry(ModelRepository(example_repository), ServingMetrics(), cross_model_wait_s=0).arbiter
        is None
    )
