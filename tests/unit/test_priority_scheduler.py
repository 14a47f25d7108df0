"""The SLO-aware batcher under load: precedence, admission control, bounded queues and expiry.

The batcher runs in simulated time (``simulated_time``): each execution of the engine takes a stated
number of milliseconds on a clock the test advances, so every start, refusal, expiry and latency
below is exact. One test drives a ``ServedModel`` on real worker threads and real time, to check the
per-class outcome counters; it asserts relations between outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from simulated_time import MS, ManualClock, SimulatedExecutor, SimulatedRuntime
from starlette.requests import Request

from medserve.core.metrics import ServingMetrics
from medserve.core.model import LoadedVersion, ServedModel
from medserve.repository.config import DynamicBatching, ModelConfig, TensorConfig
from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher, ScheduledResult
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass
from medserve.transport import grpc as grpc_door
from medserve.transport.http import guarded, status_of
from medserve.values.errors import DeadlineExceeded, InvalidInput, Overloaded
from medserve.values.types import InferenceRequest, Tensor


def klass(name: str) -> PriorityClass:
    found = DEFAULT_CLASSES.named(name)
    if found is None:
        raise LookupError(name)
    return found


STAT, URGENT, ROUTINE, BULK = (klass(n) for n in ("stat", "urgent", "routine", "bulk"))


def rows(tag: float, n: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), tag, np.float32)}


@dataclass
class Rig:
    """A batcher over one simulated engine, on a manual clock."""

    batcher: DynamicBatcher
    engine: SimulatedRuntime
    clock: ManualClock

    def send(
        self, tag: float, cls: PriorityClass, ms: float | None = None, n: int = 1, width: int = 3
    ) -> asyncio.Task[ScheduledResult]:
        """Submit now; ``ms``: a deadline that many milliseconds from now."""
        deadline = None if ms is None else self.clock.after(ms)
        return asyncio.create_task(
            self.batcher.submit(rows(tag, n, width), n, request_class=cls, deadline_ns=deadline)
        )

    async def timed(self, task: Awaitable[ScheduledResult]) -> tuple[ScheduledResult | BaseException, int]:
        """The outcome of ``task`` and how long it took, in ms of simulated time."""
        started = self.clock.now_ns()
        try:
            result: ScheduledResult | BaseException = await task
        except Exception as exc:
            result = exc
        return result, (self.clock.now_ns() - started) // MS

    def starts(self) -> list[float]:
        """When each execution started, in ms since the rig was made."""
        return [(start - self.t0) / MS for _, start, _ in self.engine.spans]

    def __post_init__(self) -> None:
        self.t0 = self.clock.now_ns()


def make(
    *,
    per_batch_ms: float = 20.0,
    per_row_ms: float = 0.0,
    batching: bool = False,
    max_batch: int = 1,
    max_queue_size: int | None = None,
) -> Rig:
    clock = ManualClock()
    executor = SimulatedExecutor(clock)
    engine = SimulatedRuntime(executor, per_batch_ms, per_row_ms)
    batcher = DynamicBatcher(
        InstancePool([engine], "slow", executor=executor),
        ["y"],
        batching=batching,
        max_batch_size=max_batch,
        max_queue_size=max_queue_size,
        label="model 'slow' version 1",
        clock=clock,
    )
    return Rig(batcher, engine, clock)


# -- ordering ----------------------------------------------------------------------------------
async def test_stat_overtakes_queued_routine_and_edf_orders_within_a_class() -> None:
    rig = make(per_batch_ms=30)
    tasks = [rig.send(0, ROUTINE)]  # runs first
    await rig.clock.advance(10)
    tasks += [
        rig.send(1, ROUTINE, 9000),
        rig.send(2, ROUTINE, 3000),
        rig.send(3, BULK),
        rig.send(4, ROUTINE, 6000),
        rig.send(5, URGENT, 5000),
    ]
    await rig.clock.advance(5)
    tasks.append(rig.send(6, STAT))  # arrives last, goes next
    outcomes = await rig.clock.run(*tasks)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    assert rig.engine.order() == [0, 6, 5, 2, 4, 1, 3]
    assert rig.starts() == [0, 30, 60, 90, 120, 150, 180]
    await rig.batcher.close()


async def test_batches_fill_in_urgency_order_and_never_let_a_lower_class_pass() -> None:
    rig = make(per_batch_ms=30, batching=True, max_batch=4)
    blocker = rig.send(0, ROUTINE)
    await rig.clock.advance(10)
    tasks = [rig.send(tag, ROUTINE) for tag in (1, 2, 3)]
    tasks.append(rig.send(10, STAT))
    wide = rig.send(20, URGENT, width=5)  # cannot share a batch with the others
    await rig.clock.run(blocker, *tasks, wide)
    # after the blocker: the stat request with the routine ones filling its batch would let routine
    # requests pass the waiting (incompatible) urgent one, so the stat batch goes alone
    assert rig.engine.log == [[0.0], [10.0], [20.0], [1.0, 2.0, 3.0]]
    await rig.batcher.close()


# -- overload ------------------------------------------------------------------------------------
async def test_under_overload_stat_meets_its_deadlines_while_routine_is_refused_at_once() -> None:
    rig = make(per_batch_ms=20, max_queue_size=1024)
    await rig.clock.run(*(rig.send(tag, ROUTINE) for tag in range(3)))  # measured: 20 ms an execution
    t0 = rig.clock.now_ns()

    async def stat(j: int) -> tuple[ScheduledResult | BaseException, int]:
        await rig.clock.sleep_until(t0 + (5 + 30 * j) * MS)  # at 5, 35, 65, 95, 125 ms: mid-execution
        return await rig.timed(rig.send(100 + j, STAT))

    routine = [rig.timed(rig.send(10 + k, ROUTINE, 150)) for k in range(40)]
    results = await rig.clock.run(*(stat(j) for j in range(5)), *routine)
    stat_answers, routine_answers = results[:5], results[5:]

    # every stat request waits at most for the execution it arrived during, then runs: exactly
    assert [ms for _, ms in stat_answers] == [35, 25, 35, 25, 35]
    assert all(isinstance(r, ScheduledResult) for r, _ in stat_answers)
    # at 20 ms an execution, 7 routine requests fit in 150 ms: the other 33 are refused on arrival
    refused = [(r, ms) for r, ms in routine_answers if isinstance(r, Overloaded)]
    assert len(refused) == 33 and all(ms == 0 for _, ms in refused)  # refused on arrival, not queued
    assert str(refused[0][0]) == (
        "model 'slow' version 1 is saturated: this 'routine' request has 150 ms left of its deadline "
        "but would complete in about 160 ms (7 request(s) of equal or higher urgency queued ahead, "
        "0 execution(s) running); retry after 1 s or with a more urgent class"
    )
    assert all(r.retry_after_s == 1.0 for r, _ in refused)
    # of the 7 admitted, the stat requests that overtook them leave time for 3; 4 expire at 150 ms
    outcomes = [type(r).__name__ for r, _ in routine_answers[:7]]
    assert outcomes == ["ScheduledResult"] * 3 + ["DeadlineExceeded"] * 4
    assert rig.engine.order()[3:] == [10, 100, 101, 11, 102, 103, 12, 104]
    await rig.batcher.close()


# -- bounded queue ------------------------------------------------------------------------------
async def test_a_full_queue_sheds_a_lower_class_or_refuses_the_newcomer() -> None:
    rig = make(per_batch_ms=50, max_queue_size=3)
    blocker = rig.send(0, ROUTINE)
    await rig.clock.advance(10)
    queued = [rig.send(tag, ROUTINE) for tag in (1, 2, 3)]
    await rig.clock.advance(0)
    assert rig.batcher.queue_depth() == 3 and rig.batcher.queue_depth("routine") == 3
    with pytest.raises(Overloaded, match="queue full") as refused:
        await rig.batcher.submit(rows(4), 1, request_class=ROUTINE)
    assert refused.value.retry_after_s == 1.0  # nothing measured yet: the shortest advice
    with pytest.raises(Overloaded, match="queue full"):
        await rig.batcher.submit(rows(5), 1, request_class=BULK)
    stat = rig.send(6, STAT)  # sheds the least urgent routine request
    results = await rig.clock.run(blocker, *queued, stat)
    assert isinstance(results[3], Overloaded) and "shed for a more urgent 'stat'" in str(results[3])
    assert [isinstance(r, BaseException) for r in results] == [False, False, False, True, False]
    assert rig.engine.order() == [0, 6, 1, 2]
    assert rig.batcher.queue_depth() == 0 and rig.batcher.queue_depth("stat") == 0
    await rig.batcher.close()


# -- expiry ----------------------------------------------------------------------------------------
async def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_when_it_passes() -> None:
    rig = make(per_batch_ms=200)
    blocker = rig.send(0, ROUTINE)
    await rig.clock.advance(10)
    expiring = rig.send(1, STAT, ms=40)
    await rig.clock.advance(39.999)
    assert not expiring.done()
    await rig.clock.advance(0.001)  # its deadline: dropped now, not when the engine is free
    assert isinstance(expiring.exception(), DeadlineExceeded)
    assert str(expiring.exception()) == (
        "model 'slow' version 1: the deadline of this 'stat' request passed after 40 ms in the queue "
        "(0 more urgent request(s) still ahead); it was not run"
    )
    with pytest.raises(DeadlineExceeded, match="before it was queued"):
        await rig.batcher.submit(rows(2), 1, request_class=STAT, deadline_ns=rig.clock.now_ns())
    await rig.clock.run(blocker)
    assert rig.engine.order() == [0]
    assert rig.batcher.queue_depth() == 0 and rig.batcher.queue_depth("stat") == 0
    await rig.batcher.close()


async def test_a_cancelled_caller_s_request_is_not_run() -> None:
    rig = make(per_batch_ms=50)
    blocker = rig.send(0, ROUTINE)
    await rig.clock.advance(10)
    gone = rig.send(1, ROUTINE, ms=5000)
    await rig.clock.advance(5)
    gone.cancel()
    await rig.clock.run(blocker, rig.send(2, ROUTINE))
    assert rig.engine.order() == [0, 2]
    assert rig.starts() == [0, 50]
    await rig.batcher.close()


# -- admission ------------------------------------------------------------------------------------
async def test_admission_admits_everything_before_the_first_measurement() -> None:
    rig = make(per_batch_ms=30)
    first = await rig.clock.run(*(rig.send(tag, ROUTINE, ms=100) for tag in range(10)))
    # nothing measured: all admitted; 4 start within their 100 ms (at 0, 30, 60, 90), 6 expire
    assert [type(r).__name__ for r in first] == ["ScheduledResult"] * 4 + ["DeadlineExceeded"] * 6
    assert rig.batcher.service_times.snapshot() == {1: 30 * MS}
    second = await rig.clock.run(*(rig.send(tag, ROUTINE, ms=100) for tag in range(10)))
    # now the estimate admits those that can make it (3 × 30 ms within 100 ms) and refuses the rest
    assert [type(r).__name__ for r in second] == ["ScheduledResult"] * 3 + ["Overloaded"] * 7
    await rig.batcher.close()


async def test_a_request_that_misses_even_on_an_idle_model_is_still_run() -> None:
    rig = make(per_batch_ms=50)
    await rig.clock.run(rig.send(0, ROUTINE))  # measured: 50 ms
    arrived = (rig.clock.now_ns() - rig.t0) / MS
    (late,) = await rig.clock.run(rig.send(1, STAT, ms=30))  # cannot make 30 ms: refusing would not help
    assert isinstance(late, ScheduledResult)
    assert rig.engine.order() == [0, 1] and rig.starts()[1] == arrived
    await rig.batcher.close()


async def test_batch_size_is_cut_to_fit_the_tightest_deadline() -> None:
    rig = make(per_batch_ms=0, per_row_ms=20, batching=True, max_batch=8)
    for n in (1, 2, 4, 8):  # measured: 20 ms a row
        await rig.clock.run(rig.send(0, ROUTINE, n=n))
    blocker = rig.send(0, ROUTINE)  # 20 ms
    await rig.clock.advance(5)
    loose = [rig.send(tag, ROUTINE, ms=5000) for tag in range(1, 9)]
    tight = rig.send(50, URGENT, ms=120)
    results = await rig.clock.run(blocker, *loose, tight)
    assert not [r for r in results if isinstance(r, BaseException)], results
    # 15 ms after it came, 105 ms are left: 4 rows (80 ms) leave the urgent head one lone execution of
    # slack, 5 would not; the routine rest then runs within the reserve an urgent request needs (100 ms)
    assert rig.engine.log[5:] == [[50.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]]
    await rig.batcher.close()


# -- a served model's outcome counters (real worker threads, real time) ------------------------------
class SleepingRuntime(Runtime):
    """Sleeps ``seconds`` per execution (releasing the GIL) and logs each execution's tags."""

    name = "slow"

    def __init__(self, seconds: float = 0.02) -> None:
        super().__init__(Path("slow"), {})
        self.seconds = seconds
        self.log: list[float] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 3))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        x = inputs["x"]
        self.log.append(float(x.reshape(-1)[0]))
        return {"y": np.atleast_1d(x.sum(axis=-1, keepdims=True))}


