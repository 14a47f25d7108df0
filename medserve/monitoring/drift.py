"""Model monitoring over time windows: input statistics, output distributions and drift scores.

Every (model, version) gets windows of ``window_s`` seconds aligned to the epoch (a window
starts at a multiple of ``window_s``); the newest ``keep_windows`` are kept. In each window:

* per input tensor, running count, mean, standard deviation, minimum and maximum of its finite
  values (non-finite ones are only counted);
* per floating output whose values all lay in [0, 1] when first seen (class probabilities), a
  histogram of ``bins`` equal bins on [0, 1]; later values outside [0, 1] go to the edge bins
  and are counted as ``out_of_range``;
* per other floating output, the same running statistics and a uniform reservoir sample of up
  to ``max_values_per_tensor`` values; its histogram is drawn from that sample on fixed edges
  taken from the reference: ``bins`` equal bins between the reference's minimum and maximum,
  plus one bin below and one above, so every window is compared on the same edges;
* per integer or boolean output, counts per value for up to 64 distinct values, the rest
  counted as ``other``.

A tensor with more than ``max_values_per_tensor`` values is read with a stride, so one
observation costs the same whatever the tensor size. Probability histograms pool all values of
the tensor (all classes together).

The reference is the first ``reference_windows`` windows with data, once the last of them has
ended, or the window :meth:`ModelMonitor.set_reference` pinned. Drift compares the newest window
that is not part of the reference (it may still be filling) with the reference:

* per output, the Population Stability Index, PSI = sum((q - p) * ln(q / p)) over bins, with
  p and q the reference and current proportions, each at least 1e-4 so empty bins stay finite:
  below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 significant;
* per input, the standardized mean shift |mean_current - mean_reference| / std_reference (scale
  |mean_reference|, or 1, when the reference is constant): below 0.2 stable, 0.2 to 0.5
  moderate, above 0.5 significant (Cohen's conventions for a standardized difference).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.values.errors import InvalidConfig, ModelNotFound

PSI_EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
MEAN_SHIFT_MODERATE = 0.2
MEAN_SHIFT_SIGNIFICANT = 0.5
MAX_CATEGORIES = 64

PROBABILITY = "probability"
REAL = "real"
CATEGORICAL = "categorical"

_FLOAT_NAMES = ("bfloat16", "float8")  # ml_dtypes floats are not numpy floating subtypes


def drift_level(kind: str, value: float) -> str:
    """The level of a ``kind`` ("psi" or "mean_shift") score: stable, moderate or significant."""
    moderate, significant = (
        (PSI_MODERATE, PSI_SIGNIFICANT) if kind == "psi" else (MEAN_SHIFT_MODERATE, MEAN_SHIFT_SIGNIFICANT)
    )
    if value > significant:
        return "significant"
    return "moderate" if value >= moderate else "stable"


@dataclass(frozen=True, slots=True)
class DriftScore:
    """One drift score of one tensor: the current window against the reference."""

    model: str
    version: str
    tensor: str
    kind: str  # "psi" (outputs) or "mean_shift" (inputs)
    value: float
    level: str  # "stable", "moderate", "significant"
    reference_count: int
    current_count: int
    window_start: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "tensor": self.tensor,
            "kind": self.kind,
            "value": self.value,
            "level": self.level,
            "reference_count": self.reference_count,
            "current_count": self.current_count,
            "window_start": self.window_start,
        }


# -- per-tensor statistics ------------------------------------------------------------------------
@dataclass(slots=True)
class _Running:
    """Count, mean, sum of squared deviations, min and max of finite values; merged exactly."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    nonfinite: int = 0

    @classmethod
    def of(cls, values: np.ndarray, nonfinite: int) -> _Running:
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

    def merge(self, other: _Running) -> None:
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
class _Batch:
    """What one observation of one tensor contributes; computed outside the monitor's lock."""

    running: _Running
    values: np.ndarray | None = None  # finite sampled float values (floating outputs)
    in_unit_interval: bool = False
    categories: dict[int, int] | None = None  # integer and boolean outputs


