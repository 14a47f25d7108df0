"""The JSON-able views of a model version's windows and reference, for the monitoring snapshot."""

from __future__ import annotations

from typing import Any

import numpy as np

from medserve.monitoring.histograms import (
    category_counts,
    real_histogram_dict,
    scaled_real_counts,
    unit_histogram_dict,
)
from medserve.monitoring.statistics import PROBABILITY, REAL, OutputStats
from medserve.monitoring.windows import Reference, Tracker, Window


class WindowReport:
    """Turns windows and references into dictionaries; ``bins`` probability bins on [0, 1]."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.unit_edges: list[float] = np.round(np.linspace(0.0, 1.0, bins + 1), 12).tolist()

    def output(self, stats: OutputStats, edges: np.ndarray | None) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": stats.kind, **stats.running.to_dict()}
        if stats.kind == PROBABILITY:
            counts = stats.histogram if stats.histogram is not None else np.zeros(self.bins, dtype=np.int64)
            result["histogram"] = unit_histogram_dict(counts, self.unit_edges)
            result["out_of_range"] = stats.out_of_range
        elif stats.kind == REAL:
            result["histogram"] = (
                None
                if edges is None
                else real_histogram_dict(scaled_real_counts(stats, edges), edges, stats.sketched())
            )
        else:
            result["counts"] = category_counts(stats)
        return result

    def window(self, window: Window, reference: Reference | None) -> dict[str, Any]:
        return {
            "start": window.start,
            "end": window.end,
            "observations": window.observations,
            "reference": reference is not None and reference.holds(window),
            "inputs": {name: s.to_dict() for name, s in sorted(window.inputs.items())},
            "outputs": {
                name: self.output(s, None if reference is None else reference.edges_of(name))
                for name, s in sorted(window.outputs.items())
            },
        }

    def reference(self, tracker: Tracker, reference: Reference | None) -> dict[str, Any] | None:
        if reference is None:
            return None
        outputs: dict[str, Any] = {}
        for name, ref in sorted(reference.outputs.items()):
            entry: dict[str, Any] = {"kind": ref.kind, **ref.running.to_dict()}
            counts = ref.counts
            if ref.kind == PROBABILITY and isinstance(counts, np.ndarray):
                entry["histogram"] = unit_histogram_dict(counts, self.unit_edges)
            elif ref.kind == REAL:
                sample_size = sum(w.outputs[name].sketched() for w in reference.windows if name in w.outputs)
                entry["histogram"] = (
                    None
                    if not isinstance(counts, np.ndarray) or ref.edges is None
                    else real_histogram_dict(counts, ref.edges, sample_size)
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
