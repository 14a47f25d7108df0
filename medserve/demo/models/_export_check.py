"""How every torch-built example leaves torch: one ONNX export with a dynamic batch dimension
(``export_batched``), then the check that the graph is valid and its onnxruntime outputs match
torch's (``verify_export``); ``scoring_session`` is the onnxruntime session the builds score their
held-out data with."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch


def scoring_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on one thread, like the training: the same figures on every machine,
    and no spinning thread pool that a busy machine makes tens of times slower."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_batched(
    model: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int
) -> None:
    """Export ``model`` (TorchScript-based exporter) with axis 0 of its one input and output dynamic."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )


def verify_export(
    model: torch.nn.Module, path: Path, inputs: np.ndarray, input_name: str, output_name: str, atol: float
) -> None:
    """Raise ``RuntimeError`` unless ``path`` passes onnx.checker, has a dynamic batch dimension on
    every input and output, and gives torch's outputs on ``inputs`` within ``atol``."""
    import onnx
    import torch

    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    for value in (*graph.input, *graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise RuntimeError(f"{path}: '{value.name}' has a fixed batch dim {first.dim_value}")
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = scoring_session(path)
    (actual,) = session.run([output_name], {input_name: inputs})
    if actual.shape != expected.shape or not np.allclose(actual, expected, atol=atol, rtol=0):
        difference = float(np.max(np.abs(actual - expected))) if actual.shape == expected.shape else -1
        raise RuntimeError(
            f"{path}: onnxruntime output {actual.shape} differs from torch {expected.shape} "
            f"(max abs difference {difference}, tolerance {atol})"
        )
