"""The checks an explanation can be put to (the tests run them; a user may too).

- *completeness* (Integrated Gradients): attributions sum to ``f(x) - f(baseline)``; the relative
  error says how well the path integral was approximated.
- *rank correlation* (for the model-randomisation test of Adebayo et al., 2018): Spearman's rank
  correlation of two maps' absolute values; a method whose map barely changes when the model's weights
  are randomised shows the input, not the model.
- *mass in a region*: the share of the absolute attribution inside a mask (occlusion on a model that only
  looks at that region should put nearly all of it there).
"""

from __future__ import annotations

import numpy as np


def completeness_error(attributions: np.ndarray, f_x: float, f_baseline: float) -> float:
    """``|sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|`` (absolute when that is 0)."""
    gap = float(f_x) - float(f_baseline)
    error = abs(float(np.sum(attributions)) - gap)
    return error / abs(gap) if gap != 0 else error


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(flat.size, dtype=np.float64)
    sorted_values = flat[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    for group in np.split(np.arange(flat.size), boundaries):
        ranks[order[group]] = ranks[order[group]].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays of one size (0 when either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb)) / denominator if denominator > 0 else 0.0


def abs_rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``|a|`` and ``|b|`` (the randomisation check's measure)."""
    return spearman(np.abs(a), np.abs(b))


def mass_inside(attributions: np.ndarray, mask: np.ndarray) -> float:
    """The share of ``sum(|attributions|)`` inside the boolean ``mask`` (0 when there is none)."""
    magnitude = np.abs(np.asarray(attributions, dtype=np.float64))
    total = float(magnitude.sum())
    return float(magnitude[np.asarray(mask, dtype=bool)].sum()) / total if total > 0 else 0.0