def served(max_queue_size: int = 1024) -> tuple[ServedModel, SleepingRuntime, ServingMetrics]:
    engine = SleepingRuntime(0.02)
    config = ModelConfig(name="slow", runtime="slow", max_batch_size=0, max_queue_size=max_queue_size)
    loaded = LoadedVersion(
        "slow",
        1,
        config,
        Path("slow"),
        "0" * 64,
        [engine],
        [TensorConfig(name="x", datatype="FP32", dims=[3])],
        [TensorConfig(name="y", datatype="FP32", dims=[1])],
    )
    metrics = ServingMetrics()
    return ServedModel(loaded, metrics), engine, metrics


def request(tag: float, **parameters: Any) -> InferenceRequest:
    data = np.full(3, tag, np.float32)
    return InferenceRequest("slow", inputs=[Tensor("x", "FP32", (3,), data)], parameters=parameters)


def outcomes(metrics: ServingMetrics, cls: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for outcome in ("met_deadline", "missed_deadline", "expired", "rejected"):
        labels = {"model": "slow", "version": "1", "class": cls, "outcome": outcome}
        found[outcome] = metrics.registry.get_sample_value("medserve_requests_by_class_total", labels) or 0.0
    return found


async def test_a_served_model_counts_each_request_under_its_class_and_outcome() -> None:
    model, engine, metrics = served()
    for tag in range(3):  # measured: at least 20 ms an execution
        await model.infer(request(tag))
    stat = [model.infer(request(100 + j, priority=1)) for j in range(5)]
    routine = [model.infer(request(10 + k, timeout=150_000)) for k in range(40)]
    results = await asyncio.gather(*stat, *routine, return_exceptions=True)
    stat_results, routine_results = results[:5], results[5:]

    assert not [r for r in stat_results if isinstance(r, BaseException)]
    assert engine.log[3:8] == [100, 101, 102, 103, 104]  # queued together: stat first, in arrival order
    refused = [r for r in routine_results if isinstance(r, Overloaded)]
    expired = [r for r in routine_results if isinstance(r, DeadlineExceeded)]
    answered = [r for r in routine_results if not isinstance(r, BaseException)]
    # 5 stat executions of at least 20 ms go first: at most 2 routine requests fit in 150 ms
    assert len(refused) >= 38 and len(refused) + len(expired) + len(answered) == 40
    assert all("saturated" in str(r) for r in refused)

    assert outcomes(metrics, "stat") == {"met_deadline": 5, "missed_deadline": 0, "expired": 0, "rejected": 0}
    counts = outcomes(metrics, "routine")
    assert counts["rejected"] == len(refused) and counts["expired"] == len(expired)
    assert counts["met_deadline"] + counts["missed_deadline"] == len(answered) + 3  # + the warm-up
    await model.close()


async def test_bad_priority_parameters_are_invalid_input_and_not_counted() -> None:
    model, engine, metrics = served()
    with pytest.raises(InvalidInput, match="unknown priority class 'vip'"):
        await model.infer(request(1, priority_class="vip"))
    with pytest.raises(InvalidInput, match="'timeout'"):
        await model.infer(request(1, timeout=-1))
    assert engine.log == []
    assert sum(outcomes(metrics, "routine").values()) == 0
    await model.close()


async def test_triton_config_shows_priority_levels_and_queue_bound() -> None:
    config = ModelConfig(name="slow", max_batch_size=4, dynamic_batching=DynamicBatching(), max_queue_size=7)
    tensors = [TensorConfig(name="x", datatype="FP32", dims=[3])]
    out = [TensorConfig(name="y", datatype="FP32", dims=[1])]
    loaded = LoadedVersion("slow", 1, config, Path("s"), "0" * 64, [SleepingRuntime()], tensors, out)
    model = ServedModel(loaded, ServingMetrics())
    batching = model.triton_config()["dynamic_batching"]
    await model.close()
    assert batching["priority_levels"] == 4 and batching["default_priority_level"] == 3
    assert batching["default_queue_policy"]["max_queue_size"] == 7


# -- status codes ----------------------------------------------------------------------------------
async def test_http_and_grpc_status_of_scheduling_errors() -> None:
    assert status_of(Overloaded("busy")) == 503
    assert status_of(DeadlineExceeded("late")) == 504
    assert status_of(InvalidInput("bad priority")) == 400

    async def refuse(request: Request) -> Any:
        raise Overloaded("model 'm' is saturated", retry_after_s=2.2)

    response = await guarded(refuse)(cast(Request, None))
    assert response.status_code == 503 and response.headers["retry-after"] == "3"

    async def late(request: Request) -> Any:
        raise DeadlineExceeded("too late")

    response = await guarded(late)(cast(Request, None))
    assert response.status_code == 504 and "retry-after" not in response.headers

    assert grpc_door.status_code_for(Overloaded("x")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_door.status_code_for(DeadlineExceeded("x")) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_door.status_code_for(InvalidInput("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_door._retry_trailers(Overloaded("x", retry_after_s=2.5)) == (
        ("retry-after", "3"),
        ("grpc-retry-pushback-ms", "2500"),
    )
    assert grpc_door._retry_trailers(Overloaded("x")) == ()
