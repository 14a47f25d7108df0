"""The Overview page: replicas (model instances per device), devices with utilisation and energy,
open alerts and recent errors."""

from __future__ import annotations

import asyncio
from typing import Any

from medserve.cluster.registry import list_replicas
from medserve.console.figures import device_figures, model_figures
from medserve.console.parts import MONITOR_MODEL, ConsoleParts, device_groups, visible_models
from medserve.imaging import instance_store as imaging_states
from medserve.values.access import Action, Caller

WINDOW_S = 60.0


def _devices(parts: ConsoleParts) -> dict[str, dict[str, Any]]:
    found = parts.devices()
    if found is None:
        return {}
    return {d.id: {"name": d.name, "kind": d.kind, "cores": d.cores} for d in found.devices}


async def overview(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    models = visible_models(parts, caller)
    groups = device_groups(parts, caller, models)
    new, old, seconds = parts.live.pair(WINDOW_S)
    described = _devices(parts)
    devices = [
        {"figures": figures, **described.get(figures.device, {"name": "", "kind": "", "cores": None})}
        for figures in device_figures(new, old, seconds, groups)
    ]
    per_model = [model_figures(new, old, seconds, m) for m in models]
    errors: list[tuple[str, str, float, float]] = [
        (f.model, reason, recent, total) for f in per_model for reason, recent, total in f.failures if total
    ]
    errors.sort(key=lambda e: (-e[2], -e[3]))
    alerts: list[Any] | None = None
    if parts.alerts is not None and caller.principal.may(Action.READ, MONITOR_MODEL):
        alerts = parts.alerts.list(unacknowledged_only=True, limit=10)
    failed_series = 0
    if parts.imaging is not None:
        studies = await asyncio.to_thread(parts.imaging.visible_studies, caller.principal)
        failed_series = sum(
            1 for study in studies for s in study["series"] if s["state"] == imaging_states.FAILED
        )
    failed_jobs: list[Any] = []
    if parts.jobs is not None:
        failed_jobs = [j for j in await parts.jobs.recent(caller, 50) if j.state == "failed"][:5]
    servers = await asyncio.to_thread(list_replicas, parts.database, parts.replica_stale_after_s)
    return {
        "servers": [r for r in servers if r.state != "stopped"][:50],
        "replicas": [{"model": m, "groups": groups.get(m, [])} for m in models],
        "devices": devices,
        "models": per_model,
        "window_s": seconds,
        "errors": errors[:20],
        "alerts": alerts,
        "failed_series": failed_series,
        "failed_jobs": failed_jobs,
        "ready": parts.service.ready(),
    }