@dataclass(slots=True)
class _OutputStats:
    kind: str
    bins: int
    capacity: int
    running: _Running = field(default_factory=_Running)
    histogram: np.ndarray | None = None  # PROBABILITY: counts of the bins on [0, 1]
    out_of_range: int = 0
    reservoir: np.ndarray | None = None  # REAL: uniform sample of the sampled values
    seen: int = 0
    categories: dict[int, int] = field(default_factory=dict)
    other: int = 0

    def add(self, batch: _Batch, rng: np.random.Generator) -> None:
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


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    observations: int = 0
    inputs: dict[str, _Running] = field(default_factory=dict)
    outputs: dict[str, _OutputStats] = field(default_factory=dict)


@dataclass(slots=True)
class _Tracker:
    windows: deque[_Window]
    first: list[_Window] = field(default_factory=list)  # the automatic reference
    pinned: list[_Window] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    late: int = 0  # observations for windows no longer kept

    def reference(self, needed: int, now: float) -> list[_Window] | None:
        if self.pinned is not None:
            return self.pinned
        if len(self.first) >= needed and self.first[-1].end <= now:
            return self.first
        return None

    def current(self, reference: list[_Window]) -> _Window | None:
        if not self.windows or any(self.windows[-1] is w for w in reference):
            return None
        return self.windows[-1]


@dataclass(slots=True)
class _Reference:
    """The reference windows merged, with the real-valued outputs' histogram edges."""

    windows: list[_Window]
    observations: int
    inputs: dict[str, _Running]
    outputs: dict[str, dict[str, Any]]  # name -> {"kind", "running", "counts", "edges"}


# -- sampling -------------------------------------------------------------------------------------
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


def _input_batch(array: np.ndarray, max_values: int) -> _Batch | None:
    values = _as_float(_sampled(array, max_values))
    if values is None:
        return None
    finite, nonfinite = _split_finite(values)
    return _Batch(_Running.of(finite, nonfinite))


def _output_batch(array: np.ndarray, max_values: int) -> tuple[str, _Batch] | None:
    sampled = _sampled(array, max_values)
    if sampled.dtype.kind in "iub":
        values, counts = np.unique(sampled, return_counts=True)
        categories = {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist())}
        return CATEGORICAL, _Batch(_Running.of(sampled.astype(np.float64), 0), categories=categories)
    floats = _as_float(sampled)
    if floats is None:
        return None
    finite, nonfinite = _split_finite(floats)
    unit = bool(finite.size) and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0
    kind = PROBABILITY if unit else REAL
    return kind, _Batch(_Running.of(finite, nonfinite), finite, unit)


