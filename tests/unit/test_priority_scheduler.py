"""The SLO-aware batcher under load: a slow engine (a GIL-free sleep per execution) and real worker
threads, so precedence, admission control, bounded queues and expiry are exercised as in serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from starlette.requests import Request

from medserve.core.metrics import ServingMetrics
from medserve.core.model import LoadedVersion, ServedModel
from medserve.repository.config import DynamicBatching, ModelConfig, TensorConfig
from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher
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


class SlowRuntime(Runtime):
    """Sleeps ``per_batch + per_row * rows`` seconds (releasing the GIL) and logs each execution's tags
    (the first element of each row)."""

    name = "slow"

    def __init__(self, per_batch: float = 0.02, per_row: float = 0.0) -> None:
        super().__init__(Path("slow"), {})
        self.per_batch = per_batch
        self.per_row = per_row
        self.log: list[list[float]] = []

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 3))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("y", "FP32", (-1, 1))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        rows = x.reshape(x.shape[0], -1) if x.ndim == 2 else x.reshape(1, -1)
        time.sleep(self.per_batch + self.per_row * rows.shape[0])
        self.log.append([float(v) for v in rows[:, 0]])
        y = rows.sum(axis=1, keepdims=True)
        return {"y": y if x.ndim == 2 else y[0]}

    def order(self) -> list[float]:
        return [tag for batch in self.log for tag in batch]


def make(
    *,
    per_batch: float = 0.02,
    per_row: float = 0.0,
    batching: bool = False,
    max_batch: int = 1,
    max_queue_size: int | None = None,
) -> tuple[DynamicBatcher, SlowRuntime]:
    engine = SlowRuntime(per_batch, per_row)
    batcher = DynamicBatcher(
        InstancePool([engine], "slow"),
        ["y"],
        batching=batching,
        max_batch_size=max_batch,
        max_queue_size=max_queue_size,
        label="model 'slow' version 1",
    )
    return batcher, engine


def rows(tag: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), tag, np.float32)}


def deadline(ms: float) -> int:
    return time.perf_counter_ns() + int(ms * 1_000_000)


async def submit(
    batcher: DynamicBatcher, tag: float, cls: PriorityClass, ms: float | None = None, n: int = 1
) -> Any:
    return await batcher.submit(
        rows(tag, n), n, request_class=cls, deadline_ns=None if ms is None else deadline(ms)
    )


async def settle(results: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*results, return_exceptions=True))


# -- ordering ----------------------------------------------------------------------------------
async def test_stat_overtakes_queued_routine_and_edf_orders_within_a_class() -> None:
    batcher, engine = make(per_batch=0.03)
    tasks = [asyncio.create_task(submit(batcher, 0, ROUTINE))]  # runs first
    await asyncio.sleep(0.01)
    tasks += [
        asyncio.create_task(submit(batcher, 1, ROUTINE, 9000)),
        asyncio.create_task(submit(batcher, 2, ROUTINE, 3000)),
        asyncio.create_task(submit(batcher, 3, BULK)),
        asyncio.create_task(submit(batcher, 4, ROUTINE, 6000)),
        asyncio.create_task(submit(batcher, 5, URGENT, 5000)),
    ]
    await asyncio.sleep(0.005)
    tasks.append(asyncio.create_task(submit(batcher, 6, STAT)))  # arrives last, goes next
    outcomes = await settle(tasks)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    assert engine.order() == [0, 6, 5, 2, 4, 1, 3]
    await batcher.close()


async def test_batches_fill_in_urgency_order_and_never_let_a_lower_class_pass() -> None:
    batcher, engine = make(per_batch=0.03, batching=True, max_batch=4)
    blocker = asyncio.create_task(submit(batcher, 0, ROUTINE))
    await asyncio.sleep(0.01)
    tasks = [asyncio.create_task(submit(batcher, tag, ROUTINE)) for tag in (1, 2, 3)]
    tasks.append(asyncio.create_task(submit(batcher, 10, STAT)))
    wide = asyncio.create_task(
        batcher.submit({"x": np.full((1, 5), 20, np.float32)}, 1, request_class=URGENT)
    )
    await settle([blocker, *tasks, wide])
    # after the blocker: the stat request with the routine ones filling its batch would let routine
    # requests pass the waiting (incompatible) urgent one, so the stat batch goes alone
    assert engine.log[1] == [10.0]
    assert engine.log[2] == [20.0]
    assert engine.log[3] == [1.0, 2.0, 3.0]
    await batcher.close()


# -- overload ------------------------------------------------------------------------------------
def served(
    per_batch: float = 0.02, max_queue_size: int = 1024
) -> tuple[ServedModel, SlowRuntime, ServingMetrics]:
    engine = SlowRuntime(per_batch)
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


async def test_under_overload_stat_meets_its_deadlines_while_routine_is_refused_at_once() -> None:
    model, engine, metrics = served(per_batch=0.02)
    for tag in range(3):  # measured service time: ~20 ms an execution
        await model.infer(request(tag))

    async def timed(coro: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        try:
            result: Any = await coro
        except Exception as exc:
            result = exc
        return result, time.perf_counter() - started

    async def stat_stream() -> list[tuple[Any, float]]:
        answers = []
        for tag in range(100, 105):
            answers.append(await timed(model.infer(request(tag, priority=1))))
            await asyncio.sleep(0.02)
        return answers

    stats = asyncio.create_task(stat_stream())
    routine = await asyncio.gather(*(timed(model.infer(request(10 + i, timeout=150_000))) for i in range(40)))
    stat_answers = await stats

    # every stat request answered, well within its 1000 ms deadline
    assert all(not isinstance(r, BaseException) for r, _ in stat_answers), stat_answers
    assert max(elapsed for _, elapsed in stat_answers) < 0.5
    refused = [(r, t) for r, t in routine if isinstance(r, Overloaded)]
    served_ok = [r for r, _ in routine if not isinstance(r, BaseException)]
    others = [r for r, _ in routine if isinstance(r, BaseException) and not isinstance(r, Overloaded)]
    assert len(refused) >= 25 and len(served_ok) >= 2
    assert all(isinstance(r, DeadlineExceeded) for r in others)
    for error, elapsed in refused:
        assert elapsed < 0.1  # refused at once, not after queueing
        assert error.retry_after_s is not None and error.retry_after_s >= 1
        assert "'routine'" in str(error) and "ms left of its deadline" in str(error)
        assert "saturated" in str(error)
    assert [t for t in engine.order() if t >= 100] == [100, 101, 102, 103, 104]

    stat = outcomes(metrics, "stat")
    assert stat == {"met_deadline": 5, "missed_deadline": 0, "expired": 0, "rejected": 0}
    routine_counts = outcomes(metrics, "routine")
    assert routine_counts["rejected"] == len(refused)
    assert routine_counts["expired"] == len(others)
    assert sum(routine_counts.values()) == 43  # + the 3 warm-up requests
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
    loaded = LoadedVersion("slow", 1, config, Path("s"), "0" * 64, [SlowRuntime()], tensors, out)
    model = ServedModel(loaded, ServingMetrics())
    batching = model.triton_config()["dynamic_batching"]
    await model.close()
    assert batching["priority_levels"] == 4 and batching["default_priority_level"] == 3
    assert batching["default_queue_policy"]["max_queue_size"] == 7


# -- bounded queue ------------------------------------------------------------------------------
async def test_a_full_queue_sheds_a_lower_class_or_refuses_the_newcomer() -> None:
    batcher, engine = make(per_batch=0.05, max_queue_size=3)
    blocker = asyncio.create_task(submit(batcher, 0, ROUTINE))
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(submit(batcher, tag, ROUTINE)) for tag in (1, 2, 3)]
    await asyncio.sleep(0)
    assert batcher.queue_depth() == 3 and batcher.queue_depth("routine") == 3
    with pytest.raises(Overloaded, match="queue full") as refused:
        await submit(batcher, 4, ROUTINE)
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
    with pytest.raises(Overloaded, match="queue full"):
        await submit(batcher, 5, BULK)
    stat = asyncio.create_task(submit(batcher, 6, STAT))  # sheds the least urgent routine request
    results = await settle([blocker, *queued, stat])
    assert isinstance(results[3], Overloaded) and "shed for a more urgent 'stat'" in str(results[3])
    assert [isinstance(r, BaseException) for r in results] == [False, False, False, True, False]
    assert engine.order() == [0, 6, 1, 2]
    assert batcher.queue_depth() == 0 and batcher.queue_depth("stat") == 0
    await batcher.close()


# -- expiry ----------------------------------------------------------------------------------------
async def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_promptly() -> None:
    batcher, engine = make(per_batch=0.2)
    blocker = asyncio.create_task(submit(batcher, 0, ROUTINE))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="passed after") as expired:
        await submit(batcher, 1, STAT, ms=40)
    assert time.perf_counter() - started < 0.15  # when its deadline passed, not when the engine was free
    assert "'stat'" in str(expired.value)
    with pytest.raises(DeadlineExceeded, match="before it was queued"):
        await submit(batcher, 2, STAT, ms=-1)
    await blocker
    assert engine.order() == [0]
    assert batcher.queue_depth() == 0 and batcher.queue_depth("stat") == 0
    await batcher.close()


async def test_a_cancelled_caller_s_request_is_not_run() -> None:
    batcher, engine = make(per_batch=0.05)
    blocker = asyncio.create_task(submit(batcher, 0, ROUTINE))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(submit(batcher, 1, ROUTINE, ms=5000))
    await asyncio.sleep(0.005)
    gone.cancel()
    await submit(batcher, 2, ROUTINE)
    await blocker
    assert engine.order() == [0, 2]
    await batcher.close()


# -- admission ------------------------------------------------------------------------------------
async def test_admission_admits_everything_before_the_first_measurement() -> None:
    batcher, _ = make(per_batch=0.03)
    first = await settle([submit(batcher, tag, ROUTINE, ms=100) for tag in range(10)])
    assert not [r for r in first if isinstance(r, Overloaded)]  # nothing measured: all admitted
    assert [r for r in first if isinstance(r, DeadlineExceeded)]  # ... and the late ones expired
    assert batcher.service_times.measured
    second = await settle([submit(batcher, tag, ROUTINE, ms=100) for tag in range(10)])
    refused = [r for r in second if isinstance(r, Overloaded)]
    assert len(refused) >= 4  # now the estimate refuses those that cannot make it
    await batcher.close()


async def test_a_request_that_misses_even_on_an_idle_model_is_still_run() -> None:
    batcher, engine = make(per_batch=0.05)
    await submit(batcher, 0, ROUTINE)  # measured: 50 ms
    await submit(batcher, 1, STAT, ms=30)  # cannot make 30 ms anyway: refusing would not help
    assert engine.order() == [0, 1]
    await batcher.close()


async def test_batch_size_is_cut_to_fit_the_tightest_deadline() -> None:
    batcher, engine = make(per_batch=0.0, per_row=0.02, batching=True, max_batch=8)
    for n in (1, 2, 4, 8):  # measured: ~20 ms a row
        await submit(batcher, 0, ROUTINE, n=n)
    blocker = asyncio.create_task(submit(batcher, 0, ROUTINE))
    await asyncio.sleep(0.005)
    loose = [asyncio.create_task(submit(batcher, tag, ROUTINE, ms=5000)) for tag in range(1, 9)]
    tight = asyncio.create_task(submit(batcher, 50, URGENT, ms=120))
    results = await settle([blocker, *loose, tight])
    assert not [r for r in results if isinstance(r, BaseException)], results
    after = engine.log[5:]
    assert after[0][0] == 50.0 and 2 <= len(after[0]) < 8  # not the full 8 rows: ~100 ms left
    assert sum(len(b) for b in after) == 9
    await batcher.close()


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
