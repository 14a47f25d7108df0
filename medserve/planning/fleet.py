"""Sizing: for each server type, the fewest servers that meet every demand's SLO at its busiest hour,
with their utilisation, energy and cost per year.

Method: a discrete-event simulation (:mod:`medserve.planning.simulation`) of one server carrying
``1/n`` of each demand's requests (Poisson splitting: a load balancer that sends each request to a
random server; round robin does a little better, so the figure errs on the safe side), at every
critical hour (each demand's busiest hour and the hour with the most work). ``n`` starts at the
fewest servers that keep every device at most ``max_utilisation`` busy on average at the peak and
grows until every p99 meets its SLO; then the smallest such ``n`` is found by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from medserve.planning.costs import YearlyCost, yearly_costs
from medserve.planning.inputs import PlanInputs
from medserve.planning.servers import ServerType
from medserve.planning.simulation import Batcher, SimulationResult, Stream, simulate
from medserve.planning.workload import HOURS, Demand
from medserve.values.errors import InvalidInput

_MAX_SERVERS = 100_000


@dataclass(frozen=True, slots=True)
class DemandOutcome:
    name: str
    model: str
    device: str
    hour: int
    """The hour of the day whose p99 is shown (the worst of the critical hours)."""
    rate_per_s: float
    """Requests per second to the whole fleet at that hour."""
    p99_ms: float
    slo_p99_ms: float | None
    samples: int

    @property
    def met(self) -> bool:
        return self.slo_p99_ms is None or self.p99_ms <= self.slo_p99_ms


@dataclass
class FleetOption:
    server: ServerType
    basis: str
    count: int | None
    """Servers needed; None when this type cannot carry the mix (``reason`` says why)."""
    reason: str = ""
    outcomes: list[DemandOutcome] = field(default_factory=list)
    peak_utilisation: dict[str, float] = field(default_factory=dict)
    day_utilisation: dict[str, float] = field(default_factory=dict)
    cost: YearlyCost | None = None
    notes: list[str] = field(default_factory=list)


def _work_s(inputs: PlanInputs, server: ServerType, demand: Demand) -> float:
    """Mean device seconds one request of ``demand`` takes at its model's best batch size."""
    curve = inputs.curves[(server.name, demand.model)]
    batch = curve.best_batch(inputs.batching[demand.model].max_batch_size)
    return curve.ms_per_inference(batch) * demand.items_per_request / 1000


def _device(inputs: PlanInputs, server: ServerType, model: str) -> str:
    return inputs.curves[(server.name, model)].device.split(":")[0]


def _lower_bound(inputs: PlanInputs, server: ServerType, hours: list[int]) -> int:
    demands = inputs.spec.workload.demands
    needed = 1
    for hour in hours:
        busy: dict[str, float] = {}
        for d in demands:
            device = _device(inputs, server, d.model)
            busy[device] = busy.get(device, 0.0) + d.rate_per_s(hour) * _work_s(inputs, server, d)
        for device, seconds in busy.items():
            capacity = server.devices[device] * inputs.spec.max_utilisation
            needed = max(needed, math.ceil(seconds / capacity - 1e-9))
    return needed


def _simulate_hour(inputs: PlanInputs, server: ServerType, hour: int, count: int) -> SimulationResult:
    spec = inputs.spec
    streams = [
        Stream(d.name, d.model, d.rate_per_s(hour) / count, d.priority, d.items_per_request)
        for d in spec.workload.demands
        if d.rate_per_s(hour) > 0
    ]
    models = sorted({s.model for s in streams})
    batchers = [
        Batcher(
            m,
            _device(inputs, server, m),
            inputs.curves[(server.name, m)],
            inputs.batching[m].max_batch_size,
            inputs.batching[m].max_queue_delay_s,
            inputs.batching[m].preferred,
        )
        for m in models
    ]
    total = sum(s.rate_per_s for s in streams)
    slowest = max(b.curve.mean_ms(b.limit) for b in batchers) / 1000
    rare = min(
        (s.rate_per_s for s in streams if _slo(spec.workload.demands, s.name) is not None), default=total
    )
    horizon = max(spec.min_samples / rare, 200 * slowest, 60.0)
    horizon = min(horizon, max(spec.max_requests / total, 200 * slowest))
    return simulate(
        streams,
        batchers,
        {device: server.devices[device] for device in {b.device for b in batchers}},
        horizon_s=horizon,
        seed=spec.seed + 7919 * hour + count,
        overhead_ms=spec.overhead_ms,
    )


def _slo(demands: tuple[Demand, ...], name: str) -> float | None:
    return next(d.slo_p99_ms for d in demands if d.name == name)


