"""A plan file and the measured profiles → everything the planner needs, checked.

The plan file (YAML or JSON) has ``workload`` (:mod:`medserve.planning.workload`), ``servers`` and
``economics`` (:mod:`medserve.planning.servers`), and optionally ``request_overhead_ms`` (time a
request spends in the door besides its batch: 1 ms by default), ``max_utilisation`` (the most a
device may be busy at the peak: 0.9) and ``simulation`` (``max_requests`` per simulated hour, 60000;
``min_samples`` per demand, 2000; ``seed``, 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from medserve.hardware.profile import ModelProfile
from medserve.planning.servers import Economics, ServerType, parse_economics, parse_servers
from medserve.planning.service_curve import CurvePoint, ServiceCurve, curves_from_profile
from medserve.planning.workload import Workload, parse_workload
from medserve.values.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """A model's dynamic batching, as its config.yaml sets it."""

    max_batch_size: int = 1
    max_queue_delay_s: float = 0.0
    preferred: tuple[int, ...] = ()

    @staticmethod
    def from_triton_config(config: Mapping[str, Any]) -> BatchSettings:
        """From the model's configuration in Triton's form (``GET /v2/models/{m}/config``)."""
        batching = config.get("dynamic_batching") or {}
        return BatchSettings(
            max(1, int(config.get("max_batch_size") or 1)),
            float(batching.get("max_queue_delay_microseconds", 0)) / 1e6,
            tuple(int(b) for b in batching.get("preferred_batch_size", ())),
        )


@dataclass(frozen=True)
class PlanSpec:
    workload: Workload
    servers: tuple[ServerType, ...]
    economics: Economics
    overhead_ms: float = 1.0
    max_utilisation: float = 0.9
    max_requests: int = 60_000
    min_samples: int = 2_000
    seed: int = 0


@dataclass
class PlanInputs:
    spec: PlanSpec
    batching: dict[str, BatchSettings]
    curves: dict[tuple[str, str], ServiceCurve] = field(default_factory=dict)
    """(server type, model) → the curve its model runs on there."""
    missing: dict[str, list[str]] = field(default_factory=dict)
    """server type → why some model cannot be placed on it."""


def load_plan(text: str) -> PlanSpec:
    """Parse a plan file's text; ``InvalidInput`` names what is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"the plan is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the plan must be a mapping with 'workload' and 'servers'")
    unknown = sorted(
        set(doc)
        - {"workload", "servers", "economics", "request_overhead_ms", "max_utilisation", "simulation"}
    )
    if unknown:
        raise InvalidInput(f"the plan has unknown key(s) {', '.join(map(str, unknown))}")
    simulation = doc.get("simulation") or {}
    if not isinstance(simulation, dict):
        raise InvalidInput("'simulation' must be a mapping")
    overhead = doc.get("request_overhead_ms", 1.0)
    ceiling = doc.get("max_utilisation", 0.9)
    for what, value, low, high in (
        ("request_overhead_ms", overhead, 0.0, math.inf),
        ("max_utilisation", ceiling, 0.05, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise InvalidInput(f"'{what}' must be a number from {low} to {high}")
    knobs = {}
    for key, default, low in (("max_requests", 60_000, 1000), ("min_samples", 2_000, 100), ("seed", 0, 0)):
        value = simulation.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInput(f"simulation: '{key}' must be a whole number >= {low}")
        knobs[key] = value
    return PlanSpec(
        parse_workload(doc.get("workload")),
        parse_servers(doc.get("servers")),
        parse_economics(doc.get("economics")),
        float(overhead),
        float(ceiling),
        **knobs,
    )


def _spec_curve(
    model: str, figures: Mapping[str, Any], device: str, measured: list[ServiceCurve]
) -> ServiceCurve:
    watts = float(figures["watts"]) if "watts" in figures else None
    if "from_device" in figures:
        kind = str(figures["from_device"]).split(":")[0]
        source = next((c for c in measured if c.device.split(":")[0] == kind), None)
        if source is None:
            raise InvalidInput(f"spec sheet for {model}: no measured profile on '{kind}' to scale from")
        return source.scaled(float(figures["speedup"]), device, watts)
    points = []
    for b, p50, p99 in zip(figures["batch_sizes"], figures["p50_ms"], figures["p99_ms"]):
        if isinstance(b, bool) or not isinstance(b, int):
            raise InvalidInput(f"spec sheet for {model}: batch sizes must be whole numbers")
        joules = None if watts is None else watts * float(p50) / 1000 / b
        points.append(CurvePoint(b, float(p50), float(p99), None, joules))
    return ServiceCurve(model, device, "spec sheet", tuple(points), "spec sheet", "spec sheet")


def gather(
    spec: PlanSpec, profiles: Mapping[str, ModelProfile], batching: Mapping[str, BatchSettings]
) -> PlanInputs:
    """Choose, for every server type and model, the curve it runs on: a measured one on a device of
    the server's kinds (the fastest per inference), else its spec sheet; note what has neither."""
    inputs = PlanInputs(spec, {m: batching.get(m, BatchSettings()) for m in spec.workload.models()})
    for server in spec.servers:
        for model in spec.workload.models():
            measured = curves_from_profile(profiles[model]) if model in profiles else []
            limit = inputs.batching[model].max_batch_size
            usable = (
                [c for c in measured if c.device.split(":")[0] in server.devices] if server.measured else []
            )
            figures = server.spec_for(model)
            if usable:
                inputs.curves[(server.name, model)] = min(
                    usable, key=lambda c: c.ms_per_inference(c.best_batch(limit))
                )
            elif figures is not None:
                device = str(figures.get("device", next(iter(server.devices)))).split(":")[0]
                if device not in server.devices:
                    raise InvalidInput(
                        f"server '{server.name}': spec sheet device '{device}' is not one of its"
                    )
                try:
                    inputs.curves[(server.name, model)] = _spec_curve(model, figures, device, measured)
                except InvalidInput as exc:
                    inputs.missing.setdefault(server.name, []).append(str(exc))
            else:
                why = "no stored profile" if model not in profiles else "no profile on its devices"
                inputs.missing.setdefault(server.name, []).append(
                    f"{model}: {why} ({', '.join(server.devices)}) and no spec sheet"
                )
    return inputs
