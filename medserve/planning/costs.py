"""Energy and money per year of a fleet: inference energy from the profiles' joules per inference,
idle draw from the server type, purchase price written off over its life with an import tariff."""

from __future__ import annotations

from dataclasses import dataclass, field

from medserve.planning.inputs import PlanInputs
from medserve.planning.servers import ServerType

_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class YearlyCost:
    inference_kwh: float
    idle_kwh: float
    purchase: float
    """Purchase price of the fleet before tariffs."""
    by_tariff: tuple[tuple[float, float], ...]
    """(import tariff, cost per year): purchase × (1 + tariff) / life + energy × price."""
    energy_sources: tuple[str, ...] = ()
    unknown_energy: tuple[str, ...] = field(default=())
    """Models whose curve has no energy figure (their inference energy is not counted)."""

    @property
    def kwh(self) -> float:
        return self.inference_kwh + self.idle_kwh


def yearly_costs(inputs: PlanInputs, server: ServerType, count: int, batches: dict[str, float]) -> YearlyCost:
    """The fleet's energy and cost per year; ``batches``: the mean batch each model ran at."""
    economics = inputs.spec.economics
    days = economics.hours_per_year / 24
    joules = 0.0
    unknown: set[str] = set()
    sources: set[str] = set()
    for demand in inputs.spec.workload.demands:
        curve = inputs.curves[(server.name, demand.model)]
        batch = max(1, min(round(batches.get(demand.model, 1.0)), curve.max_batch_size))
        per_inference = curve.joules_per_inference(batch)
        if per_inference is None:
            unknown.add(demand.model)
            continue
        sources.update(s for s in curve.energy_source.split(",") if s)
        joules += demand.requests_per_day * days * demand.items_per_request * per_inference
    inference_kwh = joules / _JOULES_PER_KWH
    idle_kwh = count * server.idle_watts * economics.hours_per_year / 1000
    purchase = count * server.capex
    energy_cost = (inference_kwh + idle_kwh) * economics.electricity_per_kwh
    by_tariff = tuple(
        (tariff, purchase * (1 + tariff) / server.life_years + energy_cost)
        for tariff in economics.import_tariffs
    )
    return YearlyCost(
        inference_kwh, idle_kwh, purchase, by_tariff, tuple(sorted(sources)), tuple(sorted(unknown))
    )
