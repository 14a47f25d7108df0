"""Pure batch formation: which queued requests may share an execution, merging and splitting.

Requests may already carry a batch dimension (their first axis). Two requests are compatible when
they have the same inputs with the same dtypes and the same non-batch shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def batch_key(inputs: dict[str, np.ndarray]) -> BatchKey:
    """Requests with equal keys can be concatenated along the batch axis."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


def batch_size_of(inputs: dict[str, np.ndarray]) -> int:
    """The batch dimension shared by all inputs (the first axis)."""
    return next(iter(inputs.values())).shape[0] if inputs else 0


def select_batch(
    sizes: Sequence[int],
    keys: Sequence[BatchKey],
    max_batch_size: int,
) -> list[int]:
    """Indices (in queue order) of the requests forming the next batch.

    The oldest request always goes; after it come, in order, compatible requests while the total stays
    within ``max_batch_size``. The first compatible request that does not fit ends the batch, so no
    request is overtaken twice by later ones of its own kind.
    """
    if not sizes:
        return []
    chosen = [0]
    total = sizes[0]
    head_key = keys[0]
    for index in range(1, len(sizes)):
        if keys[index] != head_key:
            continue
        if total + sizes[index] > max_batch_size:
            break
        chosen.append(index)
        total += sizes[index]
    return chosen


def batch_is_full(queued: int, max_batch_size: int, preferred: Sequence[int]) -> bool:
    """Whether ``queued`` (total batch size of compatible waiting requests) should go without waiting.

    A batch goes at once when it reaches ``max_batch_size`` or the largest preferred batch size;
    otherwise it waits for more until the oldest request's queue delay runs out.
    """
    target = max(preferred) if preferred else max_batch_size
    return queued >= min(target, max_batch_size)


def merge(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate compatible requests' inputs along the batch axis (one copy per input)."""
    if len(items) == 1:
        return items[0]
    return {name: np.concatenate([item[name] for item in items], axis=0) for name in items[0]}


def split(outputs: dict[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Views of each request's rows of the batched outputs."""
    if len(sizes) == 1:
        return [outputs]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != sum(sizes):
            raise ValueError(
                f"output '{name}' has shape {list(array.shape)}; expected a first (batch) "
                f"dimension of {sum(sizes)}"
            )
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for size in sizes:
        parts.append({name: array[start : start + size] for name, array in outputs.items()})
        start += size
    return parts
