"""What the loader hands an engine: the declaration of config.yaml, with full shapes and its source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medserve.core.loading import declaration
from medserve.repository.config import parse_model_config
from medserve.runtimes import Declaration, EngineTensor
from medserve.runtimes.onnxruntime import OnnxRuntime

TENSORS = """
inputs: [{name: image, datatype: FP32, dims: [1, -1, 16]}]
outputs: [{name: label, datatype: INT64, dims: [1]}, {name: score, datatype: FP16, dims: [3]}]
"""


def test_a_batching_model_declares_a_variable_batch_dimension() -> None:
    config = parse_model_config(f"max_batch_size: 8\n{TENSORS}", "c.yaml", "m")
    declared = Declaration.of("m/config.yaml", config.max_batch_size, config.inputs, config.outputs)
    assert declared.max_batch_size == 8 and declared.source == "m/config.yaml"
    assert declared.inputs == (EngineTensor("image", "FP32", (-1, 1, -1, 16)),)
    assert declared.outputs == (
        EngineTensor("label", "INT64", (-1, 1)),
        EngineTensor("score", "FP16", (-1, 3)),
    )


def test_a_model_that_does_not_batch_declares_its_shapes_as_written() -> None:
    config = parse_model_config(TENSORS, "c.yaml", "m")
    declared = Declaration.of("m/config.yaml", config.max_batch_size, config.inputs, config.outputs)
    assert declared.inputs == (EngineTensor("image", "FP32", (1, -1, 16)),)
    assert declared.outputs is not None and declared.outputs[1].shape == (3,)


def test_undeclared_tensors_stay_undeclared_and_a_declaration_is_frozen() -> None:
    declared = Declaration.of("m/config.yaml", 4, None, None)
    assert declared.inputs is None and declared.outputs is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        declared.max_batch_size = 0  # type: ignore[misc]


@pytest.mark.parametrize("artifact", ["model.onnx", "models/model.ts"])
def test_the_loader_names_the_models_config_yaml(tmp_path: Path, artifact: str) -> None:
    config = parse_model_config(f"artifact: {artifact}\nmax_batch_size: 2\n{TENSORS}", "c.yaml", "seg")
    declared = declaration(config, tmp_path / "seg" / "3" / artifact)
    assert declared.source == f"{tmp_path.resolve()}/seg/config.yaml"
    assert declared.max_batch_size == 2 and declared.inputs is not None
    assert declared.inputs[0].shape == (-1, 1, -1, 16)


def test_option_errors_name_the_declaring_file_or_the_engine() -> None:
    direct = OnnxRuntime(Path("model.onnx"), {})
    assert direct.declared is None
    assert direct.options_source("onnxruntime option") == "onnxruntime option"
    declared = OnnxRuntime(Path("model.onnx"), {}, declared=Declaration("repo/m/config.yaml"))
    assert declared.options_source("onnxruntime option") == "repo/m/config.yaml: field 'runtime_options'"
