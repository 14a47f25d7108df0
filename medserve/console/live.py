"""Live figures from the server's own Prometheus registry, over a sliding window.

Snapshots of every sample are kept for ten minutes; a figure over the last ``window_s`` seconds is the
difference between the newest snapshot and the one taken that long before (counters and histogram
buckets only grow, so the difference counts what happened in between). Quantiles are read from the
histogram buckets the way Prometheus' ``histogram_quantile`` does: linearly inside the bucket the rank
falls in.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    taken: float
    values: dict[tuple[str, Labels], float]

    def select(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """The samples called ``name`` whose labels include ``match``."""
        found = []
        for (sample, labels), value in self.values.items():
            if sample != name:
                continue
            as_dict = dict(labels)
            if all(as_dict.get(k) == v for k, v in match.items()):
                found.append((as_dict, value))
        return found

    def total(self, name: str, **match: str) -> float:
        return sum(value for _, value in self.select(name, **match))


def read(registry: CollectorRegistry, now: float | None = None) -> Snapshot:
    values: dict[tuple[str, Labels], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Snapshot(time.monotonic() if now is None else now, values)


def bucket_counts(snapshot: Snapshot, histogram: str, **match: str) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, count)`` of a histogram, summed over the label sets matching."""
    sums: dict[float, float] = {}
    for labels, value in snapshot.select(f"{histogram}_bucket", **match):
        bound = math.inf if labels["le"] in ("+Inf", "inf") else float(labels["le"])
        sums[bound] = sums.get(bound, 0.0) + value
    return sorted(sums.items())


def subtract(
    new: Sequence[tuple[float, float]], old: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    before = dict(old)
    return [(bound, max(0.0, count - before.get(bound, 0.0))) for bound, count in new]


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, interpolated linearly inside
    its bucket (from 0 for the first); the highest finite bound when it falls in ``+Inf``; None when
    the buckets are empty."""
    if not 0 <= q <= 1:
        raise ValueError("a quantile is between 0 and 1")
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def per_bucket(cumulative: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Cumulative counts → the count inside each bucket."""
    out, previous = [], 0.0
    for bound, count in cumulative:
        out.append((bound, count - previous))
        previous = count
    return out


class LiveWindow:
    """Snapshots of ``registry`` at most every ``min_interval_s``, kept for ``keep_s``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        min_interval_s: float = 0.25,
        keep_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.min_interval_s = min_interval_s
        self.keep_s = keep_s
        self._clock = clock
        self._snapshots: deque[Snapshot] = deque()

    def sample(self) -> Snapshot:
        """The newest snapshot, taken now unless one is younger than ``min_interval_s``."""
        now = self._clock()
        if self._snapshots and now - self._snapshots[-1].taken < self.min_interval_s:
            return self._snapshots[-1]
        snapshot = read(self.registry, now)
        self._snapshots.append(snapshot)
        while self._snapshots and now - self._snapshots[0].taken > self.keep_s:
            self._snapshots.popleft()
        return snapshot

    def pair(self, window_s: float) -> tuple[Snapshot, Snapshot | None, float]:
        """(newest, the snapshot about ``window_s`` before it or the oldest kept, seconds between);
        the older one is None while only one snapshot exists."""
        newest = self.sample()
        older = [s for s in self._snapshots if s is not newest]
        if not older:
            return newest, None, 0.0
        cutoff = newest.taken - window_s
        base = next((s for s in reversed(older) if s.taken <= cutoff), older[0])
        return newest, base, newest.taken - base.taken


def rate(new: Snapshot, old: Snapshot | None, seconds: float, name: str, **match: str) -> float:
    """Per-second increase of counter ``name`` between the snapshots (0 without an older one)."""
    if old is None or seconds <= 0:
        return 0.0
    return max(0.0, new.total(name, **match) - old.total(name, **match)) / seconds


def label_values(snapshot: Snapshot, name: str, label: str, **match: str) -> list[str]:
    return sorted({labels[label] for labels, _ in snapshot.select(name, **match) if label in labels})


def attainment(met: float, missed: float, expired: float, rejected: float) -> float | None:
    """Share of a class's requests answered within their deadline; None with no requests."""
    total = met + missed + expired + rejected
    return met / total if total > 0 else None


def finite_or_none(values: Iterable[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]
