"""Per-tensor statistics of one monitoring window, and what one observation contributes to them.

* per input tensor, running count, mean, standard deviation, minimum and maximum of its finite values
  (non-finite ones are only counted);
* per floating output whose values all lay in [0, 1] when first seen (class probabilities), a histogram
  of ``bins`` equal bins on [0, 1]; later values outside [0, 1] go to the edge bins and are counted as
  ``out_of_range``;
* per other floating output, the same running statistics and a KLL quantile sketch (Apache
  DataSketches, ``kll_doubles_sketch`` with ``k`` = :data:`KLL_K`) of its values; its histogram on any
  edges is read from the sketch (see :mod:`.histograms`), each bin's share within the sketch's rank
  error (:data:`KLL_PMF_ERROR`, 99 % confidence);
* per integer or boolean output, counts per value for up to :data:`MAX_CATEGORIES` distinct values,
  the rest counted as ``other``.

Every statistic merges: :meth:`OutputStats.merge` and :meth:`RunningStats.merge` combine two windows
(of two replicas) into what one process would have recorded from both streams: exactly for counts,
histograms on fixed bins and category counts (while the categories fit :data:`MAX_CATEGORIES`), to
floating-point rounding for the running moments, and within the sketch's error bound for the KLL
sketches (a merged KLL sketch has the error of one sketch of all the values).

A tensor with more than ``max_values`` values is read with a stride, so one observation costs the same
whatever the tensor size. Probability histograms pool all values of the tensor (all classes together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

MAX_CATEGORIES = 64
#: The KLL sketches' size parameter: about 3 k values kept, whatever the number summarised.
KLL_K = 200
#: The KLL sketch's bound on the error of each bin's share of a histogram (99 % confidence).
KLL_PMF_ERROR: float = kll_doubles_sketch.get_normalized_rank_error(KLL_K, True)

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
    sketch: kll_doubles_sketch | None = None  # REAL: quantile sketch of the sampled values
    categories: dict[int, int] = field(default_factory=dict)
    other: int = 0

    def add(self, batch: TensorBatch) -> None:
        self.running.merge(batch.running)
        if self.kind == CATEGORICAL:
            self._add_categories(batch.categories or {})
        elif batch.values is not None and batch.values.size:
            if self.kind == PROBABILITY:
                self._add_probabilities(batch.values)
            else:
                if self.sketch is None:
                    self.sketch = kll_doubles_sketch(KLL_K)
                self.sketch.update(np.ascontiguousarray(batch.values, dtype=np.float64))

    def merge(self, other: OutputStats) -> None:
        """Add ``other`` (the same output in the same window, seen by another replica)."""
        self.running.merge(other.running)
        if other.histogram is not None:
            if self.histogram is None:
                self.histogram = np.zeros(self.bins, dtype=np.int64)
            self.histogram += other.histogram
        self.out_of_range += other.out_of_range
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = kll_doubles_sketch(KLL_K)
            self.sketch.merge(other.sketch)
        self._add_categories(other.categories)
        self.other += other.other

    def _add_categories(self, categories: dict[int, int]) -> None:
        for value, count in categories.items():
            if value in self.categories or len(self.categories) < MAX_CATEGORIES:
                self.categories[value] = self.categories.get(value, 0) + count
            else:
                self.other += count

    def _add_probabilities(self, values: np.ndarray) -> None:
        if self.histogram is None:
            self.histogram = np.zeros(self.bins, dtype=np.int64)
        self.out_of_range += int(np.count_nonzero((values < 0.0) | (values > 1.0)))
        index = np.clip((values * self.bins).astype(np.int64), 0, self.bins - 1)
        self.histogram += np.bincount(index, minlength=self.bins)

    def sketched(self) -> int:
        """How many values the sketch summarises (0 without one)."""
        return 0 if self.sketch is None else int(self.sketch.n)


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
