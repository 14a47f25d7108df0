"""The classification extension: top-k classes of an output as ``"score:index[:label]"`` strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medserve.values.errors import InvalidInput


def classify(name: str, scores: np.ndarray, count: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """Top-``count`` entries of each batch item (or of the whole tensor when not batched)."""
    if count < 1:
        raise InvalidInput(f"output '{name}': classification count must be >= 1, got {count}")
    if scores.dtype.kind not in "fiub":
        raise InvalidInput(f"output '{name}': classification needs a numeric output")
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r]):
            label = f":{labels[index]}" if index < len(labels) else ""
            out[r, c] = f"{float(rows[r, index]):f}:{int(index)}{label}".encode()
    return out if batched else out.reshape(k)


def output_labels(labels: Any, output: str, first_output: str) -> list[str]:
    """The class labels of ``output`` from config.yaml's ``metadata.labels``, as Triton applies them: only
    to the outputs that have labels. A mapping gives each output its list; a plain list belongs to the
    model's first output. An output without labels is classified by index alone."""
    own = labels.get(output, []) if isinstance(labels, dict) else None
    chosen = own if own is not None else (labels if output == first_output else [])
    return [str(v) for v in chosen] if isinstance(chosen, list) else []
