"""Integrated Gradients (Sundararajan et al., 2017) by finite differences, for models without gradients.

IG attributes ``f(x) - f(x')`` to the input's elements by integrating the gradient along the straight
path from the baseline ``x'`` to ``x``: ``IG_i = (x_i - x'_i) * integral_0^1 df/dx_i(x' + a (x - x')) da``.
The sum over elements equals ``f(x) - f(x')`` (*completeness*), up to the error of the quadrature
(``steps`` points, ``rule``) and, here, of the finite differences.

Without a gradient, each path point's directional derivative along a group of elements ``g`` is taken
by a central difference, ``[f(p + e/2 d_g) - f(p - e/2 d_g)] / e`` with ``d_g = (x - x')`` restricted to
``g`` and ``e`` = ``epsilon`` (a fraction of the path). That is ``2 x steps x groups`` evaluations: on a
feature vector each feature is its own group; on an image, ``window`` tiles it into groups (superpixels)
and each element of a group gets an equal share of its group's attribution. The sum stays complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from medserve.explanations.perturbation import (
    Evaluate,
    Window,
    baseline_array,
    evaluate_all,
    normalise_window,
    tiles,
)
from medserve.values.errors import InvalidInput

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def path_alphas(steps: int, rule: str = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Points on [0, 1] and their weights for ``steps`` points of ``rule`` (Captum's names)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InvalidInput(f"parameter 'steps' must be an integer >= 2, got {steps!r}")
    if rule == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2.0
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}.get(rule)
    if offset is None:
        raise InvalidInput(f"parameter 'rule' must be one of {', '.join(RULES)}, got {rule!r}")
    return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)


def group_count(shape: Sequence[int], window: Window) -> int:
    return len(tiles(shape, window))


def fd_ig_count(shape: Sequence[int], window: Window, steps: int) -> int:
    """Model evaluations of :func:`path_integrated_gradients`: two per group and path point."""
    return 2 * steps * group_count(shape, window)


async def path_integrated_gradients(
    x: np.ndarray,
    evaluate: Evaluate,
    *,
    baseline: object = 0.0,
    steps: int = 32,
    rule: str = "riemann_trapezoid",
    window: int | Sequence[int] | None = None,
    epsilon: float = 1e-3,
    batch_size: int = 64,
) -> np.ndarray:
    """Finite-difference Integrated Gradients of ``x`` (one sample), float64, ``x``'s shape.

    ``window``: groups of elements sharing one derivative (default: every element alone); the tiles do
    not overlap. ``epsilon``: the central difference's step as a fraction of the path (0 < e <= 0.1).
    """
    x = np.asarray(x)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon <= 0.1:
        raise InvalidInput(f"parameter 'epsilon' must be a number in (0, 0.1], got {epsilon!r}")
    alphas, weights = path_alphas(steps, rule)
    size = normalise_window(window, x.shape)
    groups = tiles(x.shape, size)
    start = baseline_array(baseline, x)
    delta = np.asarray(x, dtype=np.float64) - start
    half = epsilon / 2.0

    def rows() -> Iterator[np.ndarray]:
        for alpha in alphas:
            point = start + alpha * delta
            for group in groups:
                for sign in (1.0, -1.0):
                    moved = point.copy()
                    moved[group] += sign * half * delta[group]
                    yield moved.astype(x.dtype, copy=False)

    values = await evaluate_all(evaluate, rows(), 2 * len(alphas) * len(groups), batch_size)
    pairs = values.reshape(len(alphas), len(groups), 2)
    derivative = (pairs[..., 0] - pairs[..., 1]) / epsilon  # (steps, groups)
    per_group = weights @ derivative
    result = np.zeros(x.shape, dtype=np.float64)
    for group, value in zip(groups, per_group):
        result[group] = value / result[group].size  # an equal share for each element of the group
    return result
