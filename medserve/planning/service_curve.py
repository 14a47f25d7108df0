"""Service time of one model on one device as a function of batch size.

A curve comes from a measured profile (the profiler's p50, p99 and throughput per batch size, see
:mod:`medserve.hardware.profile`) or from spec-sheet figures for a device that is not present (marked
``spec sheet``). Between measured batch sizes, times are interpolated linearly; a batch is never
formed beyond the largest size the curve knows.

The execution time of a batch is drawn from a log-normal distribution fitted to the point's mean
(from its throughput: ``batch / throughput``) and its p99, so that both the utilisation (the mean)
and the tail (p99) of the measurement are kept; without a throughput, to its p50 and p99.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medserve.hardware.profile import ModelProfile, ProfilePoint
from medserve.values.errors import InvalidInput

#: the standard normal's 99th percentile
Z99 = 2.3263478740408408


@dataclass(frozen=True, slots=True)
class CurvePoint:
    batch_size: int
    p50_ms: float
    p99_ms: float
    mean_ms: float | None = None
    """Mean execution time of a batch; None: unknown (the log-normal is fitted to p50 and p99)."""
    joules_per_inference: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvalidInput(f"a batch size must be at least 1, not {self.batch_size}")
        if not (math.isfinite(self.p50_ms) and self.p50_ms > 0):
            raise InvalidInput(f"p50 at batch {self.batch_size} must be a positive number of ms")
        if not (math.isfinite(self.p99_ms) and self.p99_ms >= self.p50_ms):
            raise InvalidInput(f"p99 at batch {self.batch_size} must be a number of ms at least p50")
        if self.mean_ms is not None and not (math.isfinite(self.mean_ms) and self.mean_ms > 0):
            raise InvalidInput(f"the mean at batch {self.batch_size} must be a positive number of ms")


def lognormal_parameters(p50_ms: float, p99_ms: float, mean_ms: float | None) -> tuple[float, float]:
    """``(mu, sigma)`` of ln(time in ms): fitted to ``mean_ms`` and ``p99_ms`` when the mean is known
    and consistent with a log-normal (p99 / mean below e^(z²/2) ≈ 15, mean below p99), else to
    ``p50_ms`` and ``p99_ms``."""
    if mean_ms is not None and mean_ms < p99_ms:
        gap = 2 * math.log(p99_ms / mean_ms)
        if gap < Z99 * Z99:
            sigma = Z99 - math.sqrt(Z99 * Z99 - gap)  # the root with the tail at p99
            return math.log(p99_ms) - Z99 * sigma, sigma
    sigma = math.log(p99_ms / p50_ms) / Z99
    return math.log(p50_ms), sigma


def _interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


@dataclass(frozen=True)
class ServiceCurve:
    model: str
    device: str
    runtime: str
    points: tuple[CurvePoint, ...]
    basis: str = "measured"
    """``measured`` (a stored profile of this machine) or ``spec sheet``."""
    energy_source: str = ""
    """How the joules were obtained: ``rapl``, ``nvml``, ``estimated`` or ``spec sheet``."""

    def __post_init__(self) -> None:
        if not self.points:
            raise InvalidInput(f"{self.model} on {self.device}: a service curve needs at least one point")
        sizes = [p.batch_size for p in self.points]
        if sizes != sorted(set(sizes)):
            raise InvalidInput(f"{self.model} on {self.device}: batch sizes must be distinct and ascending")

    @property
    def max_batch_size(self) -> int:
        return self.points[-1].batch_size

    def _at(self, batch: int, values: Sequence[float]) -> float:
        return _interpolate(batch, [p.batch_size for p in self.points], values)

    def p50_ms(self, batch: int) -> float:
        return self._at(batch, [p.p50_ms for p in self.points])

    def p99_ms(self, batch: int) -> float:
        return self._at(batch, [p.p99_ms for p in self.points])

    def parameters(self, batch: int) -> tuple[float, float]:
        """``(mu, sigma)`` of the log-normal execution time (ms) of a batch of ``batch``."""
        known = [p.mean_ms for p in self.points]
        mean = self._at(batch, [m for m in known if m is not None]) if None not in known else None
        return lognormal_parameters(self.p50_ms(batch), self.p99_ms(batch), mean)

    def mean_ms(self, batch: int) -> float:
        mu, sigma = self.parameters(batch)
        return math.exp(mu + sigma * sigma / 2)

    def ms_per_inference(self, batch: int) -> float:
        return self.mean_ms(batch) / batch

    def best_batch(self, limit: int) -> int:
        """The batch size (at most ``limit``) with the least mean time per inference."""
        sizes = [p.batch_size for p in self.points if p.batch_size <= limit] or [self.points[0].batch_size]
        return min(sizes, key=self.ms_per_inference)

    def joules_per_inference(self, batch: int) -> float | None:
        known = [p.joules_per_inference for p in self.points]
        if any(j is None for j in known):
            return None
        return self._at(batch, [float(j) for j in known if j is not None])

    def sampler(self, limit: int) -> list[tuple[float, float]]:
        """``(mu, sigma)`` for every batch size 1..``limit`` (index 0 unused), for the simulation."""
        return [(0.0, 0.0)] + [self.parameters(b) for b in range(1, limit + 1)]

    def scaled(self, speedup: float, device: str, watts: float | None) -> ServiceCurve:
        """A spec-sheet curve for another device: every time divided by ``speedup``; energy from
        ``watts`` × busy time when given, else none."""
        if not (math.isfinite(speedup) and speedup > 0):
            raise InvalidInput(f"a speed-up must be a positive number, not {speedup}")
        points = []
        for p in self.points:
            mean = None if p.mean_ms is None else p.mean_ms / speedup
            busy_ms = mean if mean is not None else p.p50_ms / speedup
            joules = None if watts is None else watts * busy_ms / 1000 / p.batch_size
            points.append(CurvePoint(p.batch_size, p.p50_ms / speedup, p.p99_ms / speedup, mean, joules))
        return ServiceCurve(self.model, device, self.runtime, tuple(points), "spec sheet", "spec sheet")


def _curve_point(point: ProfilePoint) -> CurvePoint | None:
    if not point.usable or point.p50_ms is None or point.p99_ms is None or point.p50_ms <= 0:
        return None
    mean = point.batch_size * 1000 / point.throughput if point.throughput else None
    return CurvePoint(
        point.batch_size, point.p50_ms, max(point.p99_ms, point.p50_ms), mean, point.joules_per_inference
    )


def curves_from_profile(profile: ModelProfile) -> list[ServiceCurve]:
    """One measured curve per device × runtime of ``profile`` with at least one usable point."""
    grouped: dict[tuple[str, str], list[ProfilePoint]] = {}
    for point in profile.points:
        grouped.setdefault((point.device, point.runtime), []).append(point)
    curves = []
    for (device, runtime), points in sorted(grouped.items()):
        usable = {p.batch_size: c for p in points if (c := _curve_point(p)) is not None}
        if usable:
            sources = {p.energy_source for p in points if p.usable and p.energy_source}
            curves.append(
                ServiceCurve(
                    profile.model,
                    device,
                    runtime,
                    tuple(usable[b] for b in sorted(usable)),
                    "measured",
                    ",".join(sorted(sources)),
                )
            )
    return curves


def draw_ms(rng: np.random.Generator, mu: float, sigma: float) -> float:
    """One execution time in ms from the log-normal ``(mu, sigma)``."""
    return float(math.exp(mu + sigma * rng.standard_normal()))
