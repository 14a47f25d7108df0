"""Pure checks of a request against a model's declared inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medserve.repository.config import TensorConfig
from medserve.values.errors import InvalidInput
from medserve.values.types import RequestedOutput, Tensor


def _dims_match(sent: Sequence[int], expected: Sequence[int]) -> bool:
    return len(sent) == len(expected) and all(e == -1 or s == e for s, e in zip(sent, expected))


def validate_inputs(
    model: str, specs: Sequence[TensorConfig], max_batch_size: int, inputs: Sequence[Tensor]
) -> tuple[dict[str, np.ndarray], int]:
    """The request's arrays by input name and its batch size (1 for a model that does not batch)."""
    by_name = {spec.name: spec for spec in specs}
    expected_names = ", ".join(by_name)
    arrays: dict[str, np.ndarray] = {}
    batch_size: int | None = None
    for tensor in inputs:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"model '{model}' has no input '{tensor.name}'; its inputs are: {expected_names}"
            )
        if tensor.name in arrays:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{tensor.name}': datatype {tensor.datatype} was sent but model '{model}' "
                f"expects {spec.datatype}"
            )
        shape = list(tensor.shape)
        expected = [-1, *spec.dims] if max_batch_size > 0 else list(spec.dims)
        if not _dims_match(shape, expected):
            raise InvalidInput(
                f"input '{tensor.name}': shape {shape} was sent but model '{model}' expects "
                f"{expected} (-1 = any size)"
            )
        if tuple(tensor.data.shape) != tuple(shape):
            raise InvalidInput(
                f"input '{tensor.name}': data holds {tensor.data.size} element(s), which does not "
                f"fit shape {shape}"
            )
        if max_batch_size > 0:
            size = shape[0]
            if size < 1 or size > max_batch_size:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {size} is outside 1..{max_batch_size} "
                    f"(max_batch_size of model '{model}')"
                )
            if batch_size is not None and size != batch_size:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {size} differs from the other inputs' {batch_size}"
                )
            batch_size = size
        arrays[tensor.name] = tensor.data
    missing = [name for name in by_name if name not in arrays]
    if missing:
        raise InvalidInput(
            f"input(s) {', '.join(missing)} missing; model '{model}' expects: {expected_names}"
        )
    return arrays, batch_size or 1


def validate_outputs(
    model: str, specs: Sequence[TensorConfig], requested: Sequence[RequestedOutput]
) -> list[RequestedOutput]:
    """The outputs to return: those requested, or all of them when none are named."""
    names = [spec.name for spec in specs]
    if not requested:
        return [RequestedOutput(name) for name in names]
    seen: set[str] = set()
    for output in requested:
        if output.name not in names:
            raise InvalidInput(
                f"model '{model}' has no output '{output.name}'; its outputs are: {', '.join(names)}"
            )
        if output.name in seen:
            raise InvalidInput(f"output '{output.name}' is requested more than once")
        seen.add(output.name)
    return list(requested)
