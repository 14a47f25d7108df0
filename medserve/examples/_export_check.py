"""The check every torch-built example runs after export: a valid graph with a dynamic batch
dimension, whose onnxruntime outputs match torch's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def verify_export(
    model: torch.nn.Module, path: Path, inputs: np.ndarray, input_name: str, output_name: str, atol: float
) -> None:
    """Raise ``RuntimeError`` unless ``path`` passes onnx.checker, has a dynamic batch dimension on
    every input and output, and gives torch's outputs on ``inputs`` within ``atol``."""
    import onnx
    import onnxruntime
    import torch

    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in (*graph.input, *graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise RuntimeError(f"{path}: '{value.name}' has a fixed batch dim {first.dim_value}")
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([output_name], {input_name: inputs})
    if actual.shape != expected.shape or not np.allclose(actual, expected, atol=atol, rtol=0):
        difference = float(np.max(np.abs(actual - expected))) if actual.shape == expected.shape else -1
        raise RuntimeError(
            f"{path}: onnxruntime output {actual.shape} differs from torch {expected.shape} "
            f"(max abs difference {difference}, tolerance {atol})"
        )