def _evaluate(
    inputs: PlanInputs, server: ServerType, hours: list[int], count: int
) -> tuple[bool, list[DemandOutcome], dict[str, float], dict[str, float]]:
    """Whether ``count`` servers carry the mix; the worst outcome per demand, the peak utilisation per
    device and the mean batch per model (at the hour of the most work)."""
    demands = inputs.spec.workload.demands
    worst: dict[str, DemandOutcome] = {}
    peak: dict[str, float] = {}
    batches: dict[str, float] = {}
    ok = True
    for hour in hours:
        result = _simulate_hour(inputs, server, hour, count)
        if result.saturated:
            return False, [], {}, {}
        for device, share in result.utilisation.items():
            if share > peak.get(device, -1.0):
                peak[device] = share
                batches.update(result.mean_batch)
        ok = ok and all(u <= inputs.spec.max_utilisation + 0.02 for u in result.utilisation.values())
        for d in demands:
            stats = result.streams.get(d.name)
            if stats is None:
                continue
            outcome = DemandOutcome(
                d.name,
                d.model,
                _device(inputs, server, d.model),
                hour,
                d.rate_per_s(hour),
                stats.p99_ms,
                d.slo_p99_ms,
                stats.requests,
            )
            if d.name not in worst or outcome.p99_ms > worst[d.name].p99_ms:
                worst[d.name] = outcome
            ok = ok and outcome.met
    return ok, [worst[d.name] for d in demands if d.name in worst], peak, batches


def _day_utilisation(
    inputs: PlanInputs, server: ServerType, count: int, batches: dict[str, float]
) -> dict[str, float]:
    busy: dict[str, float] = {}
    for d in inputs.spec.workload.demands:
        curve = inputs.curves[(server.name, d.model)]
        batch = max(1, min(round(batches.get(d.model, 1.0)), curve.max_batch_size))
        seconds = d.requests_per_day * d.items_per_request * curve.ms_per_inference(batch) / 1000
        device = _device(inputs, server, d.model)
        busy[device] = busy.get(device, 0.0) + seconds
    return {k: v / (HOURS * 3600 * count * server.devices[k]) for k, v in busy.items()}


def _infeasible(inputs: PlanInputs, server: ServerType) -> str:
    if server.name in inputs.missing:
        return "; ".join(inputs.missing[server.name])
    for d in inputs.spec.workload.demands:
        curve = inputs.curves[(server.name, d.model)]
        alone = curve.p99_ms(1) + inputs.spec.overhead_ms
        if d.slo_p99_ms is not None and alone > d.slo_p99_ms:
            return (
                f"{d.name}: one request alone takes {alone:.3g} ms at p99 on {curve.device}, "
                f"above its SLO of {d.slo_p99_ms:.3g} ms"
            )
    return ""


def size_option(inputs: PlanInputs, server: ServerType) -> FleetOption:
    """The fewest servers of type ``server`` that carry the mix, with what they achieve and cost."""
    curves = [c for (s, _), c in inputs.curves.items() if s == server.name]
    bases = sorted({c.basis for c in curves})
    option = FleetOption(server, " + ".join(bases) or "none", None)
    option.reason = _infeasible(inputs, server)
    if option.reason:
        return option
    work = {d.name: _work_s(inputs, server, d) for d in inputs.spec.workload.demands}
    hours = inputs.spec.workload.critical_hours(work)
    low = _lower_bound(inputs, server, hours)
    high = low
    found = _evaluate(inputs, server, hours, high)
    while not found[0]:
        low = high + 1
        high = high * 2
        if high > _MAX_SERVERS:
            option.reason = f"more than {_MAX_SERVERS} servers would be needed"
            return option
        found = _evaluate(inputs, server, hours, high)
    while low < high:
        middle = (low + high) // 2
        trial = _evaluate(inputs, server, hours, middle)
        if trial[0]:
            high, found = middle, trial
        else:
            low = middle + 1
    _, option.outcomes, option.peak_utilisation, batches = found
    option.count = high
    option.day_utilisation = _day_utilisation(inputs, server, high, batches)
    option.cost = yearly_costs(inputs, server, high, batches)
    option.notes += [
        f"{o.name}: p99 from only {o.samples} simulated requests at {o.hour:02d}h (rough; raise "
        "simulation.max_requests for more)"
        for o in option.outcomes
        if o.samples < 500
    ]
    if option.cost.unknown_energy:
        option.notes.append(f"no energy figures for {', '.join(option.cost.unknown_energy)}: not counted")
    return option


def predict(inputs: PlanInputs, server: ServerType, hour: int, count: int = 1) -> SimulationResult:
    """What ``count`` servers of type ``server`` do at ``hour`` of the day: the simulation the sizing
    runs (per-demand latencies, device utilisation, mean batch), for checking it against a real run."""
    if server.name in inputs.missing:
        raise InvalidInput(f"server '{server.name}': {'; '.join(inputs.missing[server.name])}")
    return _simulate_hour(inputs, server, hour, count)


def plan_fleet(inputs: PlanInputs) -> list[FleetOption]:
    """One option per server type, in the plan's order."""
    return [size_option(inputs, server) for server in inputs.spec.servers]
