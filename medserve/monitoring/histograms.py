"""Histograms of output statistics, on edges that every window of a model version shares.

Probability outputs have ``bins`` equal bins on [0, 1]. A real-valued output's histogram is read from
its KLL sketch on fixed edges taken from the reference: ``bins`` equal bins between the reference's
minimum and maximum, plus one bin below and one above, so every window is compared on the same edges;
each bin's share is within the sketch's rank error (``KLL_PMF_ERROR``) of the true share. Categorical
outputs have counts per value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medserve.monitoring.statistics import PROBABILITY, REAL, OutputStats, RunningStats

#: A histogram of one output: bin counts (probability, real) or counts per category.
Counts = np.ndarray | dict[str, int]


def real_edges(running: RunningStats, bins: int) -> np.ndarray:
    """``bins`` equal bins between the reference's minimum and maximum (one unit wide if constant)."""
    low, high = running.minimum, running.maximum
    if not high > low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def real_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in [below, bin 1 .. bin n, above] for the inner ``edges``."""
    slot = np.searchsorted(edges, values, side="right")
    slot = np.where(values == edges[-1], edges.size - 1, slot)
    return np.bincount(slot, minlength=edges.size + 1).astype(np.float64)


def scaled_real_counts(stats: OutputStats, edges: np.ndarray) -> np.ndarray:
    """Counts in [below, bin 1 .. bin n, above] estimated from the sketch (bins as :func:`real_counts`:
    left-closed, the last inner bin closed on both sides)."""
    sketch = stats.sketch
    if sketch is None or sketch.is_empty():
        return np.zeros(edges.size + 1)
    splits = edges.astype(np.float64)
    splits[-1] = np.nextafter(splits[-1], np.inf)  # a value equal to the last edge is in the last bin
    return np.asarray(sketch.get_pmf(splits.tolist(), False), dtype=np.float64) * float(sketch.n)


def category_counts(stats: OutputStats) -> dict[str, int]:
    counts = {str(k): v for k, v in sorted(stats.categories.items())}
    if stats.other:
        counts["other"] = stats.other
    return counts


def merged_counts(kind: str, parts: list[OutputStats], edges: np.ndarray | None, bins: int) -> Counts | None:
    """The histogram of ``parts`` (one output's statistics in several windows) taken together; None for
    a real-valued output without edges (its reference had no values)."""
    if kind == PROBABILITY:
        total = np.zeros(bins, dtype=np.int64)
        for part in parts:
            if part.histogram is not None:
                total += part.histogram
        return total
    if kind == REAL:
        if edges is None:
            return None
        summed: np.ndarray = np.sum([scaled_real_counts(part, edges) for part in parts], axis=0)
        return summed
    merged: dict[str, int] = {}
    for part in parts:
        for key, count in category_counts(part).items():
            merged[key] = merged.get(key, 0) + count
    return merged


def unit_histogram_dict(counts: np.ndarray, edges: list[float]) -> dict[str, Any]:
    return {"edges": list(edges), "counts": counts.tolist()}


def real_histogram_dict(counts: np.ndarray, edges: np.ndarray, sample_size: int) -> dict[str, Any]:
    return {
        "edges": edges.tolist(),
        "counts": [float(c) for c in counts[1:-1]],
        "below": float(counts[0]),
        "above": float(counts[-1]),
        "estimated_from_values": sample_size,
    }
