"""The fleet planner: plan files, curves from profiles and spec sheets, sizing, energy and cost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medserve.hardware.profile import ModelProfile, ProfilePoint
from medserve.planning.costs import yearly_costs
from medserve.planning.fleet import plan_fleet
from medserve.planning.inputs import BatchSettings, gather, load_plan
from medserve.planning.report import format_plan, plan_json
from medserve.planning.service_curve import curves_from_profile
from medserve.planning.workload import HOURS, PROFILES, parse_demand
from medserve.values.errors import InvalidInput


def profile(
    model: str, points: list[tuple[int, float, float, float, float | None]], device: str = "cpu"
) -> ModelProfile:
    """(batch, p50, p99, throughput, joules per inference) per point."""
    return ModelProfile(
        model,
        1,
        "digest",
        "machine",
        datetime(2026, 1, 1, tzinfo=UTC),
        tuple(
            ProfilePoint("onnxruntime", device, b, p50, p99, thr, None, joules, "estimated")
            for b, p50, p99, thr, joules in points
        ),
    )


PLAN = """
workload:
  - name: steady
    model: m
    requests_per_second: 150
    class: urgent
    slo_p99_ms: 100
servers:
  - name: small
    devices: {cpu: 1}
    capex: 5000
    life_years: 5
    idle_watts: 50
  - name: fast (spec sheet)
    devices: {cuda: 1}
    capex: 20000
    profiles: none
    spec_sheet:
      default: {from_device: cpu, speedup: 10, watts: 300}
economics:
  electricity_per_kwh: 0.2
  import_tariffs: [0, 0.5]
