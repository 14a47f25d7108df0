"""The planner's answer, side by side: as a text table (``medserve plan``) and as JSON (the console,
``--json``)."""

from __future__ import annotations

import math
from typing import Any

from medserve.planning.fleet import FleetOption
from medserve.planning.servers import Economics

METHOD = (
    "discrete-event simulation of one server's batchers and devices at each critical hour, "
    "1/n of the traffic per server (random load balancing)"
)


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return "inf"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _share(values: dict[str, float]) -> str:
    return ", ".join(f"{device} {share:.0%}" for device, share in sorted(values.items())) or "-"


def rows(options: list[FleetOption], economics: Economics) -> list[tuple[str, list[str]]]:
    """(row label, one cell per option) for the side-by-side table."""
    table: list[tuple[str, list[str]]] = [
        ("servers needed", [str(o.count) if o.count is not None else "cannot" for o in options]),
        ("figures from", [o.basis for o in options]),
        ("peak utilisation", [_share(o.peak_utilisation) for o in options]),
        ("mean utilisation (day)", [_share(o.day_utilisation) for o in options]),
    ]
    names = list(dict.fromkeys(outcome.name for o in options for outcome in o.outcomes))
    for name in names:
        cells = []
        for o in options:
            found = next((x for x in o.outcomes if x.name == name), None)
            if found is None:
                cells.append("-")
                continue
            slo = f" / SLO {_ms(found.slo_p99_ms)}" if found.slo_p99_ms is not None else " (job)"
            cells.append(f"{_ms(found.p99_ms)}{slo} at {found.hour:02d}h")
        table.append((f"p99 ms: {name}", cells))
    table.append(("energy per year (kWh)", [f"{o.cost.kwh:,.0f}" if o.cost else "-" for o in options]))
    table.append(
        ("purchase", [f"{o.cost.purchase:,.0f} {economics.currency}" if o.cost else "-" for o in options])
    )
    for index, tariff in enumerate(economics.import_tariffs):
        table.append(
            (
                f"cost per year, tariff {tariff:.0%}",
                [
                    f"{o.cost.by_tariff[index][1]:,.0f} {economics.currency}" if o.cost else "-"
                    for o in options
                ],
            )
        )
    return table


def format_plan(options: list[FleetOption], economics: Economics) -> str:
    header = ["", *(o.server.name for o in options)]
    body = [[label, *cells] for label, cells in rows(options, economics)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]
    ]
    for o in options:
        if o.reason:
            lines.append(f"{o.server.name}: cannot carry the mix: {o.reason}")
        lines += [f"{o.server.name}: note: {note}" for note in o.notes]
    lines.append(
        f"method: {METHOD}; electricity {economics.electricity_per_kwh} {economics.currency}/kWh; "
        "purchase written off over each server's life"
    )
    return "\n".join(lines)


def plan_json(options: list[FleetOption], economics: Economics) -> dict[str, Any]:
    def option(o: FleetOption) -> dict[str, Any]:
        return {
            "server": o.server.name,
            "basis": o.basis,
            "servers": o.count,
            "reason": o.reason,
            "peak_utilisation": o.peak_utilisation,
            "day_utilisation": o.day_utilisation,
            "demands": [
                {
                    "name": x.name,
                    "model": x.model,
                    "device": x.device,
                    "hour": x.hour,
                    "rate_per_s": x.rate_per_s,
                    "p99_ms": x.p99_ms if math.isfinite(x.p99_ms) else None,
                    "slo_p99_ms": x.slo_p99_ms,
                    "met": x.met,
                    "samples": x.samples,
                }
                for x in o.outcomes
            ],
            "energy_kwh_per_year": o.cost.kwh if o.cost else None,
            "inference_kwh_per_year": o.cost.inference_kwh if o.cost else None,
            "purchase": o.cost.purchase if o.cost else None,
            "cost_per_year": [{"import_tariff": t, "cost": c} for t, c in o.cost.by_tariff] if o.cost else [],
            "energy_sources": list(o.cost.energy_sources) if o.cost else [],
            "notes": o.notes,
        }

    return {
        "method": METHOD,
        "currency": economics.currency,
        "electricity_per_kwh": economics.electricity_per_kwh,
        "options": [option(o) for o in options],
    }
