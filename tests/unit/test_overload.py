"""Overload: the client's deadline reaches the scheduler, queued work whose deadline passed or whose
caller left is dropped before it runs (and counted by reason), and admission refuses at arrival what
cannot be served in time, with a Retry-After from the queue's measured drain time.

The batcher runs on a manual clock (``simulated_time``), so every drop and every Retry-After is exact.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from simulated_time import MS, ManualClock, SimulatedExecutor, SimulatedRuntime
from starlette.datastructures import Headers

from medserve.core.metrics import ServingMetrics
from medserve.core.model import LoadedVersion, ServedModel
from medserve.repository.config import ModelConfig, TensorConfig
from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher, ScheduledResult
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClass, resolve_request_class
from medserve.transport.http_deadline import REQUEST_TIMEOUT, client_deadline_ns
from medserve.values.errors import DeadlineExceeded, InvalidInput, Overloaded
from medserve.values.types import InferenceRequest, Tensor


def klass(name: str) -> PriorityClass:
    found = DEFAULT_CLASSES.named(name)
    assert found is not None
    return found


STAT, ROUTINE, BULK = klass("stat"), klass("routine"), klass("bulk")


def rows(tag: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), tag, np.float32)}


class Rig:
    """One batcher over one simulated engine on a manual clock; drops are recorded by reason."""

    def __init__(self, per_batch_ms: float, max_queue_size: int | None = None) -> None:
        self.clock = ManualClock()
        executor = SimulatedExecutor(self.clock)
        self.engine = SimulatedRuntime(executor, per_batch_ms)
        self.drops: list[str] = []
        self.batcher = DynamicBatcher(
            InstancePool([self.engine], "slow", executor=executor),
            ["y"],
            batching=False,
            max_batch_size=1,
            max_queue_size=max_queue_size,
            label="model 'slow' version 1",
            clock=self.clock,
            on_drop=self.drops.append,
        )

    def send(self, tag: float, cls: PriorityClass, ms: float | None = None) -> asyncio.Task[ScheduledResult]:
        deadline = None if ms is None else self.clock.after(ms)
        return asyncio.create_task(self.batcher.submit(rows(tag), 1, request_class=cls, deadline_ns=deadline))


async def test_work_that_leaves_the_queue_unrun_is_counted_by_reason() -> None:
    rig = Rig(per_batch_ms=50, max_queue_size=3)
    blocker = rig.send(0, ROUTINE)
    await rig.clock.advance(10)
    expiring = rig.send(1, ROUTINE, ms=20)
    leaving = rig.send(2, ROUTINE, ms=5000)
    shed = rig.send(3, BULK)
    await rig.clock.advance(5)
    leaving.cancel()  # its client went away
    await rig.clock.advance(0)
    assert rig.drops == ["client_gone"]
    stat = [rig.send(4, STAT), rig.send(5, STAT)]  # the second one sheds the bulk request
    await rig.clock.advance(15)  # 30 ms: the first request's deadline passes in the queue
    assert rig.drops == ["client_gone", "shed", "deadline"]
    results = await rig.clock.run(blocker, expiring, shed, *stat)
    assert [type(r).__name__ for r in results] == [
        "ScheduledResult",
        "DeadlineExceeded",
        "Overloaded",
        "ScheduledResult",
        "ScheduledResult",
    ]
    assert rig.engine.order() == [0, 4, 5]  # nothing dropped ever ran
    assert rig.batcher.queue_depth() == 0
    await rig.batcher.close()


async def test_a_caller_that_leaves_frees_its_place_at_once_and_retry_after_follows_the_drain() -> None:
    rig = Rig(per_batch_ms=1000)
    await rig.clock.run(rig.send(0, ROUTINE))  # measured: 1 s an execution
    blocker = rig.send(1, ROUTINE)  # runs now, until 1 s from here
    await rig.clock.advance(0)
    queued = [rig.send(10 + k, ROUTINE, ms=60_000) for k in range(4)]
    await rig.clock.advance(0)
    late = rig.clock.after(2500)
    # 1 s left of the blocker + 4 routine seconds ahead + 1 s of its own = 6 s; routine work arrives at
    # 0.6 items/s (6 in the last 10 s) and goes first, taking 60 % of the instance: 6 s / 0.4 = 15 s,
    # 12.5 s more than the 2.5 s it has
    with pytest.raises(Overloaded) as refused:
        await rig.batcher.submit(rows(99), 1, request_class=BULK, deadline_ns=late)
    assert refused.value.retry_after_s == pytest.approx(12.5)
    assert "would complete in about 15000 ms" in str(refused.value)
    for task in queued[:2]:
        task.cancel()
    await rig.clock.advance(0)  # no execution ended meanwhile: they left the queue when cancelled
    assert rig.batcher.queue_depth() == 2 and rig.drops == ["client_gone", "client_gone"]
    with pytest.raises(Overloaded) as refused:  # now (1 + 2 + 1) s / 0.4 = 10 s against 2.5 s
        await rig.batcher.submit(rows(98), 1, request_class=BULK, deadline_ns=late)
    assert refused.value.retry_after_s == pytest.approx(7.5)
    fits = rig.send(50, BULK, ms=10_000)  # 10 s left: admitted, and served (at 4 s) in time
    results = await rig.clock.run(blocker, *queued[2:], fits)
    assert all(isinstance(r, ScheduledResult) for r in results)
    assert rig.engine.order() == [0, 1, 12, 13, 50]
    await rig.batcher.close()


def test_the_earliest_of_class_timeout_and_client_deadline_wins() -> None:
    arrival = 1_000_000 * MS
    _, deadline = resolve_request_class({}, DEFAULT_CLASSES, arrival, arrival + 2_000 * MS)
    assert deadline == arrival + 2_000 * MS  # the client's 2 s beats routine's 30 s
    _, deadline = resolve_request_class({"timeout": 500_000}, DEFAULT_CLASSES, arrival, arrival + 2_000 * MS)
    assert deadline == arrival + 500 * MS  # the timeout parameter's 0.5 s beats both
    _, deadline = resolve_request_class({"priority": 1}, DEFAULT_CLASSES, arrival, arrival + 2_000 * MS)
    assert deadline == arrival + 1_000 * MS  # stat's 1 s beats the client's 2 s
    _, deadline = resolve_request_class({"priority": 4}, DEFAULT_CLASSES, arrival, arrival + 2_000 * MS)
    assert deadline == arrival + 2_000 * MS  # bulk has none of its own: the client's
    _, deadline = resolve_request_class({"priority": 4}, DEFAULT_CLASSES, arrival, None)
    assert deadline is None


@pytest.mark.parametrize(
    ("value", "seconds"), [("2", 2.0), ("0.25", 0.25), (" 1.5 ", 1.5), ("86400", 86400.0)]
)
def test_the_request_timeout_header_is_a_deadline_from_arrival(value: str, seconds: float) -> None:
    arrived = 5_000 * MS
    assert client_deadline_ns(Headers({REQUEST_TIMEOUT: value}), arrived) == arrived + round(seconds * 1e9)
    assert client_deadline_ns(Headers({}), arrived) is None


@pytest.mark.parametrize("value", ["", "abc", "0", "0.0", "-1", "inf", "nan", "1e3", "86401", "2s", "1.2.3"])
def test_a_bad_request_timeout_header_is_invalid_input_naming_it(value: str) -> None:
    with pytest.raises(InvalidInput, match=f"header {REQUEST_TIMEOUT} must be a number of seconds") as bad:
        client_deadline_ns(Headers({REQUEST_TIMEOUT: value}), 0)
    assert f"got '{value}'" in str(bad.value)


# -- a served model (real worker thread, real time) --------------------------------------------------
class Sleeping(Runtime):
    """Sleeps 50 ms per execution (releasing the GIL) and logs each execution's tag."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__(Path("slow"), {})
        self.log: list[float] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 3))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        time.sleep(0.05)
        self.log.append(float(inputs["x"].reshape(-1)[0]))
        return {"y": inputs["x"].sum(axis=-1, keepdims=True)}


