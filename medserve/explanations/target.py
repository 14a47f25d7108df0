"""The output an explanation explains: an output tensor's name and an index into one sample of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medserve.values.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Target:
    """``output``: the output tensor's name; ``index``: the flat (C-order) index into one sample of it,
    e.g. the class index of a classifier's probabilities."""

    output: str
    index: int

    def describe(self) -> dict[str, object]:
        return {"output": self.output, "index": self.index}

    def pick(self, outputs: np.ndarray) -> np.ndarray:
        """The target value of each row of ``outputs`` (shape ``(n, *sample)``), as float64 ``(n,)``."""
        flat = np.asarray(outputs).reshape(len(outputs), -1)
        if self.index >= flat.shape[1]:
            raise InvalidInput(
                f"target index {self.index} is out of range for output '{self.output}' "
                f"({flat.shape[1]} values per sample)"
            )
        return flat[:, self.index].astype(np.float64)


def parse_target(value: object, outputs: Sequence[tuple[str, Sequence[int]]]) -> Target:
    """A target from the request's ``parameters.target``; ``outputs``: the model's (name, dims per sample).

    Accepted: an integer (an index into the first output), ``{"output": name, "index": i}`` where ``i`` is a
    flat index or a list (one index per dimension of a sample), or ``"name:i"``. Raises ``InvalidInput``
    naming what is wrong (an unknown output, an index out of range, a wrong type).
    """
    if not outputs:
        raise InvalidInput("the model declares no outputs to explain")
    names = [name for name, _ in outputs]
    output: object = names[0]
    index = value
    if isinstance(value, str) and ":" in value:
        output, _, text = value.partition(":")
        try:
            index = int(text)
        except ValueError:
            raise InvalidInput(
                f"parameter 'target' {value!r}: the index after ':' must be an integer"
            ) from None
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"output", "index", "name", "class_index"})
        if unknown:
            raise InvalidInput(f"parameter 'target' has unknown keys {unknown}; use 'output' and 'index'")
        output = value.get("output", value.get("name", names[0]))
        index = value.get("index", value.get("class_index"))
        if not isinstance(output, str):
            raise InvalidInput(f"parameter 'target.output' must be an output name, got {output!r}")
    elif value is None:
        raise InvalidInput("parameter 'target' is required: the output name and class index to explain")
    if not isinstance(output, str) or output not in names:
        raise InvalidInput(f"parameter 'target' names output '{output}'; the model's outputs are {names}")
    declared = [int(d) for d in dict(outputs)[output]]
    dims = [max(d, 1) for d in declared]
    # a variable dimension (-1): the range is checked against the output itself (Target.pick)
    size = int(np.prod(dims)) if all(d > 0 for d in declared) else 1 << 62
    if isinstance(index, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in index):
        if len(index) != len(dims) or any(not 0 <= i < d for i, d in zip(index, dims)):
            raise InvalidInput(
                f"parameter 'target' index {index} does not fit output '{output}' of shape {dims}"
            )
        index = int(np.ravel_multi_index(tuple(index), tuple(dims)))
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidInput(
            f"parameter 'target' needs an integer class index (or a list, one per dimension), got {index!r}"
        )
    if not 0 <= index < size:
        raise InvalidInput(
            f"parameter 'target' index {index} is out of range for output '{output}' "
            f"({size} values per sample: 0 to {size - 1})"
        )
    return Target(output, index)
