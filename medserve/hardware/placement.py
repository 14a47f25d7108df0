"""Placement (pure): from a model's profile, the device(s), runtime, instance count and max batch size
that meet its p99 SLO with the best objective, and every alternative rejected with its reason.

A profile point (runtime × device × batch size) is *feasible* when it is usable, allowed (its device
is in ``config.yaml``'s ``devices`` when given and has not failed) and its p99 is within the SLO. Among
feasible points the objective picks:

``latency``     the lowest p99 (ties: higher throughput);
``throughput``  the highest throughput; other devices' best feasible points are added while each
                raises the total capacity by at least ``min_gain`` (5 %), traffic split by capacity;
``energy``      the fewest joules per inference (ties: lower p99);
``cost``        the lowest cost per inference, ``cost_per_hour / 3600 / throughput``.

With ``expected_rate`` (inferences/s) instances are added up to ``max_instances_per_device`` and
further devices in objective order until the capacity covers the rate. A profile measures one instance.
On the CPU that instance's engine already uses every core, so the CPU gets one instance: a second would
only share the cores (measured on ``chest_xray_classifier``: two instances gave about 0.6 of one's
throughput, see benchmarks/placement.py). On an accelerator capacity is the measured throughput of one
instance times the instance count (an upper bound: the instances share the device).
No feasible point: the lowest-p99 usable point is chosen and the decision says the SLO cannot be met.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from medserve.hardware.profile import ProfilePoint
from medserve.values.errors import InvalidConfig

Objective = Literal["latency", "throughput", "energy", "cost"]
#: the device id of the host CPU (one instance there: its engine already uses every core)
CPU = "cpu"
OBJECTIVES: tuple[str, ...] = get_args(Objective)

_DEVICE_FAULT = re.compile(
    r"cuda error|cudaerror|cuda_error|out of memory|outofmemory|cublas_status|cudnn_status|"
    r"device-side assert|illegal memory access|failed to allocate memory|std::bad_alloc|"
    r"nvml|ecc error|gpu is lost|device lost|cl_out_of_resources",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What a model asks of placement; ``devices`` None allows every profiled device, ``excluded`` maps
    failed devices to why they failed, ``cost_per_hour`` prices devices (needed by ``cost``)."""

    model: str
    objective: Objective = "latency"
    slo_p99_ms: float | None = None
    max_instances_per_device: int = 1
    cost_per_hour: Mapping[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] | None = None
    expected_rate: float | None = None
    min_gain: float = 0.05
    excluded: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidConfig(f"objective '{self.objective}' is not one of {', '.join(OBJECTIVES)}")
        if self.slo_p99_ms is not None and not (math.isfinite(self.slo_p99_ms) and self.slo_p99_ms > 0):
            raise InvalidConfig(f"slo must be a positive number of ms, not {self.slo_p99_ms!r}")
        if self.max_instances_per_device < 1:
            raise InvalidConfig("max_instances_per_device must be >= 1")
        bad = {d: c for d, c in self.cost_per_hour.items() if not (math.isfinite(c) and c >= 0)}
        if bad:
            raise InvalidConfig(f"cost_per_hour must be finite and >= 0: {bad}")
        if self.expected_rate is not None and not self.expected_rate > 0:
            raise InvalidConfig("expected_rate must be > 0 inferences per second")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Instances of the model on one device; ``share`` is the fraction of traffic sent there."""

    device: str
    runtime: str
    instances: int
    max_batch_size: int
    share: float
    p99_ms: float
    throughput: float  # of one instance, inferences per second
    joules_per_inference: float | None
    artifact: str = ""

    @property
    def capacity(self) -> float:
        return self.throughput * self.instances


@dataclass(frozen=True, slots=True)
class Rejected:
    device: str
    runtime: str
    batch_size: int
    reason: str


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    model: str
    objective: Objective
    slo_p99_ms: float | None
    chosen: list[Assignment]
    alternatives: list[Rejected]
    explanation: str
    slo_met: bool
    request: PlacementRequest
    points: tuple[ProfilePoint, ...]

    @property
    def capacity(self) -> float:
        return sum(a.capacity for a in self.chosen)


def is_device_fault(error: BaseException | str) -> bool:
    """Whether an engine error means the device itself is in trouble (CUDA error, out of memory, a
    lost device), so the model should move, rather than a bad request."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return bool(_DEVICE_FAULT.search(text))


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _where(point: ProfilePoint) -> str:
    return f"{point.device} ({point.runtime}, batch {point.batch_size})"


