"""Energy meters (RAPL on a fake powercap tree, NVML through a stand-in pynvml, estimates), the
busy-time-share account, and the energy metric."""

from __future__ import annotations

import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from medserve.hardware import energy
from medserve.hardware.devices import Device
from medserve.hardware.energy import (
    EnergyAccount,
    EnergyMeter,
    EstimatedEnergyMeter,
    MeterUnavailable,
    NvmlEnergyMeter,
    RaplEnergyMeter,
    meter_for,
    rapl_delta,
)
from medserve.hardware.metrics import EnergyMetrics

MAX_RANGE = 262_143_328_850


def _domain(root: Path, name: str, label: str, energy_uj: int, max_range: int = MAX_RANGE) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "name").write_text(label + "\n")
    (directory / "energy_uj").write_text(f"{energy_uj}\n")
    (directory / "max_energy_range_uj").write_text(f"{max_range}\n")
    return directory


def _set(directory: Path, energy_uj: int) -> None:
    (directory / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    """Two packages, a core sub-domain of package 0, and a platform (psys) domain."""
    root = tmp_path / "powercap"
    return {
        "root": root,
        "pkg0": _domain(root, "intel-rapl:0", "package-0", 5_000_000),
        "core0": _domain(root, "intel-rapl:0:0", "core", 1_000_000),
        "pkg1": _domain(root, "intel-rapl:1", "package-1", 7_000_000, max_range=10_000_000),
        "psys": _domain(root, "intel-rapl:2", "psys", 9_000_000),
    }


def test_rapl_delta_handles_wrap_around() -> None:
    assert rapl_delta(100, 250, 1000) == 150
    assert rapl_delta(900, 100, 1000) == 200
    assert rapl_delta(500, 500, 1000) == 0


def test_rapl_sums_package_domains_only(powercap: dict[str, Path]) -> None:
    meter = RaplEnergyMeter(powercap["root"])
    assert (meter.source, meter.estimated) == ("rapl", False)
    assert [p.name for p in meter.domains] == ["intel-rapl:0", "intel-rapl:1"]
    assert meter.read_joules() == 0.0
    _set(powercap["pkg0"], 8_000_000)  # +3 J
    _set(powercap["pkg1"], 8_500_000)  # +1.5 J
    _set(powercap["core0"], 50_000_000)  # sub-domain: already inside the package
    _set(powercap["psys"], 90_000_000)  # platform: not the CPU package
    assert meter.read_joules() == pytest.approx(4.5)


def test_rapl_corrects_wrap_around(powercap: dict[str, Path]) -> None:
    meter = RaplEnergyMeter(powercap["root"])
    _set(powercap["pkg1"], 9_900_000)  # +2.9 J
    assert meter.read_joules() == pytest.approx(2.9)
    _set(powercap["pkg1"], 400_000)  # wrapped at 10 J: +0.1 + 0.4 J
    assert meter.read_joules() == pytest.approx(3.4)
    _set(powercap["pkg1"], 400_000)
    assert meter.read_joules() == pytest.approx(3.4)  # monotonic, no phantom energy


def test_rapl_unavailable_cases(
    tmp_path: Path, powercap: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL package domains"):
        RaplEnergyMeter(tmp_path / "absent")

    def root_only(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(energy, "_read_int", root_only)
    with pytest.raises(MeterUnavailable, match="readable only by root"):
        RaplEnergyMeter(powercap["root"])


def test_rapl_read_failure_keeps_last_value(powercap: dict[str, Path]) -> None:
    meter = RaplEnergyMeter(powercap["root"])
    _set(powercap["pkg0"], 6_000_000)
    assert meter.read_joules() == pytest.approx(1.0)
    (powercap["pkg0"] / "energy_uj").write_text("garbage")
    assert meter.read_joules() == pytest.approx(1.0)


def test_estimated_meter_arithmetic() -> None:
    meter = EstimatedEnergyMeter(40.0)
    assert (meter.source, meter.estimated) == ("estimated", True)
    assert isinstance(meter, EnergyMeter)
    meter.add_busy(2.5)
    meter.add_busy(0.5)
    assert meter.busy_seconds == pytest.approx(3.0)
    assert meter.read_joules() == pytest.approx(120.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            meter.add_busy(bad)
        with pytest.raises(ValueError):
            EstimatedEnergyMeter(bad)


def _device(device_id: str, kind: Any, **details: Any) -> Device:
    return Device(device_id, kind, device_id, None, None, (), (), details)


def test_meter_for_falls_back_to_labelled_estimates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    cpu = meter_for(_device("cpu", "cpu"), cpu_watts=65.0, gpu_watts=300.0)
    assert isinstance(cpu, EstimatedEnergyMeter) and cpu.watts == 65.0 and "RAPL" in cpu.reason
    gpu = meter_for(_device("cuda:0", "cuda"), cpu_watts=65.0, gpu_watts=300.0)
    assert isinstance(gpu, EstimatedEnergyMeter) and gpu.watts == 300.0 and "NVML" in gpu.reason
    npu = meter_for(_device("openvino:NPU", "npu"), cpu_watts=65.0, gpu_watts=10.0)
    assert isinstance(npu, EstimatedEnergyMeter) and npu.estimated


def test_meter_for_cpu_uses_rapl_when_readable(
    monkeypatch: pytest.MonkeyPatch, powercap: dict[str, Path]
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", powercap["root"])
    meter = meter_for(_device("cpu", "cpu"), cpu_watts=65.0, gpu_watts=300.0)
    assert isinstance(meter, RaplEnergyMeter) and meter.source == "rapl"


class _NvmlError(Exception):
    pass


def _fake_pynvml(counter_mj: list[int], supported: bool = True) -> types.ModuleType:
    module: Any = types.ModuleType("pynvml")
    module.NVMLError = _NvmlError
    module.calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        module.calls["init"] += 1

    def shutdown() -> None:
        module.calls["shutdown"] += 1

    def total_energy(handle: int) -> int:
        if not supported:
            raise _NvmlError("Not Supported")
        if counter_mj[0] < 0:
            raise _NvmlError("GPU is lost")
        return counter_mj[0]

    module.nvmlInit = init
    module.nvmlShutdown = shutdown
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return module


def test_nvml_meter_reads_millijoules_since_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = [1_000_000]
    fake = _fake_pynvml(counter)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = NvmlEnergyMeter(0)
    assert (meter.source, meter.estimated) == ("nvml", False)
    counter[0] = 1_002_500
    assert meter.read_joules() == pytest.approx(2.5)
    counter[0] = -1  # the read fails: the last good value stands
    assert meter.read_joules() == pytest.approx(2.5)
    meter.close()
    meter.close()
    assert fake.calls == {"init": 1, "shutdown": 1}  # type: ignore[attr-defined]


def test_meter_for_gpu_without_energy_counter_is_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0], supported=False))
    with pytest.raises(MeterUnavailable, match="no NVML energy counter"):
        NvmlEnergyMeter(0)
    meter = meter_for(_device("cuda:0", "cuda", nvml_index=0), cpu_watts=65.0, gpu_watts=250.0)
    assert isinstance(meter, EstimatedEnergyMeter) and "Not Supported" in meter.reason
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0]))
    assert isinstance(
        meter_for(_device("cuda:0", "cuda", nvml_index=0), cpu_watts=1, gpu_watts=1), NvmlEnergyMeter
    )


