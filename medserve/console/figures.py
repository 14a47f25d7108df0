"""The console's live figures per model and per device, from two snapshots of the metrics
(:mod:`medserve.console.live`): what the Models page, the Overview and the event stream show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medserve.console.live import (
    Snapshot,
    attainment,
    bucket_counts,
    histogram_quantile,
    label_values,
    per_bucket,
    rate,
    subtract,
)
from medserve.core.metrics import CLASS_OUTCOMES


@dataclass(frozen=True)
class ClassFigures:
    name: str
    outcomes: dict[str, float]
    attainment: float | None


@dataclass
class ModelFigures:
    model: str
    window_s: float
    requests_per_s: float = 0.0
    inferences_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    queue_depth: float = 0.0
    busy: float = 0.0
    """Execution seconds per second (0.5: an execution was running half the time)."""
    latency: list[tuple[float, float]] = field(default_factory=list)
    """Requests per latency bucket in the window (upper bound in seconds)."""
    batch: list[tuple[float, float]] = field(default_factory=list)
    """Executions per batch-size bucket in the window."""
    classes: list[ClassFigures] = field(default_factory=list)
    failures: list[tuple[str, float, float]] = field(default_factory=list)
    """(reason, in the window, in total)."""
    drift: list[tuple[str, str, str, float]] = field(default_factory=list)
    """(version, tensor, kind, score)."""
    energy_w: float = 0.0
    energy_j: float = 0.0

    def live(self) -> dict[str, Any]:
        """What the event stream sends for this model."""
        return {
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "requests_per_s": round(self.requests_per_s, 2),
            "queue_depth": int(self.queue_depth),
            "busy": round(self.busy, 3),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _window(new: Snapshot, old: Snapshot | None, name: str, **match: str) -> list[tuple[float, float]]:
    cumulative = bucket_counts(new, name, **match)
    return subtract(cumulative, bucket_counts(old, name, **match)) if old is not None else cumulative


def model_figures(new: Snapshot, old: Snapshot | None, seconds: float, model: str) -> ModelFigures:
    figures = ModelFigures(model, seconds)
    figures.requests_per_s = rate(new, old, seconds, "medserve_inference_request_success_total", model=model)
    figures.inferences_per_s = rate(new, old, seconds, "medserve_inference_count_total", model=model)
    latency = _window(new, old, "medserve_request_duration_seconds", model=model)
    p50, p99 = histogram_quantile(0.5, latency), histogram_quantile(0.99, latency)
    figures.p50_ms = None if p50 is None else p50 * 1000
    figures.p99_ms = None if p99 is None else p99 * 1000
    figures.latency = per_bucket(latency)
    figures.batch = per_bucket(_window(new, old, "medserve_batch_size", model=model))
    figures.queue_depth = new.total("medserve_queue_depth", model=model)
    figures.busy = rate(new, old, seconds, "medserve_compute_duration_seconds_sum", model=model)
    for name in label_values(new, "medserve_requests_by_class_total", "class", model=model):
        outcomes = {
            o: new.total("medserve_requests_by_class_total", model=model, **{"class": name, "outcome": o})
            for o in CLASS_OUTCOMES
        }
        figures.classes.append(
            ClassFigures(name, outcomes, attainment(*(outcomes[o] for o in CLASS_OUTCOMES)))
        )
    for reason in label_values(new, "medserve_inference_request_failure_total", "reason", model=model):
        total = new.total("medserve_inference_request_failure_total", model=model, reason=reason)
        recent = total - (
            old.total("medserve_inference_request_failure_total", model=model, reason=reason) if old else 0
        )
        figures.failures.append((reason, recent, total))
    for labels, value in new.select("medserve_model_drift_score", model=model):
        figures.drift.append(
            (labels.get("version", ""), labels.get("tensor", ""), labels.get("kind", ""), value)
        )
    figures.energy_w = rate(new, old, seconds, "medserve_energy_joules_total", model=model)
    figures.energy_j = new.total("medserve_energy_joules_total", model=model)
    return figures


@dataclass(frozen=True)
class DeviceFigures:
    device: str
    models: tuple[str, ...]
    instances: int
    busy: float
    """Execution seconds per second on the device, summed over its models."""
    energy_w: float
    energy_kwh: float
    energy_sources: tuple[str, ...]


def device_figures(
    new: Snapshot,
    old: Snapshot | None,
    seconds: float,
    placement: Mapping[str, Sequence[tuple[str, int]]],
) -> list[DeviceFigures]:
    """Per device: ``placement`` maps each model to its (device, instances); a model on several
    devices has its execution time shared between them by instances."""
    busy: dict[str, float] = {}
    models: dict[str, list[str]] = {}
    instances: dict[str, int] = {}
    for model, groups in placement.items():
        total = sum(count for _, count in groups) or 1
        model_busy = rate(new, old, seconds, "medserve_compute_duration_seconds_sum", model=model)
        for device, count in groups:
            busy[device] = busy.get(device, 0.0) + model_busy * count / total
            models.setdefault(device, []).append(model)
            instances[device] = instances.get(device, 0) + count
    for device in label_values(new, "medserve_energy_joules_total", "device"):
        models.setdefault(device, [])
    out = []
    for device in sorted(models):
        sources = tuple(label_values(new, "medserve_energy_joules_total", "source", device=device))
        out.append(
            DeviceFigures(
                device,
                tuple(sorted(set(models[device]))),
                instances.get(device, 0),
                busy.get(device, 0.0),
                rate(new, old, seconds, "medserve_energy_joules_total", device=device),
                new.total("medserve_energy_joules_total", device=device) / 3.6e6,
                sources,
            )
        )
    return out