def dropped(metrics: ServingMetrics, reason: str) -> float | None:
    labels = {"model": "slow", "version": "1", "reason": reason}
    return metrics.registry.get_sample_value("medserve_requests_dropped_total", labels)


async def test_a_served_model_takes_the_door_s_client_deadline_and_counts_drops() -> None:
    engine = Sleeping()
    config = ModelConfig(name="slow", runtime="slow", max_batch_size=0, max_queue_size=64)
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
    model = ServedModel(loaded, metrics)
    assert [dropped(metrics, r) for r in ("deadline", "client_gone", "shed")] == [0.0, 0.0, 0.0]

    def request(tag: float, deadline_ns: int | None = None, **parameters: int) -> InferenceRequest:
        x = Tensor("x", "FP32", (3,), np.full(3, tag, np.float32))
        return InferenceRequest("slow", inputs=[x], parameters=dict(parameters), deadline_ns=deadline_ns)

    await model.infer(request(0))  # measured: at least 50 ms
    backlog = [asyncio.ensure_future(model.infer(request(10 + k))) for k in range(10)]
    await asyncio.sleep(0)
    # class bulk has no deadline of its own: the client's 80 ms is the one (it could run alone in it),
    # and 10 × 50 ms are ahead
    with pytest.raises(Overloaded, match=r"saturated: this 'bulk' request has (80|79|78) ms left"):
        await model.infer(request(99, time.perf_counter_ns() + 80 * MS, priority=4))
    leaving = asyncio.ensure_future(model.infer(request(98)))
    await asyncio.sleep(0)
    leaving.cancel()  # its client went away while it was queued
    with pytest.raises(DeadlineExceeded, match="passed after"):  # even alone it misses: queued, expires
        await model.infer(request(97, time.perf_counter_ns() + 25 * MS, priority=4))
    await asyncio.gather(*backlog)
    assert engine.log == [0.0, *(10.0 + k for k in range(10))]  # 99, 98 and 97 never ran
    assert [dropped(metrics, r) for r in ("deadline", "client_gone", "shed")] == [1.0, 1.0, 0.0]
    await model.close()