def _p99(point: ProfilePoint) -> float:
    return point.p99_ms if point.p99_ms is not None else math.inf


def _throughput(point: ProfilePoint) -> float:
    return point.throughput or 0.0


def _cost(point: ProfilePoint, request: PlacementRequest) -> float:
    """Cost per million inferences, in the currency of ``cost_per_hour``."""
    price = request.cost_per_hour.get(point.device)
    throughput = _throughput(point)
    if price is None or throughput <= 0:
        return math.inf
    return price / 3600 / throughput * 1e6


def _metric(point: ProfilePoint, request: PlacementRequest) -> tuple[float, float]:
    """The objective's (primary, tie-break) values, lower is better."""
    if request.objective == "latency":
        return (_p99(point), -_throughput(point))
    if request.objective == "throughput":
        return (-_throughput(point), _p99(point))
    if request.objective == "energy":
        joules = point.joules_per_inference
        return (math.inf if joules is None else joules, _p99(point))
    return (_cost(point, request), _p99(point))


def _metric_text(point: ProfilePoint, request: PlacementRequest) -> str:
    if request.objective == "latency":
        return f"p99 {_num(_p99(point))} ms"
    if request.objective == "throughput":
        return f"throughput {_num(_throughput(point))} inf/s"
    if request.objective == "energy":
        return f"energy {_num(point.joules_per_inference or 0.0)} J/inf"
    return f"cost {_num(_cost(point, request))} per million inferences"


def _comparison(point: ProfilePoint, reference: ProfilePoint, request: PlacementRequest) -> str:
    """Why ``point`` lost to ``reference``: ``energy 0.8 J/inf > 0.3 J/inf of cuda:0 (torch, batch 8)``."""
    text = _metric_text(point, request)
    if _metric(point, request)[0] == _metric(reference, request)[0]:
        tie = "throughput" if request.objective == "latency" else "p99"
        return f"{text}, same as {_where(reference)}; tie broken by {tie}"
    worse = "<" if request.objective == "throughput" else ">"
    value = _metric_text(reference, request).split(" ", 1)[1]
    return f"{text} {worse} {value} of {_where(reference)}"


def _infeasible(point: ProfilePoint, request: PlacementRequest) -> str | None:
    """Why ``point`` cannot be chosen at all, or None."""
    if point.device in request.excluded:
        return f"device {point.device} failed: {request.excluded[point.device]}"
    if request.devices is not None and point.device not in request.devices:
        return f"device not in config.yaml devices [{', '.join(request.devices)}]"
    if not point.usable:
        return f"unusable: {point.error or 'not measured'}"
    if request.slo_p99_ms is not None and _p99(point) > request.slo_p99_ms:
        return f"p99 {_num(_p99(point))} ms > SLO {_num(request.slo_p99_ms)} ms"
    if request.objective == "energy" and point.joules_per_inference is None:
        return "no energy measurement"
    if request.objective == "cost" and point.device not in request.cost_per_hour:
        return f"no cost_per_hour given for {point.device}"
    if request.objective in ("throughput", "cost") and _throughput(point) <= 0:
        return "no throughput measured"
    return None


def _instances(point: ProfilePoint, request: PlacementRequest, rate_left: float | None) -> int:
    limit = 1 if point.device == CPU else request.max_instances_per_device
    if rate_left is not None:
        return max(1, min(limit, math.ceil(rate_left / max(_throughput(point), 1e-9))))
    return limit if request.objective == "throughput" else 1


