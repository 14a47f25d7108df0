"""The profiler on the small ``simple`` model (tiny time budgets), the profile store, and the commands."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medserve.core.model import load_version
from medserve.demo.models.repository import build_example_repository
from medserve.hardware.devices import Device, Discovery, discover_devices
from medserve.hardware.plot import profile_svg
from medserve.hardware.profile import ModelProfile, ProfilePoint, format_profile
from medserve.hardware.profile_store import ProfileStore
from medserve.hardware.profiler import median_point, profile_model
from medserve.repository.repository import ModelRepository
from medserve.runtimes import Runtime, runtime_class
from medserve.runtimes.base import Declaration
from medserve.store.database import Database
from medserve.values.errors import InferenceFailed, InvalidConfig, InvalidInput, ModelLoadError

FAST: dict[str, Any] = {"seconds_per_point": 0.01, "warmup": 1, "batch_sizes": (1, 2)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("profiled")
    build_example_repository(root, models=["simple"])
    return root


@pytest.fixture(scope="module")
def discovery() -> Discovery:
    return discover_devices()


@pytest.fixture(scope="module")
def cpu_profile(repository: Path, discovery: Discovery) -> ModelProfile:
    return profile_model(
        repository / "simple",
        runtimes=["onnxruntime", "openvino"],
        devices=["cpu"],
        discovery=discovery,
        **FAST,
    )


@pytest.fixture()
def store(tmp_path: Path) -> ProfileStore:
    database = Database(f"sqlite:///{tmp_path / 'profiles.db'}")
    database.migrate()
    return ProfileStore(database)


def test_profiles_simple_on_cpu_with_onnxruntime_and_openvino(cpu_profile: ModelProfile) -> None:
    combos = {(p.runtime, p.device, p.batch_size) for p in cpu_profile.points}
    assert combos == {(r, "cpu", b) for r in ("onnxruntime", "openvino") for b in (1, 2)}
    for p in cpu_profile.points:
        assert p.status == "ok", p.error
        assert p.p50_ms is not None and p.p99_ms is not None and 0 < p.p50_ms <= p.p99_ms
        assert p.throughput is not None and p.throughput > 0
        assert p.joules_per_inference is not None and p.joules_per_inference >= 0
        assert p.energy_source in ("rapl", "estimated") and p.samples >= 3
        assert p.artifact == "model.onnx"
        if Path("/proc/self/status").exists():
            assert p.peak_memory_bytes is not None and p.peak_memory_bytes >= 0
    assert len(cpu_profile.artifact_digest) == 64 and len(cpu_profile.fingerprint) == 64
    table = format_profile(cpu_profile)
    assert "P99 MS" in table and "openvino" in table


def test_batch_sizes_above_max_batch_size_are_dropped(repository: Path, discovery: Discovery) -> None:
    profile = profile_model(
        repository / "simple",
        runtimes=["onnxruntime"],
        devices=["cpu"],
        discovery=discovery,
        seconds_per_point=0.0,
        warmup=0,
        batch_sizes=(1, 64),
    )
    assert [p.batch_size for p in profile.points] == [1]
    assert any("64 exceed max_batch_size 8" in n for n in profile.notes)


def test_unknown_devices_and_runtimes_name_what_there_is(repository: Path, discovery: Discovery) -> None:
    with pytest.raises(InvalidInput, match="device 'tpu:0' is not on this machine; available: cpu"):
        profile_model(repository / "simple", devices=["tpu:0"], discovery=discovery, **FAST)
    with pytest.raises(InvalidInput, match="unknown runtime.*available: monai_bundle, onnxruntime"):
        profile_model(repository / "simple", runtimes=["tensorrt"], discovery=discovery, **FAST)


def _with_broken_gpu(discovery: Discovery) -> Discovery:
    """This machine plus a CUDA device ONNX Runtime claims but cannot initialise (no CUDA provider)."""
    gpu = Device("cuda:7", "cuda", "Imaginary GPU", 1 << 34, 100, (), ("onnxruntime",))
    return replace(discovery, devices=[*discovery.devices, gpu])


def test_a_failing_device_is_marked_unusable_and_the_others_still_profiled(
    repository: Path, discovery: Discovery
) -> None:
    profile = profile_model(
        repository / "simple",
        runtimes=["onnxruntime"],
        devices=["cpu", "cuda:7"],
        discovery=_with_broken_gpu(discovery),
        **FAST,
    )
    by_device = {(p.device, p.batch_size): p for p in profile.points}
    assert all(by_device[("cpu", b)].status == "ok" for b in (1, 2))
    broken = [by_device[("cuda:7", b)] for b in (1, 2)]
    assert all(p.status == "unusable" and p.p99_ms is None for p in broken)
    assert broken[0].error.startswith("cannot load: InvalidConfig:"), broken[0].error


class _FailsAtTwo(Runtime):
    """ONNX Runtime, but a batch of 2 fails as a device out of memory would."""

    name = "onnxruntime"

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        self.inner = runtime_class("onnxruntime")(artifact, options, declared=declared)

    def load(self) -> None:
        self.inner.load()

    def inputs(self) -> Any:
        return self.inner.inputs()

    def outputs(self) -> Any:
        return self.inner.outputs()

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if next(iter(inputs.values())).shape[0] == 2:
            raise InferenceFailed("onnxruntime: Failed to allocate memory for requested buffer")
        return self.inner.run(inputs, output_names)


def test_a_failing_runtime_or_batch_size_is_unusable_and_the_rest_profiled(
    repository: Path, discovery: Discovery
) -> None:
    def loader(name: str) -> type[Runtime]:
        if name == "openvino":
            raise ModelLoadError("runtime 'openvino' is not installed: pretend")
        return _FailsAtTwo

    profile = profile_model(
        repository / "simple",
        runtimes=["onnxruntime", "openvino", "torch"],
        devices=["cpu"],
        discovery=discovery,
        runtime_loader=loader,
        **FAST,
    )
    status = {(p.runtime, p.batch_size): (p.status, p.error) for p in profile.points}
    assert status[("onnxruntime", 1)] == ("ok", "")
    assert status[("onnxruntime", 2)][1].startswith("batch 2 failed: InferenceFailed: onnxruntime: Failed")
    assert status[("openvino", 1)] == (
        "unusable",
        "cannot load: ModelLoadError: runtime 'openvino' is not installed: pretend",
    )
    assert status[("torch", 1)][0] == "unusable"
    assert "no artifact torch can read" in status[("torch", 1)][1]


def test_store_keeps_profiles_per_artifact_and_hardware(
    store: ProfileStore, cpu_profile: ModelProfile
) -> None:
    digest, fingerprint = cpu_profile.artifact_digest, cpu_profile.fingerprint
    assert store.latest("simple", digest, fingerprint) is None
    assert store.staleness("simple", digest, fingerprint) == "never profiled"
    store.save(cpu_profile)
    loaded = store.latest("simple", digest, fingerprint)
    assert loaded is not None
    assert loaded.points == cpu_profile.points
    assert loaded.measured_at == cpu_profile.measured_at and loaded.version == 1
    assert store.latest("simple", "0" * 64, fingerprint) is None
    assert "the artifact changed" in (store.staleness("simple", "0" * 64, fingerprint) or "")
    assert store.latest("simple", digest, "f" * 64) is None
    assert "the hardware changed" in (store.staleness("simple", digest, "f" * 64) or "")
    assert store.staleness("simple", digest, fingerprint) is None


def test_live_latency_updates_the_stored_estimates(store: ProfileStore, cpu_profile: ModelProfile) -> None:
    store.save(cpu_profile)
    before = next(p for p in cpu_profile.points if (p.runtime, p.batch_size) == ("onnxruntime", 2))
    assert before.p50_ms is not None
    slow = before.p50_ms * 100
    updated = store.update_live("simple", "onnxruntime", "cpu", 2, slow)
    assert updated is not None and updated.source == "live"
    assert updated.p50_ms == pytest.approx(before.p50_ms + 0.2 * (slow - before.p50_ms))
    store.update_live("simple", "onnxruntime", "cpu", 2, slow)
    current = store.latest("simple", cpu_profile.artifact_digest, cpu_profile.fingerprint)
    assert current is not None
    live = next(p for p in current.points if (p.runtime, p.batch_size) == ("onnxruntime", 2))
    assert live.source == "live" and live.samples == before.samples + 2
    assert (live.p50_ms or 0) > (updated.p50_ms or 0)
    assert store.update_live("simple", "onnxruntime", "cpu", 3, 1.0) is None  # batch 3 was not profiled
    assert store.update_live("other", "onnxruntime", "cpu", 2, 1.0) is None
    store.save(cpu_profile)  # a new measurement starts the live estimates afresh
    fresh = store.latest("simple", cpu_profile.artifact_digest, cpu_profile.fingerprint)
    assert fresh is not None and fresh.points == cpu_profile.points


def test_svg_plot_has_a_line_per_device_and_runtime(cpu_profile: ModelProfile) -> None:
    root = ET.fromstring(profile_svg(cpu_profile))
    lines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 4  # throughput and p99, for onnxruntime and openvino
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"cpu · onnxruntime", "cpu · openvino", "batch size"} <= texts


def _medserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(cwd / "data")}
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_profile_and_placement_commands(repository: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    common = ["--repository", str(repository), "--database-url", url]
    never = _medserve("placement", *common, "--init", cwd=tmp_path)
    assert never.returncode == 1
    assert "simple: no current profile (never profiled)" in never.stdout
    plot = tmp_path / "out.svg"
    profiled = _medserve(
        "profile", "simple", *common, "--devices", "cpu", "--runtimes", "onnxruntime", "openvino",
        "--batch-sizes", "1", "2", "--seconds", "0.01", "--warmup", "1", "--plot", str(plot),
        cwd=tmp_path,
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    assert "RUNTIME" in profiled.stdout and "onnxruntime  cpu" in profiled.stdout
    assert "profile stored" in profiled.stdout
    root = ET.parse(plot).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    placed = _medserve("placement", *common, "--explain", cwd=tmp_path)
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert "simple: objective latency: cpu (" in placed.stdout
    assert "rejected:" in placed.stdout and "cpu openvino batch" in placed.stdout


def test_config_devices_are_checked_when_the_model_loads(repository: Path) -> None:
    config = ModelRepository(repository).config("simple")
    artifact = repository / "simple" / "1" / "model.onnx"
    unknown = config.model_copy(update={"devices": ["cuda:9"]})
    with pytest.raises(InvalidConfig) as caught:
        load_version("simple", 1, unknown, artifact)
    message = str(caught.value)
    assert message.startswith("simple/config.yaml: field 'devices': device 'cuda:9' is not available")
    assert "available: cpu" in message
    loaded = load_version("simple", 1, config.model_copy(update={"devices": ["cpu"]}), artifact)
    try:
        assert loaded.instances[0].options["device"] == "cpu"
        assert loaded.instances[0].options["intra_op_threads"] == 1
    finally:
        for instance in loaded.instances:
            instance.unload()


def test_rounds_keep_the_median_round_of_every_point(repository: Path, discovery: Discovery) -> None:
    profile = profile_model(
        repository / "simple",
        runtimes=["onnxruntime"],
        devices=["cpu"],
        discovery=discovery,
        rounds=3,
        **FAST,
    )
    assert sorted((p.runtime, p.batch_size) for p in profile.points) == [
        ("onnxruntime", 1),
        ("onnxruntime", 2),
    ]
    assert "3 rounds per point; each point is the round with the median throughput" in profile.notes
    fast, mid, slow = (ProfilePoint("r", "cpu", 1, 1.0, 2.0, t) for t in (300.0, 200.0, 100.0))
    assert median_point([fast, slow, mid]) == mid
    heavy = replace(fast, peak_memory_bytes=1 << 20)
    assert median_point([heavy, slow, mid]).peak_memory_bytes == 1 << 20
    broken = ProfilePoint("r", "cpu", 1).unusable("out of memory")
    assert median_point([broken, fast]) == fast and median_point([broken]) is broken
    with pytest.raises(InvalidInput, match="rounds must be >= 1"):
        profile_model(repository / "simple", discovery=discovery, rounds=0, **FAST)