request_overhead_ms: 0
simulation: {max_requests: 20000, min_samples: 500}
"""


def test_a_server_that_does_10_ms_requests_needs_two_for_150_per_second() -> None:
    spec = load_plan(PLAN)
    inputs = gather(spec, {"m": profile("m", [(1, 10.0, 10.0, 100.0, 0.5)])}, {"m": BatchSettings(1)})
    small, fast = plan_fleet(inputs)
    # 150 requests/s x 10 ms = 1.5 s of work per second: two servers at 75 % (at most 90 % each)
    assert small.count == 2
    assert small.basis == "measured"
    assert small.peak_utilisation["cpu"] == pytest.approx(0.75, rel=0.05)
    assert small.outcomes[0].met and small.outcomes[0].p99_ms < 100
    assert fast.count == 1
    assert fast.basis == "spec sheet"
    assert fast.peak_utilisation["cuda"] == pytest.approx(0.15, rel=0.05)


def test_costs_add_purchase_over_life_with_tariffs_and_energy() -> None:
    spec = load_plan(PLAN)
    inputs = gather(spec, {"m": profile("m", [(1, 10.0, 10.0, 100.0, 0.5)])}, {"m": BatchSettings(1)})
    cost = yearly_costs(inputs, spec.servers[0], 2, {"m": 1.0})
    requests_per_year = 150 * 3600 * 24 * 365
    assert cost.inference_kwh == pytest.approx(requests_per_year * 0.5 / 3.6e6)
    assert cost.idle_kwh == pytest.approx(2 * 50 * 8760 / 1000)
    energy = (cost.inference_kwh + cost.idle_kwh) * 0.2
    assert [t for t, _ in cost.by_tariff] == [0.0, 0.5]
    assert [c for _, c in cost.by_tariff] == pytest.approx([10000 / 5 + energy, 15000 / 5 + energy])


def test_an_slo_below_one_lone_request_is_reported_and_not_sized() -> None:
    spec = load_plan(PLAN.replace("slo_p99_ms: 100", "slo_p99_ms: 5"))
    inputs = gather(spec, {"m": profile("m", [(1, 10.0, 12.0, 100.0, None)])}, {"m": BatchSettings(1)})
    small, fast = plan_fleet(inputs)
    assert small.count is None and "one request alone takes 12 ms at p99" in small.reason
    assert fast.count == 1  # ten times faster: 1.2 ms


def test_a_model_without_profile_or_spec_sheet_cannot_be_planned_on_that_server() -> None:
    spec = load_plan(PLAN)
    options = plan_fleet(gather(spec, {}, {}))
    assert options[0].count is None and "m: no stored profile" in options[0].reason
    assert options[1].count is None and "no measured profile on 'cpu' to scale from" in options[1].reason


def test_the_report_puts_options_side_by_side() -> None:
    spec = load_plan(PLAN)
    options = plan_fleet(
        gather(spec, {"m": profile("m", [(1, 10.0, 10.0, 100.0, 0.5)])}, {"m": BatchSettings(1)})
    )
    text = format_plan(options, spec.economics)
    assert "servers needed" in text.splitlines()[1] and "2" in text.splitlines()[1]
    assert "cost per year, tariff 50%" in text
    doc = plan_json(options, spec.economics)
    assert [o["servers"] for o in doc["options"]] == [2, 1]
    assert doc["options"][1]["basis"] == "spec sheet"
    assert "discrete-event simulation" in doc["method"]


def test_curves_come_from_usable_points_with_means_from_throughput() -> None:
    p = profile("m", [(1, 2.0, 5.0, 400.0, 0.1), (4, 4.0, 9.0, 800.0, 0.05)])
    points = p.points + (ProfilePoint("onnxruntime", "cpu", 8).unusable("out of memory"),)
    (curve,) = curves_from_profile(p.with_points(points))
    assert [pt.batch_size for pt in curve.points] == [1, 4]
    assert curve.points[0].mean_ms == pytest.approx(2.5)  # 1 / 400 per second
    assert curve.p99_ms(2) == pytest.approx(5.0 + (9.0 - 5.0) / 3)
    assert curve.best_batch(8) == 4 and curve.best_batch(2) == 1
    assert curve.joules_per_inference(4) == pytest.approx(0.05)


def test_workload_shapes_spread_a_day_over_its_hours() -> None:
    daytime = parse_demand({"model": "x", "studies_per_day": 2400, "profile": "daytime", "slo_p99_ms": 1}, 0)
    assert sum(daytime.hourly_requests) == pytest.approx(2400)
    assert max(daytime.hourly_requests) > 2400 / HOURS > min(daytime.hourly_requests)
    ward = parse_demand({"model": "e", "beds": 10, "requests_per_bed_per_hour": 1800, "slo_p99_ms": 1}, 0)
    assert ward.rate_per_s(3) == pytest.approx(5.0)
    job = parse_demand({"model": "v", "job_items": 60000, "batch": 1000, "window": [22, 4]}, 0)
    assert job.is_job and job.priority_class == "bulk" and job.items_per_request == 1000
    assert [h for h in range(HOURS) if job.hourly_requests[h]] == [0, 1, 2, 3, 22, 23]
    assert sum(job.hourly_requests) == pytest.approx(60)
    assert len(PROFILES["evening"]) == HOURS


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"model": "x", "slo_p99_ms": 5}, "give exactly one of"),
        ({"model": "x", "beds": 3}, "'slo_p99_ms' is required"),
        ({"model": "x", "beds": -3, "slo_p99_ms": 5}, "'beds' must be positive"),
        ({"model": "x", "beds": 3, "slo_p99_ms": 5, "class": "vip"}, "'class' must be one of"),
        ({"model": "x", "studies_per_day": 3, "slo_p99_ms": 5, "profile": [1, 2]}, "24 hourly weights"),
        ({"model": "x", "job_items": 3, "window": [5, 5]}, "'window' must be"),
        ({"model": "x", "beds": 3, "slo_p99_ms": 5, "colour": "red"}, "unknown key"),
        ({"beds": 3}, "'model' must name a model"),
    ],
)
def test_bad_demands_say_what_is_wrong(entry: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_demand(entry, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workload: [", "not valid YAML"),
        ("- 1", "must be a mapping"),
        ("workload: []\nservers: []", "'workload' must be a non-empty list"),
        (PLAN.replace("capex: 5000", "capex: -1"), "'capex' must be at least 0"),
        (PLAN.replace("devices: {cpu: 1}", "devices: {cpu: 0}"), "whole number of slots"),
        (PLAN + "\nmax_utilisation: 2", "'max_utilisation' must be a number from"),
        (
            PLAN.replace("default: {from_device: cpu, speedup: 10, watts: 300}", "default: {p50_ms: [1]}"),
            "give batch_sizes",
        ),
        (PLAN + "\nsurprise: 1", "unknown key"),
    ],
)
def test_bad_plans_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_plan(text)