def test_real_nvml_energy_counter() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (the 'gpu' extra) is not installed")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    if count == 0:
        pytest.skip("NVML finds no GPU on this machine")
    try:
        meter = NvmlEnergyMeter(0)
    except MeterUnavailable as exc:
        pytest.skip(f"GPU 0 has no energy counter: {exc}")
    first = meter.read_joules()
    time.sleep(0.2)
    assert meter.read_joules() >= first >= 0.0
    meter.close()


class _ManualMeter:
    source = "rapl"
    estimated = False

    def __init__(self) -> None:
        self.joules = 0.0

    def read_joules(self) -> float:
        return self.joules


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_account_splits_overlapping_work_by_busy_time() -> None:
    meter, clock = _ManualMeter(), _Clock()
    account = EnergyAccount(meter, clock=clock)
    meter.joules = 2.0  # idle before any work
    first = account.measure()
    m1 = first.__enter__()
    meter.joules, clock.now = 12.0, 1.0  # m1 alone: 10 J
    second = account.measure()
    m2 = second.__enter__()
    meter.joules, clock.now = 18.0, 2.0  # both: 6 J, 3 J each
    first.__exit__(None, None, None)
    meter.joules, clock.now = 22.0, 3.0  # m2 alone: 4 J
    second.__exit__(None, None, None)
    meter.joules = 25.0
    account.tick()  # idle again: 3 J
    assert m1.joules == pytest.approx(13.0) and m1.done and m1.seconds == pytest.approx(2.0)
    assert m2.joules == pytest.approx(7.0) and m2.seconds == pytest.approx(2.0)
    assert (m1.source, m1.estimated) == ("rapl", False)
    assert account.attributed_joules == pytest.approx(20.0)
    assert account.unattributed_joules == pytest.approx(5.0)


def test_account_reports_busy_time_to_an_estimated_meter() -> None:
    meter, clock = EstimatedEnergyMeter(10.0), _Clock()
    account = EnergyAccount(meter, clock=clock)
    clock.now = 5.0  # idle: not busy, no energy
    with account.measure() as m1:
        clock.now = 6.0
        with account.measure() as m2:
            clock.now = 7.0
        clock.now = 9.0
    assert meter.busy_seconds == pytest.approx(4.0)
    assert m2.joules == pytest.approx(5.0)  # 1 s shared with m1
    assert m1.joules == pytest.approx(35.0)  # 1 s + 0.5 s + 2 s at 10 W
    assert m1.estimated and m1.source == "estimated"
    assert account.unattributed_joules == 0.0


def test_account_conserves_energy_across_threads() -> None:
    meter = EstimatedEnergyMeter(100.0)
    account = EnergyAccount(meter)
    results = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            with account.measure() as m:
                time.sleep(0.001)
            with lock:
                results.append(m.joules)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80 and all(j > 0 for j in results)
    assert sum(results) == pytest.approx(meter.read_joules())
    assert sum(results) == pytest.approx(account.attributed_joules)


def test_energy_metrics() -> None:
    registry = CollectorRegistry()
    metrics = EnergyMetrics(registry)
    metrics.record("chest_xray", "1", "cpu", 1.25, "rapl")
    metrics.record("chest_xray", "1", "cpu", 2.0, "rapl")
    metrics.record("chest_xray", "1", "cuda:0", 0.0, "estimated")
    labels = {"model": "chest_xray", "version": "1", "device": "cpu", "source": "rapl"}
    assert registry.get_sample_value("medserve_energy_joules_total", labels) == pytest.approx(3.25)
    text = generate_latest(registry).decode()
    assert re.search(r"^# TYPE medserve_energy_joules(_total)? counter$", text, re.MULTILINE)
    assert (
        'medserve_energy_joules_total{device="cuda:0",model="chest_xray",source="estimated",version="1"} 0.0'
        in text
    )
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            metrics.record("m", "1", "cpu", bad, "rapl")
