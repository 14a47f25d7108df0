"""The instance pool: weighted choice among free instances, per-instance batch limits, retiring a
device's instances and adding replacements while serving; and live profile samples written in bulk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from simulated_time import ManualClock, SimulatedExecutor, SimulatedRuntime

from medserve.hardware.live import LiveProfiles
from medserve.hardware.profile import ModelProfile, ProfilePoint
from medserve.hardware.profile_store import ProfileStore
from medserve.runtimes.base import EngineTensor, Runtime
from medserve.scheduling.batcher import DynamicBatcher
from medserve.scheduling.plan import InstanceGroup, ProfileKey
from medserve.scheduling.pool import InstancePool, Slot
from medserve.store.database import Database
from medserve.values.errors import StoreUnavailable


class Echo(Runtime):
    """Returns its input; remembers the batch sizes it ran and whether it was unloaded."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__(Path("echo"), {})
        self.batches: list[int] = []
        self.unloaded = False

    def load(self) -> None:
        pass

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 2))]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor("x", "FP32", (-1, 2))]

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"].shape[0])
        return {"x": inputs["x"]}

    def unload(self) -> None:
        self.unloaded = True


def test_free_instances_take_traffic_in_proportion_to_their_weights() -> None:
    fast, slow = Echo(), Echo()
    pool = InstancePool(
        [fast, slow], "p", [Slot(fast, "cuda:0", "echo", 0, 3.0), Slot(slow, "cpu", "echo", 0, 1.0)]
    )
    taken = []
    for _ in range(40):
        slot = pool.best()
        assert slot is not None
        taken.append(slot.device)
        pool.take(slot, 1)
        pool.release(slot.instance)
    assert taken.count("cuda:0") == 30 and taken.count("cpu") == 10


def test_slots_must_describe_the_instances_and_weights_be_positive() -> None:
    a, b = Echo(), Echo()
    with pytest.raises(ValueError, match="slots must describe the instances"):
        InstancePool([a, b], "p", [Slot(a, "cpu", "echo")])
    with pytest.raises(ValueError, match="weight must be > 0"):
        InstancePool([a], "p", [Slot(a, "cpu", "echo", 0, 0.0)])
    with pytest.raises(ValueError, match="at least one instance"):
        InstancePool([], "p")
    with pytest.raises(ValueError, match="at least one instance"):
        InstanceGroup("echo", "cpu", "m", {}, 0, 1)


async def test_retire_unloads_free_instances_now_and_busy_ones_when_released() -> None:
    a, b, c = Echo(), Echo(), Echo()
    pool = InstancePool(
        [a, b, c], "p", [Slot(a, "cuda:0", "echo"), Slot(b, "cuda:0", "echo"), Slot(c, "cpu", "echo")]
    )
    busy = await pool.acquire()
    assert busy is a
    assert pool.retire("cuda:0") == 2
    await pool.call(lambda: None)  # the unload ran on the pool's worker thread
    assert b.unloaded and not a.unloaded and len(pool) == 1 and pool.devices() == ["cpu"]
    pool.release(a)
    await pool.call(lambda: None)
    assert a.unloaded and pool.idle() == 1
    replacement = Echo()
    pool.add(Slot(replacement, "cpu", "echo"))
    assert len(pool) == 2 and pool.idle() == 2
    pool.shutdown()
    assert c.unloaded and replacement.unloaded


async def test_each_instance_gets_batches_within_its_own_limit() -> None:
    clock = ManualClock()  # simulated time: both instances take 50 ms an execution
    executor = SimulatedExecutor(clock)
    small, large = SimulatedRuntime(executor, 50, device="npu"), SimulatedRuntime(executor, 50, device="gpu")
    slots = [Slot(small, "npu", "simulated", 2), Slot(large, "gpu", "simulated", 8)]
    pool = InstancePool([small, large], "p", slots, executor=executor)
    batcher = DynamicBatcher(pool, ["y"], batching=True, max_batch_size=8, clock=clock)
    x = np.zeros((1, 3), np.float32)
    await clock.run(*(batcher.submit({"x": x}, 1) for _ in range(20)))
    await batcher.close()
    # at 0 ms and again at 50 ms, each takes a batch at its own limit, the one furthest behind first
    assert small.batches() == [2, 2] and large.batches() == [8, 8]
    assert [start for _, start, _ in small.spans] == [start for _, start, _ in large.spans]


def _store(tmp_path: Path) -> tuple[ProfileStore, ProfileKey]:
    database = Database(f"sqlite:///{tmp_path / 'p.db'}")
    database.migrate()
    store = ProfileStore(database)
    point = ProfilePoint("onnxruntime", "cpu", 1, p50_ms=10.0, p99_ms=20.0, throughput=100.0, samples=5)
    store.save(ModelProfile("m", 1, "d" * 64, "f" * 64, datetime.now(UTC), (point,)))
    return store, ProfileKey("m", "d" * 64, "f" * 64)


def test_live_samples_are_written_in_the_background_once_the_interval_has_passed(tmp_path: Path) -> None:
    store, key = _store(tmp_path)
    now = [0.0]
    live = LiveProfiles(store, interval_s=10.0, clock=lambda: now[0])
    for _ in range(5):
        live.record(key, "onnxruntime", "cpu", 1, 2.0)
    assert live.written == 0  # not due yet
    now[0] = 11.0
    live.record(key, "onnxruntime", "cpu", 1, 2.0)
    live.record(key, "onnxruntime", "cpu", 7, 2.0)  # batch 7 was never profiled: nothing to update
    live.close()
    profile = store.latest("m", "d" * 64, "f" * 64)
    assert profile is not None
    (point,) = profile.points
    assert point.source == "live" and point.samples == 5 + 6
    assert point.p50_ms is not None and point.p50_ms < 10.0


def test_an_unavailable_store_drops_the_samples_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, key = _store(tmp_path)

    def unavailable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("database is locked")

    store.update_live = unavailable  # type: ignore[method-assign]
    live = LiveProfiles(store, interval_s=3600)
    live.record(key, "onnxruntime", "cpu", 1, 2.0)
    assert live.flush() == 0
    assert live.dropped == 1 and "database is locked" in caplog.text