def _assignment(point: ProfilePoint, instances: int) -> Assignment:
    return Assignment(
        device=point.device,
        runtime=point.runtime,
        instances=instances,
        max_batch_size=point.batch_size,
        share=1.0,
        p99_ms=_p99(point),
        throughput=_throughput(point),
        joules_per_inference=point.joules_per_inference,
        artifact=point.artifact,
    )


def _with_shares(chosen: list[Assignment]) -> list[Assignment]:
    total = sum(a.capacity for a in chosen)
    if total <= 0:
        return [replace(a, share=1.0 / len(chosen)) for a in chosen]
    return [replace(a, share=a.capacity / total) for a in chosen]


def _describe(chosen: Sequence[Assignment]) -> str:
    parts = []
    for a in chosen:
        energy = "" if a.joules_per_inference is None else f", {_num(a.joules_per_inference)} J/inf"
        plural = "s" if a.instances != 1 else ""
        parts.append(
            f"{a.device} ({a.runtime}, max batch {a.max_batch_size}, {a.instances} instance{plural}): "
            f"p99 {_num(a.p99_ms)} ms, {_num(a.capacity)} inf/s{energy}, {a.share:.0%} of traffic"
        )
    return "; ".join(parts)


def _grow(
    ranked: list[ProfilePoint], chosen: list[Assignment], request: PlacementRequest
) -> tuple[list[Assignment], dict[tuple[str, str, int], str]]:
    """Add other devices' best feasible points while they pay off (throughput) or the rate needs them."""
    reasons: dict[tuple[str, str, int], str] = {}
    seen = {a.device for a in chosen}
    for point in ranked:
        if point.device in seen:
            continue
        seen.add(point.device)
        total = sum(a.capacity for a in chosen)
        key = (point.device, point.runtime, point.batch_size)
        if request.expected_rate is not None:
            if total >= request.expected_rate:
                reasons[key] = f"not needed: {_num(total)} inf/s already covers {_num(request.expected_rate)}"
                continue
            chosen.append(_assignment(point, _instances(point, request, request.expected_rate - total)))
            continue
        added = _assignment(point, _instances(point, request, None))
        if added.capacity < request.min_gain * total:
            reasons[key] = (
                f"adds {_num(added.capacity)} inf/s, {added.capacity / total:.0%} of {_num(total)} inf/s "
                f"(< {request.min_gain:.0%}: not worth splitting traffic)"
            )
            continue
        chosen.append(added)
    return chosen, reasons


def _fallback(
    points: Sequence[ProfilePoint],
    request: PlacementRequest,
    alternatives: list[Rejected],
    decision: Callable[[list[Assignment], str, bool], PlacementDecision],
) -> PlacementDecision:
    """No feasible point: the lowest-p99 allowed point, saying what could not be met."""
    allowed = [
        p
        for p in points
        if p.usable
        and p.device not in request.excluded
        and (request.devices is None or p.device in request.devices)
    ]
    if not allowed:
        return decision([], f"{request.model}: no usable profile point; nothing can be placed", False)
    slo = request.slo_p99_ms
    within = [p for p in allowed if slo is None or _p99(p) <= slo]
    fastest = min(within or allowed, key=lambda p: (_p99(p), -_throughput(p)))
    reason = next(
        (r.reason for r in alternatives if (r.device, r.runtime, r.batch_size) == _point_key(fastest)), ""
    )
    alternatives[:] = [r for r in alternatives if (r.device, r.runtime, r.batch_size) != _point_key(fastest)]
    chosen = [_assignment(fastest, _instances(fastest, request, request.expected_rate))]
    if within:
        return decision(
            chosen,
            f"{request.model}: objective {request.objective} cannot be evaluated ({reason}); placed by "
            f"lowest p99 instead: {_describe(chosen)}",
            True,
        )
    return decision(
        chosen,
        f"{request.model}: SLO p99 <= {_num(slo or 0)} ms cannot be met on this machine; the fastest is "
        f"{_where(fastest)} at p99 {_num(_p99(fastest))} ms: placed there anyway. {_describe(chosen)}",
        False,
    )


