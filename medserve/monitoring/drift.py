"""Model monitoring over time windows: input statistics, output distributions and drift scores.

Every (model, version) gets windows of ``window_s`` seconds aligned to the epoch; the newest
``keep_windows`` are kept (:mod:`.windows`). In each window, per input tensor running statistics, per
output a histogram or category counts (:mod:`.statistics`, :mod:`.histograms`); a tensor is read with a
stride beyond ``max_values_per_tensor`` values, so one observation costs the same whatever its size.

The reference is the first ``reference_windows`` windows with data, once the last of them has ended,
or the window :meth:`ModelMonitor.set_reference` pinned. Drift compares the newest window that is not
part of the reference (it may still be filling) with the reference (:mod:`.scores`): per output the
Population Stability Index of its histogram, per input the standardized mean shift.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medserve.monitoring.histograms import merged_counts
from medserve.monitoring.report import WindowReport
from medserve.monitoring.scores import (
    THRESHOLDS,
    DriftScore,
    drift_level,
    mean_shift,
    psi,
    psi_of_counts,
)
from medserve.monitoring.state import merge_states, tracker_state
from medserve.monitoring.statistics import CATEGORICAL, OutputStats, RunningStats, input_batch, output_batch
from medserve.monitoring.windows import Tracker
from medserve.values.errors import InvalidConfig, ModelNotFound

__all__ = ["DriftScore", "ModelMonitor", "drift_level", "psi"]


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
        self._trackers: dict[tuple[str, str], Tracker] = {}
        self._lock = threading.Lock()
        self._report = WindowReport(bins)

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
        input_batches = {name: b for name, a in inputs.items() if (b := input_batch(a, cap)) is not None}
        output_batches = {n: ob for n, a in outputs.items() if (ob := output_batch(a, cap)) is not None}
        with self._lock:
            tracker = self._trackers.get((model, version))
            if tracker is None:
                tracker = self._trackers[(model, version)] = Tracker()
            window = tracker.window_for(t, self.window_s, self.keep_windows, self.reference_windows)
            if window is None:
                tracker.late += 1
                return
            window.observations += 1
            for name, batch in input_batches.items():
                window.inputs.setdefault(name, RunningStats()).merge(batch.running)
            for name, (candidate, batch) in output_batches.items():
                kind = tracker.kinds.setdefault(name, candidate)
                if kind == CATEGORICAL and batch.categories is None:
                    continue  # a tensor that changed dtype: keep its first kind
                stats = window.outputs.get(name)
                if stats is None:
                    stats = window.outputs[name] = OutputStats(kind, self.bins, cap)
                stats.add(batch)

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

    def _select(self, model: str, version: str | None) -> dict[tuple[str, str], Tracker]:
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
            return self.snapshot_of(model, self._select(model, None), t)

    def states(self, model: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """Each model version's state (of every model, or of ``model``) as JSON-able data
        (:mod:`.state`), to share with other replicas."""
        with self._lock:
            return {
                key: tracker_state(tracker, self.window_s)
                for key, tracker in self._trackers.items()
                if model is None or key[0] == model
            }

    def merged(self, states: list[dict[str, Any]]) -> Tracker:
        """One tracker of several replicas' states of one model version (of this ``window_s``)."""
        return merge_states(
            states,
            bins=self.bins,
            capacity=self.max_values_per_tensor,
            keep=self.keep_windows,
            reference=self.reference_windows,
        )

    def snapshot_of(
        self, model: str, trackers: Mapping[tuple[str, str], Tracker], now: float
    ) -> dict[str, Any]:
        """The snapshot of ``model`` from the given trackers (this monitor's, or merged ones)."""
        report = self._report
        versions = []
        for (name, version), tracker in sorted(trackers.items()):
            reference = tracker.reference(self.reference_windows, now, self.bins)
            versions.append(
                {
                    "version": version,
                    "late_observations": tracker.late,
                    "reference": report.reference(tracker, reference),
                    "windows": [report.window(w, reference) for w in tracker.windows],
                    "drift": [s.to_dict() for s in self._drift(name, version, tracker, now)],
                }
            )
        return {
            "model": model,
            "window_s": self.window_s,
            "bins": self.bins,
            "reference_windows": self.reference_windows,
            "thresholds": {kind: dict(levels) for kind, levels in THRESHOLDS.items()},
            "versions": versions,
        }

    def _drift(self, model: str, version: str, tracker: Tracker, now: float) -> list[DriftScore]:
        """The scores of one version (under the lock)."""
        reference = tracker.reference(self.reference_windows, now, self.bins)
        if reference is None:
            return []
        current = tracker.current(reference)
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
            if ref_out is None or ref_out.counts is None:
                continue
            value = psi_of_counts(ref_out.counts, merged_counts(out.kind, [out], ref_out.edges, self.bins))
            add(name, "psi", value, ref_out.running.count, out.running.count)
        return scores