# -- histograms and scores ------------------------------------------------------------------------
def _real_edges(running: _Running, bins: int) -> np.ndarray:
    low, high = running.minimum, running.maximum
    if not high > low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def _real_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in [below, bin 1 .. bin n, above] for the inner ``edges``."""
    slot = np.searchsorted(edges, values, side="right")
    slot = np.where(values == edges[-1], edges.size - 1, slot)
    return np.bincount(slot, minlength=edges.size + 1).astype(np.float64)


def _scaled_real_counts(stats: _OutputStats, edges: np.ndarray) -> np.ndarray:
    """The sample's bin counts scaled to the window's number of values."""
    sample = stats.sample()
    if sample.size == 0:
        return np.zeros(edges.size + 1)
    return _real_counts(sample, edges) * (stats.running.count / sample.size)


def _category_counts(stats: _OutputStats) -> dict[str, int]:
    counts = {str(k): v for k, v in sorted(stats.categories.items())}
    if stats.other:
        counts["other"] = stats.other
    return counts


def psi(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Population Stability Index of two count vectors over the same bins; None if one is empty."""
    ref_total, cur_total = float(reference.sum()), float(current.sum())
    if ref_total <= 0 or cur_total <= 0:
        return None
    p = np.maximum(reference / ref_total, PSI_EPSILON)
    q = np.maximum(current / cur_total, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def mean_shift(reference: _Running, current: _Running) -> float | None:
    """|mean_current - mean_reference| / std_reference; None if one side has no values."""
    if reference.count == 0 or current.count == 0:
        return None
    scale = reference.std or abs(reference.mean) or 1.0
    return abs(current.mean - reference.mean) / scale


# -- the monitor ----------------------------------------------------------------------------------
class ModelMonitor:
    """Windowed input and output statistics per model version, and drift against a reference."""

    def __init__(
        self,
        window_s: float = 300.0,
        reference_windows: int = 1,
        bins: int = 10,
        keep_windows: int = 24,
        max_values_per_tensor: int = 4096,
    ) -> None:
        if not window_s > 0 or not math.isfinite(window_s):
            raise InvalidConfig(f"monitoring window_s must be a positive number of seconds, not {window_s}")
        if reference_windows < 1:
            raise InvalidConfig(f"monitoring reference_windows must be at least 1, not {reference_windows}")
        if bins < 2:
            raise InvalidConfig(f"monitoring bins must be at least 2, not {bins}")
        if keep_windows < 2:
            raise InvalidConfig(f"monitoring keep_windows must be at least 2, not {keep_windows}")
        if max_values_per_tensor < 1:
            raise InvalidConfig(
                f"monitoring max_values_per_tensor must be at least 1, not {max_values_per_tensor}"
            )
        self.window_s = float(window_s)
        self.reference_windows = reference_windows
        self.bins = bins
        self.keep_windows = keep_windows
        self.max_values_per_tensor = max_values_per_tensor
        self._trackers: dict[tuple[str, str], _Tracker] = {}
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()
        self._unit_edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12).tolist()

    # -- recording ------------------------------------------------------------------------------
    def observe(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        now: float | None = None,
    ) -> None:
        """Record one request's input and output tensors (non-numeric tensors are skipped)."""
        t = time.time() if now is None else now
        cap = self.max_values_per_tensor
        input_batches = {name: b for name, a in inputs.items() if (b := _input_batch(a, cap)) is not None}
        output_batches = {n: ob for n, a in outputs.items() if (ob := _output_batch(a, cap)) is not None}
        with self._lock:
            tracker = self._trackers.get((model, version))
            if tracker is None:
                tracker = _Tracker(deque())
                self._trackers[(model, version)] = tracker
            window = self._window_for(tracker, t)
            if window is None:
                tracker.late += 1
                return
            window.observations += 1
            for name, batch in input_batches.items():
                window.inputs.setdefault(name, _Running()).merge(batch.running)
            for name, (candidate, batch) in output_batches.items():
                kind = tracker.kinds.setdefault(name, candidate)
                if kind == CATEGORICAL and batch.categories is None:
                    continue  # a tensor that changed dtype: keep its first kind
                stats = window.outputs.get(name)
                if stats is None:
                    stats = window.outputs[name] = _OutputStats(kind, self.bins, cap)
                stats.add(batch, self._rng)

    def _window_for(self, tracker: _Tracker, t: float) -> _Window | None:
        start = math.floor(t / self.window_s) * self.window_s
        windows = tracker.windows
        if windows and windows[-1].start == start:
            return windows[-1]
        if not windows or start > windows[-1].start:
            window = _Window(start, start + self.window_s)
            windows.append(window)
            while len(windows) > self.keep_windows:
                windows.popleft()
            if len(tracker.first) < self.reference_windows:
                tracker.first.append(window)
            return window
        return next((w for w in windows if w.start == start), None)

    def set_reference(self, model: str, version: str | None = None) -> None:
        """Pin the newest window with data of ``model`` (of one ``version``, or all) as reference."""
        with self._lock:
            for tracker in self._select(model, version).values():
                if tracker.windows:
                    tracker.pinned = [tracker.windows[-1]]

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop everything recorded for ``model`` (or one version of it), e.g. after unloading."""
        with self._lock:
            for key in list(self._select(model, version)):
                del self._trackers[key]

    def _select(self, model: str, version: str | None) -> dict[tuple[str, str], _Tracker]:
        selected = {
            key: tracker
            for key, tracker in self._trackers.items()
            if key[0] == model and (version is None or key[1] == version)
        }
        if not selected:
            what = f"model '{model}'" if version is None else f"version '{version}' of model '{model}'"
            raise ModelNotFound(f"no monitoring data for {what}: it has served no requests yet")
        return selected

    # -- reading --------------------------------------------------------------------------------
    def drift(self, model: str, now: float | None = None) -> list[DriftScore]:
        """Drift scores of every version of ``model``; empty while there is no reference yet."""
        t = time.time() if now is None else now
        with self._lock:
            scores: list[DriftScore] = []
            for (name, version), tracker in sorted(self._select(model, None).items()):
                scores.extend(self._drift(name, version, tracker, t))
            return scores

    def scores(self, now: float | None = None) -> Iterable[tuple[str, str, str, str, float]]:
        """(model, version, tensor, kind, value) for every current drift score, for gauges."""
        t = time.time() if now is None else now
        with self._lock:
            rows = []
            for (model, version), tracker in sorted(self._trackers.items()):
                for s in self._drift(model, version, tracker, t):
                    rows.append((s.model, s.version, s.tensor, s.kind, s.value))
            return rows

    def models(self) -> list[str]:
        """Models with monitoring data."""
        with self._lock:
            return sorted({model for model, _ in self._trackers})

    def snapshot(self, model: str, now: float | None = None) -> dict[str, Any]:
        """A JSON-able view of ``model``: windows, reference and drift scores per version."""
        t = time.time() if now is None else now
        with self._lock:
            versions = []
            for (name, version), tracker in sorted(self._select(model, None).items()):
                reference = self._reference(tracker, t)
                versions.append(
                    {
                        "version": version,
                        "late_observations": tracker.late,
                        "reference": self._reference_dict(tracker, reference),
                        "windows": [self._window_dict(w, reference) for w in tracker.windows],
                        "drift": [s.to_dict() for s in self._drift(name, version, tracker, t)],
                    }
                )
            return {
                "model": model,
                "window_s": self.window_s,
                "bins": self.bins,
                "reference_windows": self.reference_windows,
                "thresholds": {
                    "psi": {"moderate": PSI_MODERATE, "significant": PSI_SIGNIFICANT},
                    "mean_shift": {"moderate": MEAN_SHIFT_MODERATE, "significant": MEAN_SHIFT_SIGNIFICANT},
                },
                "versions": versions,
            }

    # -- internals (under the lock) -------------------------------------------------------------
    def _reference(self, tracker: _Tracker, now: float) -> _Reference | None:
        windows = tracker.reference(self.reference_windows, now)
        if windows is None:
            return None
        inputs: dict[str, _Running] = {}
        running: dict[str, _Running] = {}
        for window in windows:
            for name, stats in window.inputs.items():
                inputs.setdefault(name, _Running()).merge(stats)
            for name, out in window.outputs.items():
                running.setdefault(name, _Running()).merge(out.running)
        outputs: dict[str, dict[str, Any]] = {}
        for name, merged in running.items():
            kind = tracker.kinds[name]
            edges = _real_edges(merged, self.bins) if kind == REAL and merged.count else None
            parts = [w.outputs[name] for w in windows if name in w.outputs]
            counts = self._counts(kind, parts, edges)
            outputs[name] = {"kind": kind, "running": merged, "counts": counts, "edges": edges}
        observations = sum(w.observations for w in windows)
        return _Reference(windows, observations, inputs, outputs)

    def _counts(
        self, kind: str, parts: list[_OutputStats], edges: np.ndarray | None
    ) -> np.ndarray | dict[str, int] | None:
        if kind == PROBABILITY:
            total = np.zeros(self.bins, dtype=np.int64)
            for part in parts:
                if part.histogram is not None:
                    total += part.histogram
            return total
        if kind == REAL:
            if edges is None:
                return None
            summed: np.ndarray = np.sum([_scaled_real_counts(part, edges) for part in parts], axis=0)
            return summed
        merged: dict[str, int] = {}
        for part in parts:
            for key, count in _category_counts(part).items():
                merged[key] = merged.get(key, 0) + count
        return merged

    def _drift(self, model: str, version: str, tracker: _Tracker, now: float) -> list[DriftScore]:
        reference = self._reference(tracker, now)
        if reference is None:
            return []
        current = tracker.current(reference.windows)
        if current is None:
            return []
        scores: list[DriftScore] = []
        start = current.start

        def add(tensor: str, kind: str, value: float | None, ref_count: int, cur_count: int) -> None:
            if value is not None and math.isfinite(value):
                grade = drift_level(kind, value)
                scores.append(
                    DriftScore(model, version, tensor, kind, value, grade, ref_count, cur_count, start)
                )

        for name, stats in sorted(current.inputs.items()):
            ref_stats = reference.inputs.get(name)
            if ref_stats is not None:
                add(name, "mean_shift", mean_shift(ref_stats, stats), ref_stats.count, stats.count)
        for name, out in sorted(current.outputs.items()):
            ref_out = reference.outputs.get(name)
            if ref_out is None or ref_out["counts"] is None:
                continue
            value = _psi_of(ref_out["counts"], self._counts(out.kind, [out], ref_out["edges"]))
            add(name, "psi", value, ref_out["running"].count, out.running.count)
        return scores

    def _output_dict(self, stats: _OutputStats, edges: np.ndarray | None) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": stats.kind, **stats.running.to_dict()}
        if stats.kind == PROBABILITY:
            counts = stats.histogram if stats.histogram is not None else np.zeros(self.bins, dtype=np.int64)
            result["histogram"] = {
                "edges": list(self._unit_edges),
                "counts": counts.tolist(),
            }
            result["out_of_range"] = stats.out_of_range
        elif stats.kind == REAL:
            result["histogram"] = (
                None
                if edges is None
                else _real_histogram_dict(_scaled_real_counts(stats, edges), edges, int(stats.sample().size))
            )
        else:
            result["counts"] = _category_counts(stats)
        return result

    def _window_dict(self, window: _Window, reference: _Reference | None) -> dict[str, Any]:
        return {
            "start": window.start,
            "end": window.end,
            "observations": window.observations,
            "reference": reference is not None and any(window is w for w in reference.windows),
            "inputs": {name: s.to_dict() for name, s in sorted(window.inputs.items())},
            "outputs": {
                name: self._output_dict(s, _edges_of(reference, name))
                for name, s in sorted(window.outputs.items())
            },
        }

    def _reference_dict(self, tracker: _Tracker, reference: _Reference | None) -> dict[str, Any] | None:
        if reference is None:
            return None
        outputs: dict[str, Any] = {}
        for name, ref in sorted(reference.outputs.items()):
            entry: dict[str, Any] = {"kind": ref["kind"], **ref["running"].to_dict()}
            counts = ref["counts"]
            if ref["kind"] == PROBABILITY:
                entry["histogram"] = {
                    "edges": list(self._unit_edges),
                    "counts": counts.tolist(),
                }
            elif ref["kind"] == REAL:
                sample_size = sum(
                    int(w.outputs[name].sample().size) for w in reference.windows if name in w.outputs
                )
                entry["histogram"] = (
                    None if counts is None else _real_histogram_dict(counts, ref["edges"], sample_size)
                )
            else:
                entry["counts"] = counts
            outputs[name] = entry
        return {
            "pinned": tracker.pinned is not None,
            "windows": [{"start": w.start, "end": w.end} for w in reference.windows],
            "observations": reference.observations,
            "inputs": {name: s.to_dict() for name, s in sorted(reference.inputs.items())},
            "outputs": outputs,
        }


def _edges_of(reference: _Reference | None, name: str) -> np.ndarray | None:
    if reference is None or name not in reference.outputs:
        return None
    edges: np.ndarray | None = reference.outputs[name]["edges"]
    return edges


def _psi_of(
    reference: np.ndarray | dict[str, int], current: np.ndarray | dict[str, int] | None
) -> float | None:
    if current is None:
        return None
    if isinstance(reference, dict) or isinstance(current, dict):
        ref_map = reference if isinstance(reference, dict) else {}
        cur_map = current if isinstance(current, dict) else {}
        keys = sorted(set(ref_map) | set(cur_map))
        return psi(
            np.array([ref_map.get(k, 0) for k in keys], dtype=np.float64),
            np.array([cur_map.get(k, 0) for k in keys], dtype=np.float64),
        )
    return psi(reference, current)


def _real_histogram_dict(counts: np.ndarray, edges: np.ndarray, sample_size: int) -> dict[str, Any]:
    return {
        "edges": edges.tolist(),
        "counts": [float(c) for c in counts[1:-1]],
        "below": float(counts[0]),
        "above": float(counts[-1]),
        "estimated_from_values": sample_size,
    }
