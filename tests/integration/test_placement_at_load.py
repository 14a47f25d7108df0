"""Placement applied when a model loads, device-fault failover while serving, live profile updates and
energy counters, on the small ``simple`` model with real engines.

A test-only runtime (``DeviceOrt``: ONNX Runtime on the CPU that reports the device it was given and
raises a CUDA error on the devices a test marks faulty) stands in for an accelerator, so placement
over two devices and failover run for real on a machine without a GPU.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.demo.models.repository import build_example_repository
from medserve.hardware.devices import Device, Discovery, hardware_fingerprint
from medserve.hardware.placer import HardwarePlacer
from medserve.hardware.profile import ModelProfile, ProfilePoint
from medserve.hardware.profile_store import ProfileStore
from medserve.repository.repository import ModelRepository
from medserve.runtimes import register_runtime, unregister_runtime
from medserve.runtimes.base import Declaration
from medserve.runtimes.onnxruntime import OnnxRuntime
from medserve.store.database import Database
from medserve.values.digest import sha256_file
from medserve.values.errors import InferenceFailed, InvalidConfig, ModelNotReady
from medserve.values.types import InferenceRequest, InferenceResponse, Tensor

CPU = Device("cpu", "cpu", "test CPU", None, 2, (), ("onnxruntime", "openvino"))
GPU = Device("cuda:0", "cuda", "test accelerator", 1 << 30, 1, (), ("device_ort",))
DISCOVERY = Discovery(devices=[CPU, GPU], providers=["CPUExecutionProvider"], problems=[])
FINGERPRINT = hardware_fingerprint(DISCOVERY)


class DeviceOrt(OnnxRuntime):
    """ONNX Runtime on the CPU that says it runs on ``runtime_options.device``; runs on a device in
    ``faulty`` raise what a CUDA engine raises when its device is in trouble."""

    name = "device_ort"
    faulty: ClassVar[set[str]] = set()
    runs: ClassVar[dict[str, int]] = {}

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        options = dict(options)
        self._where_to = str(options.pop("device", "cpu"))
        super().__init__(artifact, options, declared=declared)

    def device(self) -> str:
        return self._where_to

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if self._where_to in self.faulty:
            raise InferenceFailed("device_ort: CUDA error: an illegal memory access was encountered")
        DeviceOrt.runs[self._where_to] = DeviceOrt.runs.get(self._where_to, 0) + 1
        return super().run(inputs, output_names)


@pytest.fixture(autouse=True)
def device_runtime() -> Iterator[None]:
    register_runtime("device_ort", DeviceOrt)
    DeviceOrt.faulty.clear()
    DeviceOrt.runs.clear()
    yield
    unregister_runtime("device_ort")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("built")
    build_example_repository(root, models=["simple"])
    return root


@pytest.fixture()
def repo(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repository"
    shutil.copytree(built / "simple", target / "simple")
    return target


@pytest.fixture()
def store(tmp_path: Path) -> ProfileStore:
    database = Database(f"sqlite:///{tmp_path / 'profiles.db'}")
    database.migrate()
    return ProfileStore(database)


def configure(repo: Path, **changes: Any) -> None:
    path = repo / "simple" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


def point(runtime: str, device: str, batch: int, p50: float, throughput: float) -> ProfilePoint:
    return ProfilePoint(
        runtime,
        device,
        batch,
        p50_ms=p50,
        p99_ms=p50 * 1.5,
        throughput=throughput,
        joules_per_inference=0.01,
        energy_source="estimated",
        artifact="model.onnx",
        samples=10,
    )


def save_profile(
    store: ProfileStore, repo: Path, points: list[ProfilePoint], digest: str | None = None
) -> None:
    artifact = repo / "simple" / "1" / "model.onnx"
    store.save(
        ModelProfile(
            "simple", 1, digest or sha256_file(artifact), FINGERPRINT, datetime.now(UTC), tuple(points)
        )
    )


def registry_for(repo: Path, store: ProfileStore, metrics: ServingMetrics | None = None) -> ModelRegistry:
    placer = HardwarePlacer(store, discovery=DISCOVERY, live_interval_s=3600)
    return ModelRegistry(ModelRepository(repo), metrics or ServingMetrics(), placer=placer)


def request(value: float = 1.0, rows: int = 1) -> InferenceRequest:
    x = np.full((rows, 16), value, np.float32)
    return InferenceRequest(
        "simple",
        "",
        "r",
        [Tensor("INPUT0", "FP32", x.shape, x), Tensor("INPUT1", "FP32", x.shape, x)],
        [],
        {},
    )


def output0(response: InferenceResponse) -> np.ndarray:
    tensor = next(t for t in response.outputs if t.name == "OUTPUT0")
    return np.asarray(tensor.data)


def counter(metrics: ServingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- placement at load ---------------------------------------------------------------------------
async def test_placement_auto_creates_the_instances_the_profile_chose(
    repo: Path, store: ProfileStore
) -> None:
    configure(repo, placement="auto", objective="throughput", slo=50, instance_count=2)
    save_profile(
        store,
        repo,
        [
            point("onnxruntime", "cpu", 1, 1.0, 1000),
            point("onnxruntime", "cpu", 4, 2.0, 2000),
            point("openvino", "cpu", 1, 0.8, 1250),
            point("openvino", "cpu", 4, 1.2, 3300),
            point("openvino", "cpu", 8, 40.0, 4000),  # p99 60 ms: beyond the SLO
        ],
    )
    registry = registry_for(repo, store)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        slots = model.pool.slots
        # one instance: on the CPU a second would only share the cores the first already uses
        assert [(s.runtime, s.device, s.max_batch_size) for s in slots] == [("openvino", "cpu", 4)]
        assert model.plan.source == "profile" and model.plan.profile is not None
        meta = model.metadata(["1"]).parameters
        assert meta["runtime"] == "openvino" and meta["device"] == "cpu"
        placed = meta["placement"]
        assert placed["source"] == "profile" and "objective throughput" in placed["explanation"]
        assert placed["instances"] == [
            {
                "device": "cpu",
                "runtime": "openvino",
                "artifact": "model.onnx",
                "instances": 1,
                "max_batch_size": 4,
                "share": 1.0,
            }
        ]
        # the scheduler starts from the profile's p50s: admission control works from the first request
        assert model.batcher.service_times.estimate_ns(4) == 1_200_000
        response = await model.infer(request(2.0))
        np.testing.assert_allclose(output0(response), np.full((1, 16), 4.0))
        assert model.triton_config()["instance_group"] == [
            {"name": "simple_cpu", "count": 1, "kind": "KIND_CPU"}
        ]
    finally:
        await registry.close()


@pytest.mark.parametrize("stale", ["never profiled", "the artifact changed"])
async def test_without_a_current_profile_config_yaml_places_the_model_and_says_why(
    repo: Path, store: ProfileStore, stale: str, caplog: pytest.LogCaptureFixture
) -> None:
    configure(repo, placement="auto", instance_count=2)
    if stale != "never profiled":
        save_profile(store, repo, [point("openvino", "cpu", 1, 0.8, 1250)], digest="0" * 64)
    registry = registry_for(repo, store)
    with caplog.at_level(logging.WARNING, logger="medserve.hardware.placer"):
        await registry.load("simple")
    try:
        model = registry.get("simple")
        assert [(s.runtime, s.device) for s in model.pool.slots] == [("onnxruntime", "cpu")] * 2
        explanation = model.metadata(["1"]).parameters["placement"]["explanation"]
        assert model.plan.source == "config" and stale in explanation
        assert "config.yaml's runtime, devices, instance_count and max_batch_size used" in explanation
        assert stale in caplog.text
        await model.infer(request())
    finally:
        await registry.close()


async def test_profile_at_load_profiles_a_model_without_one_then_places_it(
    repo: Path, store: ProfileStore
) -> None:
    configure(repo, placement="auto", profile_at_load=True, objective="latency")
    placer = HardwarePlacer(
        store, discovery=Discovery([CPU], ["CPUExecutionProvider"], []), profile_seconds=0.01
    )
    registry = ModelRegistry(ModelRepository(repo), ServingMetrics(), placer=placer)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        assert model.plan.source == "profile"
        assert {s.runtime for s in model.pool.slots} <= {"onnxruntime", "openvino"}
        profile = store.newest("simple")
        assert profile is not None and {p.runtime for p in profile.points} == {"onnxruntime", "openvino"}
        await model.infer(request())
    finally:
        await registry.close()


def test_profile_at_load_needs_placement_auto(repo: Path) -> None:
    configure(repo, profile_at_load=True)
    with pytest.raises(InvalidConfig, match="profile_at_load needs placement: auto"):
        ModelRepository(repo).config("simple")


# -- several devices -----------------------------------------------------------------------------
async def test_two_devices_share_the_traffic_by_measured_capacity(repo: Path, store: ProfileStore) -> None:
    configure(repo, runtime="device_ort", placement="auto", objective="throughput")
    save_profile(
        store,
        repo,
        [
            point("device_ort", "cpu", 8, 8.0, 1000),
            point("device_ort", "cuda:0", 8, 2.7, 3000),
        ],
    )
    registry = registry_for(repo, store)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        shares = {g.device: g.share for g in model.plan.groups}
        assert shares == pytest.approx({"cuda:0": 0.75, "cpu": 0.25})
        assert model.pool.devices() == ["cuda:0", "cpu"]
        DeviceOrt.runs.clear()  # forget the warm-up runs
        for _ in range(40):  # one at a time: both devices are free for every request
            await model.infer(request())
        assert DeviceOrt.runs == {"cuda:0": 30, "cpu": 10}
        assert model.metadata(["1"]).parameters["device"] == "cuda:0,cpu"
    finally:
        await registry.close()


# -- failover ------------------------------------------------------------------------------------
async def test_a_device_fault_moves_the_instances_and_the_request_is_answered(
    repo: Path, store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    configure(repo, runtime="device_ort", placement="auto", objective="latency", instance_count=2)
    save_profile(
        store,
        repo,
        [point("device_ort", "cuda:0", 1, 0.5, 2000), point("device_ort", "cpu", 1, 2.0, 500)],
    )
    metrics = ServingMetrics()
    registry = registry_for(repo, store, metrics)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        assert model.pool.devices() == ["cuda:0"] and len(model.pool) == 1  # latency: one instance
        DeviceOrt.runs.clear()  # forget the warm-up run
        DeviceOrt.faulty.add("cuda:0")
        with caplog.at_level(logging.WARNING):
            responses = await asyncio.gather(*(model.infer(request(float(i))) for i in range(6)))
        for i, response in enumerate(responses):
            np.testing.assert_allclose(output0(response), np.full((1, 16), 2.0 * i))
        assert model.pool.devices() == ["cpu"] and len(model.pool) == 1
        assert DeviceOrt.runs.get("cuda:0", 0) == 0 and DeviceOrt.runs["cpu"] >= 6
        labels = {"model": "simple", "from_device": "cuda:0", "to_device": "cpu"}
        assert counter(metrics, "medserve_placement_failovers_total", **labels) == 1
        assert "device cuda:0 failed" in caplog.text and "CUDA error" in caplog.text
        explanation = model.metadata(["1"]).parameters["placement"]["explanation"]
        assert explanation.startswith("failover: cuda:0 failed (device_ort: CUDA error")
        np.testing.assert_allclose(output0(await model.infer(request(3.0))), np.full((1, 16), 6.0))
    finally:
        await registry.close()


async def test_a_model_placed_by_config_yaml_fails_over_to_the_cpu(repo: Path, store: ProfileStore) -> None:
    configure(repo, runtime="device_ort", runtime_options={"device": "cuda:0"})
    metrics = ServingMetrics()
    registry = registry_for(repo, store, metrics)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        assert model.device == "cuda:0" and model.plan.source == "config"
        DeviceOrt.faulty.add("cuda:0")
        np.testing.assert_allclose(output0(await model.infer(request(1.5))), np.full((1, 16), 3.0))
        assert model.device == "cpu"
        labels = {"model": "simple", "from_device": "cuda:0", "to_device": "cpu"}
        assert counter(metrics, "medserve_placement_failovers_total", **labels) == 1
    finally:
        await registry.close()


async def test_when_no_device_is_left_the_request_fails_with_the_engine_error(
    repo: Path, store: ProfileStore
) -> None:
    configure(repo, runtime="device_ort", runtime_options={"device": "cuda:0"})
    metrics = ServingMetrics()
    registry = registry_for(repo, store, metrics)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        DeviceOrt.faulty.update({"cuda:0", "cpu"})
        with pytest.raises(InferenceFailed, match="CUDA error"):
            await model.infer(request())
        assert model.failover is not None
        assert model.pool.devices() == [] and model.failover.failed.keys() == {"cuda:0", "cpu"}
        with pytest.raises(ModelNotReady, match="no instance left to run it: its device.s. failed .cuda:0: "):
            await model.infer(request())
        assert (
            counter(
                metrics,
                "medserve_placement_failovers_total",
                model="simple",
                from_device="cpu",
                to_device="none",
            )
            == 1
        )
    finally:
        await registry.close()


async def test_an_ordinary_engine_error_does_not_move_the_model(repo: Path, store: ProfileStore) -> None:
    configure(repo, runtime="device_ort", runtime_options={"device": "cuda:0"})
    metrics = ServingMetrics()
    registry = registry_for(repo, store, metrics)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        bad = request()
        bad.inputs[1] = Tensor("INPUT1", "FP32", (1, 16), np.full((1, 16), np.nan, np.float32))
        await model.infer(bad)  # NaNs are no fault of the device
        assert model.device == "cuda:0"
        assert (
            counter(
                metrics,
                "medserve_placement_failovers_total",
                model="simple",
                from_device="cuda:0",
                to_device="cpu",
            )
            == 0
        )
    finally:
        await registry.close()


# -- live profiles and energy --------------------------------------------------------------------
async def test_live_executions_update_the_stored_profile_and_count_energy(
    repo: Path, store: ProfileStore
) -> None:
    configure(repo, placement="auto", objective="latency")
    save_profile(store, repo, [point("onnxruntime", "cpu", 1, 50.0, 20)])  # far slower than real
    metrics = ServingMetrics()
    registry = registry_for(repo, store, metrics)
    await registry.load("simple")
    try:
        model = registry.get("simple")
        for _ in range(20):
            await model.infer(request())
    finally:
        await registry.close()  # writes the live samples back
    profile = store.latest("simple", sha256_file(repo / "simple" / "1" / "model.onnx"), FINGERPRINT)
    assert profile is not None
    live = next(p for p in profile.points if (p.runtime, p.device, p.batch_size) == ("onnxruntime", "cpu", 1))
    assert live.source == "live" and live.samples == 10 + 20
    assert live.p50_ms is not None and live.p50_ms < 5.0  # pulled from 50 ms toward the real sub-ms runs
    samples = [
        s
        for family in metrics.registry.collect()
        if family.name == "medserve_energy_joules"
        for s in family.samples
        if s.name.endswith("_total")
    ]
    assert [(s.labels["model"], s.labels["version"], s.labels["device"]) for s in samples] == [
        ("simple", "1", "cpu")
    ]
    assert samples[0].labels["source"] in ("rapl", "estimated") and samples[0].value > 0
