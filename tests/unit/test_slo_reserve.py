"""The scheduler's protection of urgent classes (pure, no clock): the reserve that bounds lower-class
batches while urgent requests are about, the slack an urgent head keeps when lower-class requests
join its batch, admission estimates stretched by urgent arrivals, and service times seeded from a
profile; then the batcher applying them, in simulated time (``simulated_time``), so batch sizes and
estimates are exact. The batcher under overload is in test_priority_scheduler.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from simulated_time import ManualClock, SimulatedExecutor, SimulatedRuntime

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


def cls(name: str) -> PriorityClass:
    found = DEFAULT_CLASSES.named(name)
    if found is None:
        raise LookupError(name)
    return found


def simulated(
    *, per_batch_ms: float = 0.0, per_row_ms: float = 0.0, batching: bool, max_batch: int
) -> tuple[DynamicBatcher, SimulatedRuntime, ManualClock]:
    clock = ManualClock()
    executor = SimulatedExecutor(clock)
    engine = SimulatedRuntime(executor, per_batch_ms, per_row_ms)
    pool = InstancePool([engine], "s", executor=executor)
    batcher = DynamicBatcher(pool, ["y"], batching=batching, max_batch_size=max_batch, clock=clock)
    return batcher, engine, clock


async def test_while_stat_requests_come_routine_batches_stay_short_enough_for_them() -> None:
    batcher, engine, clock = simulated(per_row_ms=10, batching=True, max_batch=8)
    batcher.service_times.seed({b: b * 10 * MS for b in (1, 2, 4, 8)})
    x = np.zeros((1, 3), np.float32)

    def send(name: str, ms: float | None = None) -> asyncio.Task[object]:
        deadline = None if ms is None else clock.after(ms)
        return asyncio.create_task(batcher.submit({"x": x}, 1, request_class=cls(name), deadline_ns=deadline))

    await clock.run(*(send("routine") for _ in range(16)))
    assert engine.batches() == [8, 8]  # no urgent traffic: full batches
    engine.log.clear()
    results = await clock.run(send("stat", 35), *(send("routine") for _ in range(16)))
    assert not [r for r in results if isinstance(r, BaseException)]
    # the stat request (35 ms to spare) takes one routine request along: 20 ms + 10 ms of slack fit;
    # then, a stat request having come lately, routine batches take at most 35 - 10 = 25 ms (2 rows)
    assert engine.batches() == [2, 2, 2, 2, 2, 2, 2, 2, 1]
    await batcher.close()


async def test_admission_counts_the_urgent_requests_that_will_overtake() -> None:
    batcher, engine, clock = simulated(per_batch_ms=90, batching=False, max_batch=1)
    batcher.service_times.seed({1: 10 * MS})
    x = np.zeros((1, 3), np.float32)

    def routine(ms: float) -> asyncio.Task[object]:
        return asyncio.create_task(
            batcher.submit({"x": x}, 1, request_class=cls("routine"), deadline_ns=clock.after(ms))
        )

    blocker = asyncio.create_task(batcher.submit({"x": x}, 1, request_class=cls("bulk")))
    await clock.advance(0)  # the blocker runs for 90 ms (estimated: 10 ms)
    engine.per_batch_ms = 10
    await clock.advance(10)
    queued = [routine(150) for _ in range(10)]  # due before the request below: ahead of it (EDF)
    await clock.advance(0)
    # alone 10 ms; behind 10 queued (100 ms; the running one is estimated done): 110 ms, within 200 ms
    now = clock.now_ns()
    for i in range(500):  # then stat requests at 50 a second: half the instance goes to them
        batcher._arrivals.note(1, now - i * 20 * MS)
    with pytest.raises(Overloaded) as refused:  # 110 ms / (1 - 0.5)
        await batcher.submit({"x": x}, 1, request_class=cls("routine"), deadline_ns=clock.after(200))
    assert "has 200 ms left of its deadline but would complete in about 220 ms" in str(refused.value)
    assert "(10 request(s) of equal or higher urgency queued ahead, 1 execution(s) running)" in str(
        refused.value
    )
    results = await clock.run(blocker, *queued)
    # the blocker really took 90 ms: of the queued, those started by their deadline (at 160 ms) ran
    assert [type(r).__name__ for r in results[1:]] == ["ScheduledResult"] * 7 + ["DeadlineExceeded"] * 3
    await batcher.close()
