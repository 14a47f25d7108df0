"""The scheduler's protection of urgent classes (pure, no clock): the reserve that bounds lower-class
batches while urgent requests are about, the slack an urgent head keeps when lower-class requests
join its batch, admission estimates stretched by urgent arrivals, and service times seeded from a
profile. The batcher test under real load is in tests/test_priority_scheduler.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher
from medserve.scheduling.batching import BatchKey
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass
from medserve.scheduling.slo import ArrivalRates, ServiceTimes, select_urgent_batch, stretched_ns
from medserve.values.errors import Overloaded

MS = 1_000_000
KEY: BatchKey = (("x", "<f4", (3,)),)


@dataclass
class Q:
    size: int
    priority: int
    deadline_ns: int | None
    key: BatchKey = KEY


def linear(per_item_ms: float) -> ServiceTimes:
    times = ServiceTimes()
    times.seed({b: int(b * per_item_ms * MS) for b in (1, 2, 4, 8)})
    return times


def test_arrival_rates_and_the_urgent_budget_come_from_the_window() -> None:
    rates = ArrivalRates(window_ns=1000 * MS)
    rates.note(3, 0, 4, 5000 * MS)
    rates.note(1, 100 * MS, 1, 90 * MS)
    rates.note(1, 200 * MS, 1, 120 * MS)
    assert rates.above(3, 500 * MS) == pytest.approx(2.0)  # two stat items within one second
    assert rates.above(1, 500 * MS) == 0.0
    assert rates.urgent_budget_ns(3, 500 * MS) == 120 * MS  # the latest urgent request's budget
    assert rates.urgent_budget_ns(1, 500 * MS) is None
    assert rates.urgent_budget_ns(3, 1300 * MS) is None  # nothing urgent within the last second
    with pytest.raises(ValueError):
        ArrivalRates(window_ns=0)


def test_stretched_completion_counts_urgent_work_arriving_meanwhile() -> None:
    assert stretched_ns(1000 * MS, 0.0, 30 * MS) == 1000 * MS
    assert stretched_ns(1000 * MS, 10.0, 30 * MS) == pytest.approx(1000 * MS / 0.7, rel=1e-6)
    assert stretched_ns(1000 * MS, 100.0, 30 * MS) == pytest.approx(1000 * MS / 0.1, rel=1e-6)  # capped
    assert stretched_ns(1000 * MS, 10.0, None) == 1000 * MS


def test_the_reserve_bounds_a_lower_class_batch_but_not_its_head() -> None:
    estimate = linear(30).estimate_ns
    routine = [Q(1, 3, 10_000 * MS) for _ in range(8)]
    assert select_urgent_batch(routine, 8, 0, estimate) == list(range(8))
    assert select_urgent_batch(routine, 8, 0, estimate, max_cost_ns=65 * MS) == [0, 1]
    assert select_urgent_batch(routine, 8, 0, estimate, max_cost_ns=10 * MS) == [0]


def test_a_lower_class_request_joins_an_urgent_batch_only_with_slack_to_spare() -> None:
    estimate = linear(30).estimate_ns
    stat = Q(1, 1, 100 * MS)  # 100 ms left: alone 30 ms, with one routine 60 ms + 30 ms slack = 90 ms
    assert select_urgent_batch([stat, Q(1, 3, None), Q(1, 3, None)], 8, 0, estimate) == [0, 1]
    tight = Q(1, 1, 80 * MS)  # 60 ms + 30 ms slack > 80 ms: the stat request runs alone
    assert select_urgent_batch([tight, Q(1, 3, None)], 8, 0, estimate) == [0]
    two_stat = [Q(1, 1, 80 * MS), Q(1, 1, 80 * MS)]  # equally urgent requests need no slack
    assert select_urgent_batch(two_stat, 8, 0, estimate) == [0, 1]


class Sleeper(Runtime):
    """Sleeps ``per_row`` seconds per batch item; logs the batch sizes."""

    name = "sleeper"

    def __init__(self, per_row: float) -> None:
        super().__init__(Path("sleeper"), {})
        self.per_row = per_row
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 3))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 3))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        time.sleep(self.per_row * inputs["x"].shape[0])
        self.batches.append(inputs["x"].shape[0])
        return {"x": inputs["x"]}


def cls(name: str) -> PriorityClass:
    found = DEFAULT_CLASSES.named(name)
    assert found is not None
    return found


async def test_while_stat_requests_come_routine_batches_stay_short_enough_for_them() -> None:
    engine = Sleeper(0.01)
    batcher = DynamicBatcher(InstancePool([engine], "s"), ["x"], batching=True, max_batch_size=8)
    batcher.service_times.seed({b: b * 10 * MS for b in (1, 2, 4, 8)})
    x = np.zeros((1, 3), np.float32)
    routine = [
        asyncio.create_task(batcher.submit({"x": x}, 1, request_class=cls("routine"))) for _ in range(16)
    ]
    await asyncio.gather(*routine)
    assert max(engine.batches) == 8  # no urgent traffic: full batches
    engine.batches.clear()
    stat = batcher.submit(
        {"x": x}, 1, request_class=cls("stat"), deadline_ns=time.perf_counter_ns() + 35 * MS
    )
    routine = [
        asyncio.create_task(batcher.submit({"x": x}, 1, request_class=cls("routine"))) for _ in range(16)
    ]
    await stat
    await asyncio.gather(*routine)
    # a stat request came with 35 ms to spare: routine batches now take at most 35 - 10 = 25 ms (batch 2)
    assert max(engine.batches) == 2
    await batcher.close()


async def test_admission_counts_the_urgent_requests_that_will_overtake() -> None:
    engine = Sleeper(0.0)
    batcher = DynamicBatcher(InstancePool([engine], "s"), ["x"], batching=False, max_batch_size=1)
    batcher.service_times.seed({1: 10 * MS})
    x = np.zeros((3,), np.float32)

    def routine(ms: float) -> asyncio.Task[object]:
        deadline = time.perf_counter_ns() + int(ms * MS)
        return asyncio.create_task(
            batcher.submit({"x": x}, 1, request_class=cls("routine"), deadline_ns=deadline)
        )

    engine.per_row = 0.03  # x has 3 rows here: the blocker runs 90 ms
    blocker = asyncio.create_task(batcher.submit({"x": x}, 1, request_class=cls("bulk")))
    await asyncio.sleep(0.01)
    queued = [routine(150) for _ in range(10)]  # due before the request below: ahead of it (EDF)
    await asyncio.sleep(0)
    # alone 10 ms; behind 10 queued (100 ms; the running one is estimated done): 110 ms, within 200 ms
    now = time.perf_counter_ns()
    for i in range(500):  # then stat requests at 50 a second: half the instance goes to them
        batcher._arrivals.note(1, now - i * 20 * MS)
    with pytest.raises(Overloaded, match="would complete in about 2[12]"):  # 110 ms / (1 - 0.5)
        await batcher.submit(
            {"x": x}, 1, request_class=cls("routine"), deadline_ns=time.perf_counter_ns() + 200 * MS
        )
    engine.per_row = 0.0
    await asyncio.gather(blocker, *queued)
    await batcher.close()
