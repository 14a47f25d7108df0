"""Per-tensor statistics of one monitoring window, and what one observation contributes to them.

* per input tensor, running count, mean, standard deviation, minimum and maximum of its finite values
  (non-finite ones are only counted);
* per floating output whose values all lay in [0, 1] when first seen (class probabilities), a histogram
  of ``bins`` equal bins on [0, 1]; later values outside [0, 1] go to the edge bins and are counted as
  ``out_of_range``;
* per other floating output, the same running statistics and a uniform reservoir sample of up to
  ``capacity`` values (its histogram is drawn from that sample, see :mod:`.histograms`);
* per integer or boolean output, counts per value for up to :data:`MAX_CATEGORIES` distinct values,
  the rest counted as ``other``.

A tensor with more than ``max_values`` values is read with a stride, so one observation costs the same
whatever the tensor size. Probability histograms pool all values of the tensor (all classes together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_CATEGORIES = 64

#: The kinds of output statistics.
PROBABILITY = "probability"
REAL = "real"
CATEGORICAL = "categorical"

_FLOAT_NAMES = ("bfloat16", "float8")  # ml_dtypes floats are not numpy floating subtypes


@dataclass(slots=True)
class RunningStats:
    """Count, mean, sum of squared deviations, min and max of finite values; merged exactly."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    nonfinite: int = 0

    @classmethod
    def of(cls, values: np.ndarray, nonfinite: int) -> RunningStats:
        if values.size == 0:
            return cls(nonfinite=nonfinite)
        mean = float(values.mean())
        return cls(
            count=int(values.size),
            mean=mean,
            m2=float(np.square(values - mean).sum()),
            minimum=float(values.min()),
            maximum=float(values.max()),
            nonfinite=nonfinite,
        )

    def merge(self, other: RunningStats) -> None:
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.mean += delta * other.count / total
        self.count = total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        empty = self.count == 0
        return {
            "count": self.count,
            "mean": None if empty else self.mean,
            "std": None if empty else self.std,
            "min": None if empty else self.minimum,
            "max": None if empty else self.maximum,
            "nonfinite": self.nonfinite,
        }


@dataclass(slots=True)
class TensorBatch:
    """What one observation of one tensor contributes; computed outside the monitor's lock."""

    running: RunningStats
    values: np.ndarray | None = None  # finite sampled float values (floating outputs)
    in_unit_interval: bool = False
    categories: dict[int, int] | None = None  # integer and boolean outputs


@dataclass(slots=True)
class OutputStats:
    """The statistics of one output tensor in one window, by its kind."""

    kind: str
    bins: int
    capacity: int
    running: RunningStats = field(default_factory=RunningStats)
    histogram: np.ndarray | None = None  # PROBABILITY: counts of the bins on [0, 1]
    out_of_range: int = 0
    reservoir: np.ndarray | None = None  # REAL: uniform sample of the sampled values
    seen: int = 0
    categories: dict[int, int] = field(default_factory=dict)
    other: int = 0

    def add(self, batch: TensorBatch, rng: np.random.Generator) -> None:
        self.running.merge(batch.running)
        if self.kind == CATEGORICAL:
            for value, count in (batch.categories or {}).items():
                if value in self.categories or len(self.categories) < MAX_CATEGORIES:
                    self.categories[value] = self.categories.get(value, 0) + count
                else:
                    self.other += count
        elif batch.values is not None and batch.values.size:
            if self.kind == PROBABILITY:
                self._add_probabilities(batch.values)
            else:
                self._add_sample(batch.values.astype(np.float32), rng)

    def _add_probabilities(self, values: np.ndarray) -> None:
        if self.histogram is None:
            self.histogram = np.zeros(self.bins, dtype=np.int64)
        self.out_of_range += int(np.count_nonzero((values < 0.0) | (values > 1.0)))
        index = np.clip((values * self.bins).astype(np.int64), 0, self.bins - 1)
        self.histogram += np.bincount(index, minlength=self.bins)

    def _add_sample(self, values: np.ndarray, rng: np.random.Generator) -> None:
        if self.reservoir is None:
            self.reservoir = np.empty(self.capacity, dtype=np.float32)
        filled = min(self.seen, self.capacity)
        take = min(self.capacity - filled, values.size)
        self.reservoir[filled : filled + take] = values[:take]
        rest = values[take:]
        if rest.size:  # algorithm R, vectorised: item k (1-based) replaces slot j < capacity
            positions = self.seen + take + np.arange(1, rest.size + 1)
            slots = (rng.random(rest.size) * positions).astype(np.int64)
            chosen = slots < self.capacity
            self.reservoir[slots[chosen]] = rest[chosen]
        self.seen += values.size

    def sample(self) -> np.ndarray:
        if self.reservoir is None:
            return np.empty(0, dtype=np.float32)
        return self.reservoir[: min(self.seen, self.capacity)]


def _sampled(array: np.ndarray, max_values: int) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    if flat.size > max_values:
        flat = flat[:: -(-flat.size // max_values)]
    return flat


def _as_float(values: np.ndarray) -> np.ndarray | None:
    kind = values.dtype.kind
    if kind in "fiub":
        return values.astype(np.float64)
    if kind == "V" and values.dtype.name.startswith(_FLOAT_NAMES):
        return values.astype(np.float64)
    return None


def _split_finite(values: np.ndarray) -> tuple[np.ndarray, int]:
    finite = np.isfinite(values)
    if finite.all():
        return values, 0
    return values[finite], int(values.size - np.count_nonzero(finite))


def input_batch(array: np.ndarray, max_values: int) -> TensorBatch | None:
    """An input tensor's contribution; None for a non-numeric tensor."""
    values = _as_float(_sampled(array, max_values))
    if values is None:
        return None
    finite, nonfinite = _split_finite(values)
    return TensorBatch(RunningStats.of(finite, nonfinite))


def output_batch(array: np.ndarray, max_values: int) -> tuple[str, TensorBatch] | None:
    """An output tensor's kind (as this observation suggests) and contribution; None if non-numeric."""
    sampled = _sampled(array, max_values)
    if sampled.dtype.kind in "iub":
        values, counts = np.unique(sampled, return_counts=True)
        categories = {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist())}
        return CATEGORICAL, TensorBatch(RunningStats.of(sampled.astype(np.float64), 0), categories=categories)
    floats = _as_float(sampled)
    if floats is None:
        return None
    finite, nonfinite = _split_finite(floats)
    unit = bool(finite.size) and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0
    kind = PROBABILITY if unit else REAL
    return kind, TensorBatch(RunningStats.of(finite, nonfinite), finite, unit)
