"""The Profiles and placement page (latency, throughput and joules per inference against batch size,
per device and runtime, and the placement each model runs with) and the fleet planner's page."""

from __future__ import annotations

import asyncio
from typing import Any

from medserve.console.charts import line_chart
from medserve.console.parts import ConsoleParts, placement_of
from medserve.hardware.plot import series
from medserve.hardware.profile import ModelProfile
from medserve.planning.fleet import FleetOption, plan_fleet
from medserve.planning.inputs import BatchSettings, PlanSpec, gather, load_plan
from medserve.planning.report import METHOD, rows
from medserve.planning.sources import example_plan, stored_profiles
from medserve.values.access import Action, Caller
from medserve.values.errors import Conflict, InvalidInput, MedserveError

_METRICS = (
    ("p99_ms", "p99 latency", "ms"),
    ("throughput", "throughput", "inferences / s"),
    ("joules_per_inference", "energy", "J / inference"),
)


def _charts(profile: ModelProfile) -> list[str]:
    return [
        line_chart(series(profile, metric), f"{profile.model}: {title}", "batch size", unit, width=360)
        for metric, title, unit in _METRICS
    ]


async def profiles(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    caller.principal.require(Action.READ)
    names = caller.principal.visible(parts.service.repository_models())
    found = await asyncio.to_thread(stored_profiles, parts.database, names)
    return {
        "models": [
            {
                "name": name,
                "profile": found.get(name),
                "charts": _charts(found[name]) if name in found else [],
                "placement": placement_of(parts, caller, name),
            }
            for name in names
        ]
    }


class Planner:
    """Runs one plan at a time (a plan simulates for seconds: more at once would starve serving)."""

    def __init__(self) -> None:
        self._busy = asyncio.Lock()

    def example(self, parts: ConsoleParts, caller: Caller) -> str:
        return example_plan(caller.principal.visible(parts.service.repository_models()))

    def _batching(
        self, parts: ConsoleParts, caller: Caller, spec: PlanSpec
    ) -> tuple[dict[str, BatchSettings], list[str]]:
        batching: dict[str, BatchSettings] = {}
        notes = []
        for model in spec.workload.models():
            try:
                batching[model] = BatchSettings.from_triton_config(
                    parts.service.model_config(model, "", caller)
                )
            except MedserveError as exc:
                notes.append(f"{model}: batching unknown ({exc}); planned without batching")
        return batching, notes

    async def run(self, parts: ConsoleParts, caller: Caller, text: str) -> dict[str, Any]:
        caller.principal.require(Action.READ)
        if len(text) > 100_000:
            raise InvalidInput("a plan is at most 100 000 characters")
        spec = load_plan(text)
        for model in spec.workload.models():
            if not caller.principal.may(Action.READ, model):
                caller.principal.require(Action.READ, model)
        if self._busy.locked():
            raise Conflict("another plan is being computed; try again in a moment")
        async with self._busy:
            batching, notes = self._batching(parts, caller, spec)
            profiles = await asyncio.to_thread(stored_profiles, parts.database, spec.workload.models())
            options: list[FleetOption] = await asyncio.to_thread(plan_fleet, gather(spec, profiles, batching))
        return {
            "options": options,
            "rows": rows(options, spec.economics),
            "notes": notes,
            "method": METHOD,
            "economics": spec.economics,
        }
