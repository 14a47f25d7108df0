"""Occlusion (Zeiler and Fergus, 2014); on a feature vector with window 1, feature ablation.

A window slides over the input in steps of ``stride``; each position replaces the window's elements by
the baseline and records how much the explained output drops, ``f(x) - f(x occluded)``. An element's
attribution is the mean drop over the windows that cover it (as Captum's ``Occlusion`` computes it).
A positive value: hiding this region lowered the output. It says where the model *reacts* to
a change, at the window's resolution; it says nothing about why, and a baseline the model never saw in
training (black, zero) may itself move the output.
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
    positions,
)


def occlusion_count(shape: Sequence[int], window: Window, stride: Window) -> int:
    """How many model evaluations an occlusion takes: one per window position, plus the input itself."""
    return len(positions(shape, window, stride)) + 1


async def occlusion(
    x: np.ndarray,
    evaluate: Evaluate,
    *,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    baseline: object = 0.0,
    batch_size: int = 64,
) -> np.ndarray:
    """Occlusion attributions of ``x`` (one sample, no batch dimension), float64, ``x``'s shape.

    ``window``/``stride``: see :func:`~medserve.explanations.perturbation.normalise_window` (default:
    single elements, i.e. feature ablation; ``stride`` defaults to the window). ``baseline``: the value
    an occluded element takes, a number or one value per element. ``evaluate``: see
    :data:`~medserve.explanations.perturbation.Evaluate`.
    """
    x = np.asarray(x)
    size = normalise_window(window, x.shape)
    step = normalise_window(stride, x.shape, "stride") if stride is not None else size
    reference = baseline_array(baseline, x)
    places = positions(x.shape, size, step)

    def rows() -> Iterator[np.ndarray]:
        yield x
        for place in places:
            occluded = x.copy()
            occluded[place] = reference[place].astype(x.dtype)
            yield occluded

    values = await evaluate_all(evaluate, rows(), len(places) + 1, batch_size)
    total = np.zeros(x.shape, dtype=np.float64)
    count = np.zeros(x.shape, dtype=np.float64)
    for place, value in zip(places, values[1:]):
        total[place] += values[0] - value
        count[place] += 1.0
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)
