"""What the model-agnostic methods share: the evaluator, windows over an input, baselines, batches.

An *evaluator* takes a batch of inputs, shape ``(n, *x.shape)``, and returns the explained output of
each row, shape ``(n,)``. The methods build perturbed inputs in chunks of ``batch_size`` rows and await
one chunk at a time, so a long explanation holds at most one chunk of the model's queue.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence

import numpy as np

from medserve.values.errors import InvalidInput

Evaluate = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""An async function: a batch ``(n, *shape)`` of inputs -> the explained output per row, ``(n,)``."""

Window = tuple[int, ...]


def normalise_window(
    window: int | Sequence[int] | None, shape: Sequence[int], name: str = "window"
) -> Window:
    """A window with one size per dimension of ``shape``. ``None``: 1 everywhere (single elements); an
    integer: that size in every dimension, capped at the dimension's size (``16`` on a ``(1, 224, 224)``
    image is ``(1, 16, 16)``); a list: one size per dimension. ``InvalidInput`` names a bad value."""
    if window is None:
        return tuple(1 for _ in shape)
    if isinstance(window, int) and not isinstance(window, bool):
        if window < 1:
            raise InvalidInput(f"parameter '{name}' must be >= 1, got {window}")
        return tuple(min(window, int(d)) for d in shape)
    if not isinstance(window, Sequence) or isinstance(window, str):
        raise InvalidInput(f"parameter '{name}' must be an integer or a list of integers, got {window!r}")
    sizes = list(window)
    if len(sizes) != len(shape) or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise InvalidInput(
            f"parameter '{name}' {sizes!r} needs {len(shape)} integers, one per input dimension {list(shape)}"
        )
    if any(not 1 <= s <= int(d) for s, d in zip(sizes, shape)):
        raise InvalidInput(
            f"parameter '{name}' {sizes} must lie between 1 and the input's shape {list(shape)}"
        )
    return tuple(sizes)


def positions(shape: Sequence[int], window: Window, stride: Window) -> list[tuple[slice, ...]]:
    """The windows' positions: slices from the origin in steps of ``stride``; the last one in each
    dimension is placed so that it ends at the edge (every element is covered when stride <= window)."""
    starts: list[list[int]] = []
    for size, w, s in zip(shape, window, stride):
        first = list(range(0, max(int(size) - w, 0) + 1, s))
        if first[-1] + w < size:
            first.append(int(size) - w)
        starts.append(first)
    return [tuple(slice(b, b + w) for b, w in zip(begin, window)) for begin in itertools.product(*starts)]


def tiles(shape: Sequence[int], window: Window) -> list[tuple[slice, ...]]:
    """Non-overlapping tiles of ``window`` covering ``shape``; those at an edge are cut short there."""
    starts = [range(0, int(size), w) for size, w in zip(shape, window)]
    return [
        tuple(slice(b, min(b + w, int(size))) for b, w, size in zip(begin, window, shape))
        for begin in itertools.product(*starts)
    ]


def baseline_array(baseline: object, x: np.ndarray, name: str = "baseline") -> np.ndarray:
    """The baseline as an array of ``x``'s shape: a number (every element), or a list / array of ``x``'s
    size (e.g. one reference value per feature of a tabular model)."""
    if isinstance(baseline, bool):
        raise InvalidInput(
            f"parameter '{name}' must be a number or a list of {x.size} numbers, got {baseline!r}"
        )
    if isinstance(baseline, int | float):
        if not np.isfinite(baseline):
            raise InvalidInput(f"parameter '{name}' must be finite, got {baseline!r}")
        return np.full(x.shape, float(baseline), dtype=np.float64)
    try:
        array = np.asarray(baseline, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"parameter '{name}' must be a number or a list of {x.size} numbers") from None
    if array.size != x.size:
        raise InvalidInput(
            f"parameter '{name}' has {array.size} values; the input has {x.size} (shape {list(x.shape)})"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"parameter '{name}' must hold finite numbers")
    return array.reshape(x.shape)


def chunks(rows: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack the perturbed inputs ``rows`` into batches of at most ``batch_size``."""
    batch: list[np.ndarray] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


async def evaluate_all(
    evaluate: Evaluate, rows: Iterator[np.ndarray], count: int, batch_size: int
) -> np.ndarray:
    """The evaluator's outputs for ``count`` perturbed inputs, a chunk at a time: float64 ``(count,)``."""
    if batch_size < 1:
        raise InvalidInput(f"parameter 'batch_size' must be >= 1, got {batch_size}")
    values = np.empty(count, dtype=np.float64)
    done = 0
    for batch in chunks(rows, batch_size):
        out = np.asarray(await evaluate(batch), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(batch):
            raise ValueError(f"the evaluator returned {out.shape[0]} values for {len(batch)} inputs")
        values[done : done + len(batch)] = out
        done += len(batch)
    if done != count:
        raise ValueError(f"{done} perturbed inputs were evaluated; {count} were planned")
    return values
