"""The Models page and each model's page: state, versions, placement and its reason, live latency
(p50, p99, histogram), throughput, queue depth, batch sizes, deadline attainment per priority class,
drift scores."""

from __future__ import annotations

import math
from typing import Any

from medserve.console.charts import bar_chart
from medserve.console.figures import ModelFigures, model_figures
from medserve.console.parts import ConsoleParts, placement_of
from medserve.values.access import Action, Caller

WINDOW_S = 60.0


def _bound(seconds: float) -> str:
    if math.isinf(seconds):
        return "more"
    return f"{seconds * 1000:g}" if seconds < 1 else f"{seconds:g}s"


def _shown(buckets: list[tuple[float, float]], least: int) -> list[tuple[float, float]]:
    """The buckets from the first with a count to the last with one, widened to ``least`` buckets
    (to the right, then to the left) so that a single busy bucket still reads as a histogram."""
    busy = [i for i, (_, count) in enumerate(buckets) if count]
    if not busy:
        return buckets[:least]
    first, last = busy[0], busy[-1] + 1
    while last - first < least and (last < len(buckets) or first > 0):
        if last < len(buckets):
            last += 1
        else:
            first -= 1
    return buckets[first:last]


def latency_chart(figures: ModelFigures) -> str:
    bars = [(f"≤{_bound(b)}", count) for b, count in _shown(figures.latency, 8)]
    return bar_chart(bars, f"{figures.model}: request latency (last {figures.window_s:.0f} s)", "ms (bucket)")


def batch_chart(figures: ModelFigures) -> str:
    bars = [(f"≤{'more' if math.isinf(b) else f'{b:g}'}", count) for b, count in _shown(figures.batch, 6)]
    return bar_chart(bars, f"{figures.model}: batch size per execution", "rows per batch (bucket)")


def models(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    rows = parts.service.repository_index(False, caller)
    new, old, seconds = parts.live.pair(WINDOW_S)
    loaded = {r.name for r in rows if r.state == "READY"}
    return {
        "rows": rows,
        "live": {name: model_figures(new, old, seconds, name) for name in sorted(loaded)},
        "manage": caller.principal.may(Action.MANAGE),
    }


def model_detail(parts: ConsoleParts, caller: Caller, name: str) -> dict[str, Any]:
    metadata = parts.service.model_metadata(name, "", caller)
    rows = [r for r in parts.service.repository_index(False, caller) if r.name == name]
    new, old, seconds = parts.live.pair(WINDOW_S)
    figures = model_figures(new, old, seconds, name)
    return {
        "name": name,
        "metadata": metadata,
        "rows": rows,
        "placement": placement_of(parts, caller, name),
        "figures": figures,
        "latency_chart": latency_chart(figures),
        "batch_chart": batch_chart(figures),
        "manage": caller.principal.may(Action.MANAGE, name),
    }
