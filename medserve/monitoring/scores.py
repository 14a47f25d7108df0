"""Drift scores: the Population Stability Index of output histograms, the standardized mean shift of
inputs, and their levels.

* PSI = sum((q - p) * ln(q / p)) over bins, with p and q the reference and current proportions, each at
  least 1e-4 so empty bins stay finite: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 significant;
* mean shift = |mean_current - mean_reference| / std_reference (scale |mean_reference|, or 1, when the
  reference is constant): below 0.2 stable, 0.2 to 0.5 moderate, above 0.5 significant (Cohen's
  conventions for a standardized difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medserve.monitoring.statistics import RunningStats

PSI_EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
MEAN_SHIFT_MODERATE = 0.2
MEAN_SHIFT_SIGNIFICANT = 0.5

#: The thresholds, as a snapshot shows them.
THRESHOLDS: dict[str, dict[str, float]] = {
    "psi": {"moderate": PSI_MODERATE, "significant": PSI_SIGNIFICANT},
    "mean_shift": {"moderate": MEAN_SHIFT_MODERATE, "significant": MEAN_SHIFT_SIGNIFICANT},
}


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


def psi(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Population Stability Index of two count vectors over the same bins; None if one is empty."""
    ref_total, cur_total = float(reference.sum()), float(current.sum())
    if ref_total <= 0 or cur_total <= 0:
        return None
    p = np.maximum(reference / ref_total, PSI_EPSILON)
    q = np.maximum(current / cur_total, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_of_counts(
    reference: np.ndarray | dict[str, int], current: np.ndarray | dict[str, int] | None
) -> float | None:
    """:func:`psi` of two histograms, or of two category counts (over the union of their categories)."""
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


def mean_shift(reference: RunningStats, current: RunningStats) -> float | None:
    """|mean_current - mean_reference| / std_reference; None if one side has no values."""
    if reference.count == 0 or current.count == 0:
        return None
    scale = reference.std or abs(reference.mean) or 1.0
    return abs(current.mean - reference.mean) / scale
