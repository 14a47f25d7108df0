"""Precedence across models on one device: batchers share a ``DeviceArbiter``, as the registry's models
do. They run in simulated time (``simulated_time``): each engine's executions take a stated number of
milliseconds on one manual clock, so every start below is exact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from simulated_time import MS, ManualClock, SimulatedExecutor, SimulatedRuntime

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.repository.repository import ModelRepository
from medserve.scheduling.arbiter import DeviceArbiter
from medserve.scheduling.batcher import DynamicBatcher
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass


def klass(name: str) -> PriorityClass:
    found = DEFAULT_CLASSES.named(name)
    if found is None:
        raise LookupError(name)
    return found


STAT, ROUTINE, BULK = klass("stat"), klass("routine"), klass("bulk")


class Floor:
    """Models on one manual clock; ``arbiter`` (when on) shared by them all."""

    def __init__(self, max_wait_s: float | None) -> None:
        self.clock = ManualClock()
        self.t0 = self.clock.now_ns()
        self.executor = SimulatedExecutor(self.clock)
        self.arbiter = None if max_wait_s is None else DeviceArbiter(max_wait_s, clock=self.clock)

    def model(
        self, name: str, per_batch_ms: float, device: str = "cpu"
    ) -> tuple[DynamicBatcher, SimulatedRuntime]:
        engine = SimulatedRuntime(self.executor, per_batch_ms, device=device)
        batcher = DynamicBatcher(
            InstancePool([engine], name, executor=self.executor),
            ["y"],
            batching=False,
            max_batch_size=1,
            label=f"model '{name}' version 1",
            arbiter=self.arbiter,
            clock=self.clock,
        )
        return batcher, engine

    def spans(self, engine: SimulatedRuntime) -> list[tuple[float, float, float]]:
        """(tag, start, end) of each execution, in ms since the floor was made."""
        return [(tags[0], (start - self.t0) / MS, (end - self.t0) / MS) for tags, start, end in engine.spans]


def send(batcher: DynamicBatcher, tag: float, cls: PriorityClass) -> asyncio.Task[Any]:
    return asyncio.create_task(batcher.submit({"x": np.full((1, 3), tag, np.float32)}, 1, request_class=cls))


async def stat_behind_routine(floor: Floor) -> tuple[SimulatedRuntime, SimulatedRuntime]:
    """Model B runs a routine request (60 ms) when a STAT request arrives for it, 10 ms in; model A has
    routine requests (30 ms each) queued all along. Returns the engines of A and B."""
    a, engine_a = floor.model("a", 30)
    b, engine_b = floor.model("b", 60)
    tasks = [send(a, float(k), ROUTINE) for k in range(8)]
    tasks.append(send(b, 100.0, ROUTINE))
    await floor.clock.advance(10)
    tasks.append(send(b, 200.0, STAT))  # waits for b's instance until 60 ms
    outcomes = await floor.clock.run(*tasks)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    await a.close()
    await b.close()
    return engine_a, engine_b


async def test_a_routine_batch_does_not_start_while_another_model_has_stat_queued_or_running() -> None:
    floor = Floor(max_wait_s=5.0)
    engine_a, engine_b = await stat_behind_routine(floor)
    # b: its routine request first (it was running when the STAT one came), then STAT
    assert floor.spans(engine_b) == [(100.0, 0, 60), (200.0, 60, 120)]
    # a: its first request ran before the STAT request came; the next waited from 30 ms (a's instance
    # free) while b's STAT request was queued (until 60 ms) and executing (until 120 ms)
    assert [start for _, start, _ in floor.spans(engine_a)] == [0, 120, 150, 180, 210, 240, 270, 300]
    assert floor.arbiter is not None and floor.arbiter.waits_total == 1


async def test_without_the_arbiter_the_other_model_runs_on_meanwhile() -> None:
    floor = Floor(max_wait_s=None)
    engine_a, engine_b = await stat_behind_routine(floor)
    assert floor.spans(engine_b) == [(100.0, 0, 60), (200.0, 60, 120)]
    assert [start for _, start, _ in floor.spans(engine_a)] == [0, 30, 60, 90, 120, 150, 180, 210]


async def test_equal_classes_and_other_devices_do_not_wait() -> None:
    floor = Floor(max_wait_s=5.0)
    a, engine_a = floor.model("a", 20)
    b, engine_b = floor.model("b", 200)
    gpu, engine_gpu = floor.model("gpu", 20, device="cuda:0")
    stat_b = send(b, 1.0, STAT)  # b executes STAT work on the CPU from 0 to 200 ms
    await floor.clock.advance(10)
    await floor.clock.run(send(a, 2.0, STAT), send(gpu, 3.0, BULK))
    # neither waited for b's STAT execution: both ran at once, on arrival
    assert floor.spans(engine_a) == [(2.0, 10, 30)] and floor.spans(engine_gpu) == [(3.0, 10, 30)]
    await floor.clock.run(stat_b)
    assert floor.spans(engine_b) == [(1.0, 0, 200)]
    assert floor.arbiter is not None and floor.arbiter.waits_total == 0
    for batcher in (a, b, gpu):
        await batcher.close()


async def test_sustained_urgent_load_slows_another_model_without_stopping_it() -> None:
    floor = Floor(max_wait_s=0.1)
    a, engine_a = floor.model("a", 10)
    b, _ = floor.model("b", 20)
    flood = [send(b, float(k), STAT) for k in range(30)]  # 600 ms of STAT work queued on b
    await floor.clock.advance(5)
    await floor.clock.run(send(a, 99.0, BULK))
    # held for max_wait_s (100 ms), then run while b's queue is still full: 6 of its 30 have started
    assert floor.spans(engine_a) == [(99.0, 105, 115)]
    assert b.queue_depth() == 24
    await floor.clock.run(*flood)
    assert floor.arbiter is not None and floor.arbiter.waits_total == 1
    for batcher in (a, b):
        await batcher.close()


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
