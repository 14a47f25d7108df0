"""Placement decisions on synthetic profiles (pure), live blending, and the config.yaml fields."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from medserve.hardware.devices import Device, Discovery
from medserve.hardware.metrics import PlacementMetrics
from medserve.hardware.model_devices import options_for_devices
from medserve.hardware.placement import (
    PlacementDecision,
    PlacementRequest,
    decide,
    failover,
    format_decision,
    is_device_fault,
)
from medserve.hardware.profile import ProfilePoint, device_option
from medserve.hardware.profile_store import blend_live
from medserve.repository.config import parse_model_config
from medserve.values.errors import InvalidConfig


def point(
    device: str,
    batch: int,
    p99: float,
    throughput: float,
    joules: float = 0.1,
    runtime: str | None = None,
) -> ProfilePoint:
    return ProfilePoint(
        runtime=runtime or ("onnxruntime" if device == "cpu" else "torch"),
        device=device,
        batch_size=batch,
        p50_ms=p99 / 2,
        p99_ms=p99,
        throughput=throughput,
        joules_per_inference=joules,
        energy_source="estimated",
    )


#: a CPU too slow for a 10 ms SLO, and a GPU well within it
CPU_SLOW = [point("cpu", 1, 14.2, 90.0, joules=0.8), point("cpu", 4, 31.0, 150.0, joules=0.6)]
GPU_FAST = [point("cuda:0", 1, 3.0, 400.0, joules=0.5), point("cuda:0", 8, 6.5, 2400.0, joules=0.3)]


def rejected(decision: PlacementDecision, device: str, batch: int) -> str:
    reasons = [r.reason for r in decision.alternatives if r.device == device and r.batch_size == batch]
    assert len(reasons) == 1, decision
    return reasons[0]


def test_slo_unmet_on_cpu_places_on_the_gpu() -> None:
    decision = decide(CPU_SLOW + GPU_FAST, PlacementRequest("m", objective="latency", slo_p99_ms=10))
    assert decision.slo_met
    [chosen] = decision.chosen
    assert (chosen.device, chosen.runtime, chosen.max_batch_size, chosen.instances) == (
        "cuda:0",
        "torch",
        1,
        1,
    )
    assert chosen.share == 1.0
    assert rejected(decision, "cpu", 1) == "p99 14.2 ms > SLO 10 ms"
    assert rejected(decision, "cpu", 4) == "p99 31 ms > SLO 10 ms"
    assert rejected(decision, "cuda:0", 8) == "p99 6.5 ms > 3 ms of cuda:0 (torch, batch 1)"
    assert "objective latency, SLO p99 <= 10 ms: cuda:0" in decision.explanation


def test_energy_objective_picks_fewer_joules_per_inference() -> None:
    decision = decide(CPU_SLOW + GPU_FAST, PlacementRequest("m", objective="energy", slo_p99_ms=50))
    [chosen] = decision.chosen
    assert (chosen.device, chosen.max_batch_size) == ("cuda:0", 8)
    assert rejected(decision, "cpu", 1) == "energy 0.8 J/inf > 0.3 J/inf of cuda:0 (torch, batch 8)"
    # a small model: the CPU spends less energy per inference although the GPU is faster
    thrifty = [point("cpu", 4, 5.0, 800.0, joules=0.05), point("cuda:0", 8, 2.0, 5000.0, joules=0.2)]
    decision = decide(thrifty, PlacementRequest("m", objective="energy", slo_p99_ms=10))
    assert [a.device for a in decision.chosen] == ["cpu"]
    latency = decide(thrifty, PlacementRequest("m", objective="latency", slo_p99_ms=10))
    assert [a.device for a in latency.chosen] == ["cuda:0"]


def test_two_devices_share_the_load_by_measured_capacity() -> None:
    points = [
        point("cpu", 8, 9.0, 1000.0),
        point("cuda:0", 8, 6.0, 3000.0),
        point("cuda:0", 16, 12.0, 4000.0),
    ]
    decision = decide(points, PlacementRequest("m", objective="throughput", slo_p99_ms=10))
    shares = {a.device: a.share for a in decision.chosen}
    assert shares == pytest.approx({"cuda:0": 0.75, "cpu": 0.25})
    assert [a.max_batch_size for a in decision.chosen] == [8, 8]
    assert decision.capacity == pytest.approx(4000.0)
    assert rejected(decision, "cuda:0", 16) == "p99 12 ms > SLO 10 ms"
    assert "total 4,000 inf/s" in decision.explanation
    # two instances on the accelerator double its capacity; the CPU keeps one (its engine already uses
    # every core); the shares follow the capacities
    doubled = decide(points, PlacementRequest("m", objective="throughput", max_instances_per_device=2))
    assert {a.device: a.instances for a in doubled.chosen} == {"cuda:0": 2, "cpu": 1}
    assert {a.device: a.share for a in doubled.chosen} == pytest.approx({"cuda:0": 8 / 9, "cpu": 1 / 9})


def test_a_device_adding_too_little_is_not_worth_splitting_for() -> None:
    points = [point("cpu", 8, 9.0, 100.0), point("cuda:0", 8, 6.0, 3000.0)]
    decision = decide(points, PlacementRequest("m", objective="throughput", slo_p99_ms=10))
    assert [a.device for a in decision.chosen] == ["cuda:0"]
    assert decision.chosen[0].share == 1.0
    assert "not worth splitting traffic" in rejected(decision, "cpu", 8)


def test_an_expected_rate_adds_instances_then_devices() -> None:
    points = [point("cpu", 4, 9.0, 500.0), point("cuda:0", 4, 2.0, 1000.0)]
    request = PlacementRequest("m", objective="latency", max_instances_per_device=2, expected_rate=1500)
    decision = decide(points, request)
    assert [(a.device, a.instances) for a in decision.chosen] == [("cuda:0", 2)]
    more = decide(points, PlacementRequest("m", max_instances_per_device=2, expected_rate=2400))
    assert [(a.device, a.instances) for a in more.chosen] == [("cuda:0", 2), ("cpu", 1)]
    assert "WARNING" not in more.explanation
    short = decide(points, PlacementRequest("m", max_instances_per_device=2, expected_rate=2600))
    assert "WARNING: below the expected 2,600 inf/s" in short.explanation  # the CPU gets one instance
    too_much = decide(points, PlacementRequest("m", max_instances_per_device=1, expected_rate=5000))
    assert "WARNING: below the expected 5,000 inf/s" in too_much.explanation


def test_failover_moves_to_the_next_best_device() -> None:
    decision = decide(CPU_SLOW + GPU_FAST, PlacementRequest("m", objective="latency", slo_p99_ms=20))
    assert [a.device for a in decision.chosen] == ["cuda:0"]
    moved = failover(decision, "cuda:0", "CUDA error: out of memory")
    assert [(a.device, a.max_batch_size) for a in moved.chosen] == [("cpu", 1)]
    assert moved.explanation.startswith("failover: cuda:0 failed (CUDA error: out of memory); cuda:0 -> cpu.")
    assert rejected(moved, "cuda:0", 1) == "device cuda:0 failed: CUDA error: out of memory"
    # the failure is remembered: failing the CPU too leaves nothing
    nothing = failover(moved, "cpu", "lost")
    assert nothing.chosen == [] and not nothing.slo_met
    # a device of a shared placement fails: the other takes all the traffic
    shared = decide(
        [point("cpu", 8, 9.0, 1000.0), point("cuda:0", 8, 6.0, 3000.0)],
        PlacementRequest("m", objective="throughput"),
    )
    [left] = failover(shared, "cuda:0").chosen
    assert (left.device, left.share) == ("cpu", 1.0)


def test_no_feasible_point_picks_the_fastest_and_says_so() -> None:
    decision = decide(CPU_SLOW, PlacementRequest("m", objective="energy", slo_p99_ms=5))
    assert not decision.slo_met
    [chosen] = decision.chosen
    assert (chosen.device, chosen.max_batch_size) == ("cpu", 1)
    assert "SLO p99 <= 5 ms cannot be met on this machine" in decision.explanation
    assert "cpu (onnxruntime, batch 1) at p99 14.2 ms" in decision.explanation
    assert [(r.batch_size, r.reason) for r in decision.alternatives] == [(4, "p99 31 ms > SLO 5 ms")]


def test_unusable_points_and_devices_outside_the_config_are_rejected_with_reasons() -> None:
    broken = ProfilePoint("onnxruntime", "cuda:0", 1).unusable("cannot load: CUDA driver too old")
    points = [*CPU_SLOW, broken, point("openvino:GPU.0", 1, 1.0, 900.0, runtime="openvino")]
    decision = decide(points, PlacementRequest("m", slo_p99_ms=20, devices=("cpu", "cuda:0")))
    assert [a.device for a in decision.chosen] == ["cpu"]
    assert rejected(decision, "cuda:0", 1) == "unusable: cannot load: CUDA driver too old"
    assert rejected(decision, "openvino:GPU.0", 1) == "device not in config.yaml devices [cpu, cuda:0]"
    text = format_decision(decision, explain=True)
    assert "rejected:" in text and "cuda:0 onnxruntime batch 1: unusable: cannot load" in text
    assert "rejected" not in format_decision(decision)
    assert decide([broken], PlacementRequest("m")).chosen == []


def test_cost_objective_uses_price_per_inference() -> None:
    # the GPU costs 10x as much per hour but does 16x the work: cheaper per inference
    points = [point("cpu", 8, 9.0, 150.0), point("cuda:0", 8, 6.0, 2400.0)]
    request = PlacementRequest("m", objective="cost", cost_per_hour={"cpu": 0.5, "cuda:0": 5.0})
    decision = decide(points, request)
    assert [a.device for a in decision.chosen] == ["cuda:0"]
    assert rejected(decision, "cpu", 8) == (
        "cost 0.926 per million inferences > 0.579 per million inferences of cuda:0 (torch, batch 8)"
    )
    # without prices the objective cannot be evaluated: the lowest p99 within the SLO is taken
    unpriced = decide(points, PlacementRequest("m", objective="cost"))
    assert unpriced.slo_met and [a.device for a in unpriced.chosen] == ["cuda:0"]
    assert "cannot be evaluated (no cost_per_hour given for cuda:0)" in unpriced.explanation


def test_requests_are_validated() -> None:
    with pytest.raises(InvalidConfig, match="objective 'fast'"):
        PlacementRequest("m", objective="fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="slo"):
        PlacementRequest("m", slo_p99_ms=0)
    with pytest.raises(InvalidConfig, match="cost_per_hour"):
        PlacementRequest("m", cost_per_hour={"cpu": -1.0})


def test_device_faults_are_recognised() -> None:
    assert is_device_fault("CUDA error: an illegal memory access was encountered")
    assert is_device_fault(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_device_fault("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer")
    assert not is_device_fault("input 'INPUT0': expected shape [16], got [15]")


def test_live_latency_blends_into_the_estimates() -> None:
    base = point("cpu", 4, 10.0, 400.0)  # p50 5 ms
    slower = blend_live(base, 15.0, alpha=0.2)
    assert slower.p50_ms == pytest.approx(7.0)
    assert slower.p99_ms == pytest.approx(min(15.0, 10.0 * 1.198))
    assert slower.throughput == pytest.approx(400.0 * 5 / 7)
    assert (slower.source, slower.samples) == ("live", 1)
    faster = blend_live(base, 4.0, alpha=0.2)
    assert faster.p99_ms == pytest.approx(10.0 * 0.998)
    # a steady stream settles p99 where about 1 % of executions are slower
    estimate = base
    for i in range(3000):
        estimate = blend_live(estimate, 20.0 if i % 100 == 0 else 5.0, alpha=0.2)
    assert 5.0 < (estimate.p99_ms or 0) <= 20.0
    assert estimate.p50_ms == pytest.approx(5.0, abs=0.5)
    unusable = ProfilePoint("torch", "cpu", 1).unusable("x")
    assert blend_live(unusable, 3.0) is unusable


def test_config_yaml_objective_slo_and_devices() -> None:
    config = parse_model_config("objective: energy\nslo: 12.5\ndevices: [cpu, ' cuda:0']\n", "c.yaml", "m")
    assert (config.objective, config.slo_p99_ms, config.devices) == ("energy", 12.5, ["cpu", "cuda:0"])
    assert parse_model_config("slo_p99_ms: 3\n", "c.yaml", "m").slo_p99_ms == 3
    defaults = parse_model_config("", "c.yaml", "m")
    assert (defaults.objective, defaults.slo_p99_ms, defaults.devices) == (None, None, None)
    for text, message in [
        ("slo: 0", "field 'slo'"),
        ("objective: fastest", "field 'objective'"),
        ("devices: []", "field 'devices'"),
        ("devices: [cpu, cpu]", "duplicates"),
    ]:
        with pytest.raises(InvalidConfig, match=message):
            parse_model_config(text, "c.yaml", "m")


def _discovery() -> Discovery:
    cpu = Device("cpu", "cpu", "Test CPU", None, 4, (), ("onnxruntime", "torch", "openvino"))
    gpu = Device("cuda:0", "cuda", "Test GPU", None, 80, (), ("torch",))
    return Discovery(devices=[cpu, gpu], providers=["CPUExecutionProvider"], problems=[])


def test_config_devices_are_checked_against_the_machine() -> None:
    discovery = _discovery()
    assert options_for_devices("m", "torch", ["cuda:0", "cpu"], {}, discovery) == {"device": "cuda:0"}
    assert options_for_devices("m", "openvino", ["cpu"], {"num_requests": 2}, discovery) == {
        "num_requests": 2,
        "device": "CPU",
    }
    with pytest.raises(InvalidConfig, match=r"m/config.yaml: field 'devices': .*available: cpu, cuda:0"):
        options_for_devices("m", "torch", ["cuda:3"], {}, discovery)
    with pytest.raises(InvalidConfig, match="available: cpu"):
        options_for_devices("m", "onnxruntime", ["cuda:0"], {}, discovery)
    with pytest.raises(InvalidConfig, match="not among the devices"):
        options_for_devices("m", "torch", ["cpu"], {"device": "cuda:0"}, discovery)
    assert device_option("openvino", "openvino:GPU.0") == "GPU.0"


def test_failovers_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    metrics = PlacementMetrics(registry)
    decision = decide(CPU_SLOW + GPU_FAST, PlacementRequest("m", slo_p99_ms=20))
    moved = failover(decision, "cuda:0", "CUDA error: out of memory")
    with caplog.at_level(logging.WARNING):
        metrics.failed_over("m", "cuda:0", [a.device for a in moved.chosen], "CUDA error: out of memory")
    assert "model m: device cuda:0 failed (CUDA error: out of memory); instances move to cpu" in caplog.text
    labels = {"model": "m", "from_device": "cuda:0", "to_device": "cpu"}
    assert registry.get_sample_value("medserve_placement_failovers_total", labels) == 1.0
