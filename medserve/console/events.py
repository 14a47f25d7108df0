"""What the console's event stream sends every few seconds: the live figures the open page shows
(per model, per device, open alerts, jobs in progress, the ward's beds), limited to what the caller
may read."""

from __future__ import annotations

from typing import Any

from medserve.console.figures import device_figures, model_figures
from medserve.console.parts import MONITOR_MODEL, ConsoleParts, device_groups, visible_models
from medserve.values.access import Action, Caller

WINDOW_S = 60.0


async def live_snapshot(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    models = visible_models(parts, caller)
    new, old, seconds = parts.live.pair(WINDOW_S)
    snapshot: dict[str, Any] = {
        "models": {m: model_figures(new, old, seconds, m).live() for m in models},
        "devices": {
            d.device: {"busy": round(d.busy, 3), "energy_w": round(d.energy_w, 2)}
            for d in device_figures(new, old, seconds, device_groups(parts, caller, models))
        },
    }
    if parts.alerts is not None and caller.principal.may(Action.READ, MONITOR_MODEL):
        snapshot["alerts_open"] = len(parts.alerts.list(unacknowledged_only=True, limit=10_000))
    if parts.monitor is not None and caller.principal.may(Action.READ, MONITOR_MODEL):
        snapshot["beds"] = {
            str(b.sequence_id): {"news2": b.news2, "risk": b.risk, "rhythm": b.rhythm.replace("_", " ")}
            for b in parts.monitor.board.beds()
        }
    if parts.jobs is not None:
        snapshot["jobs"] = {
            j.id: {
                "state": j.state,
                "items_done": j.items_done,
                "items_failed": j.items_failed,
                "items_total": j.items_total,
                "items_per_s": round(j.items_per_s, 1) if j.items_per_s else None,
                "eta_s": round(j.eta_s) if j.eta_s is not None else None,
            }
            for j in await parts.jobs.recent(caller, 50)
        }
    return snapshot