def decide(points: Sequence[ProfilePoint], request: PlacementRequest) -> PlacementDecision:
    """The placement of ``request.model`` given its profile ``points``."""
    alternatives: list[Rejected] = []
    feasible: list[ProfilePoint] = []
    for point in points:
        why = _infeasible(point, request)
        if why is None:
            feasible.append(point)
        else:
            alternatives.append(Rejected(point.device, point.runtime, point.batch_size, why))

    def decision(chosen: list[Assignment], explanation: str, met: bool) -> PlacementDecision:
        return PlacementDecision(
            request.model,
            request.objective,
            request.slo_p99_ms,
            chosen,
            alternatives,
            explanation,
            met,
            request,
            tuple(points),
        )

    if not feasible:
        return _fallback(points, request, alternatives, decision)

    ranked = sorted(feasible, key=lambda p: _metric(p, request))
    best = ranked[0]
    chosen = [_assignment(best, _instances(best, request, request.expected_rate))]
    reasons: dict[tuple[str, str, int], str] = {}
    if request.objective == "throughput" or request.expected_rate is not None:
        chosen, reasons = _grow(ranked[1:], chosen, request)
    chosen = _with_shares(chosen)
    picked = {_chosen_key(a) for a in chosen}
    by_device = {p.device: p for p in ranked if _point_key(p) in picked}
    for point in ranked:
        key = _point_key(point)
        if key in picked:
            continue
        reference = by_device.get(point.device, best)
        why = reasons.get(key) or _comparison(point, reference, request)
        alternatives.append(Rejected(point.device, point.runtime, point.batch_size, why))
    slo = "" if request.slo_p99_ms is None else f", SLO p99 <= {_num(request.slo_p99_ms)} ms"
    capacity = f"; total {_num(sum(a.capacity for a in chosen))} inf/s" if len(chosen) > 1 else ""
    explanation = f"{request.model}: objective {request.objective}{slo}: {_describe(chosen)}{capacity}"
    if request.expected_rate is not None and sum(a.capacity for a in chosen) < request.expected_rate:
        explanation += f"; WARNING: below the expected {_num(request.expected_rate)} inf/s"
    return decision(chosen, explanation, True)


def _point_key(point: ProfilePoint) -> tuple[str, str, int]:
    return (point.device, point.runtime, point.batch_size)


def _chosen_key(assignment: Assignment) -> tuple[str, str, int]:
    return (assignment.device, assignment.runtime, assignment.max_batch_size)


def failover(
    decision: PlacementDecision, failed_device: str, reason: str = "device fault"
) -> PlacementDecision:
    """The next-best placement without ``failed_device`` (and without devices that failed before)."""
    request = replace(decision.request, excluded={**decision.request.excluded, failed_device: reason})
    moved = decide(decision.points, request)
    before = ", ".join(a.device for a in decision.chosen) or "nothing"
    after = ", ".join(a.device for a in moved.chosen) or "nothing"
    return replace(
        moved,
        explanation=f"failover: {failed_device} failed ({reason}); {before} -> {after}. {moved.explanation}",
    )


def format_decision(decision: PlacementDecision, *, explain: bool = False) -> str:
    """The decision as text; with ``explain``, every rejected alternative and its reason."""
    lines = [decision.explanation]
    if explain and decision.alternatives:
        lines.append("  rejected:")
        for r in sorted(decision.alternatives, key=lambda r: (r.device, r.runtime, r.batch_size)):
            lines.append(f"    {r.device} {r.runtime} batch {r.batch_size}: {r.reason}")
    return "\n".join(lines)
