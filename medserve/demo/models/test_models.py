"""Small ONNX graphs for exercising the server, built with ``onnx.helper`` (no torch needed).

Each model is a few nodes, so the whole set builds in well under a second. Where a model batches
(``max_batch_size > 0``) its ONNX inputs and outputs carry a leading dynamic dimension named ``batch``
and the dims in ``config.yaml`` exclude it, as the repository schema requires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from medserve.demo.models._spec import IR_VERSION, OPSET, ExampleModel

BATCH_DIM = "batch"
MAX_BATCH_SIZE = 8

ONNX_ELEMENT_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}
"""Open Inference Protocol datatype -> ONNX tensor element type."""

IDENTITY_DATATYPES: tuple[str, ...] = tuple(ONNX_ELEMENT_TYPES)
"""Every OIP datatype gets an ``identity_<datatype lower-case>`` model."""

_Dim = int | str


def _value_info(name: str, datatype: str, dims: Sequence[_Dim] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_ELEMENT_TYPES[datatype], dims)


def _onnx_dims(dims: Sequence[int], batched: bool, prefix: str = "d") -> list[_Dim]:
    """Config dims -> ONNX shape: ``-1`` becomes a named symbolic dim, batch dim prepended."""
    shape: list[_Dim] = [f"{prefix}{i}" if d == -1 else d for i, d in enumerate(dims)]
    return [BATCH_DIM, *shape] if batched else shape


def _model(
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="medserve.demo.models",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def simple_model(*, batched: bool, offset: float = 0.0) -> onnx.ModelProto:
    """Triton's ``simple``: OUTPUT0 = INPUT0 + INPUT1 (+ ``offset``), OUTPUT1 = INPUT0 - INPUT1."""
    shape = _onnx_dims([16], batched)
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["SUM" if offset else "OUTPUT0"])]
    initializers: list[TensorProto] = []
    if offset:
        initializers.append(helper.make_tensor("OFFSET", TensorProto.FLOAT, [], [offset]))
        nodes.append(helper.make_node("Add", ["SUM", "OFFSET"], ["OUTPUT0"]))
    nodes.append(helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]))
    return _model(
        "simple",
        nodes,
        [_value_info("INPUT0", "FP32", shape), _value_info("INPUT1", "FP32", shape)],
        [_value_info("OUTPUT0", "FP32", shape), _value_info("OUTPUT1", "FP32", shape)],
        initializers,
    )


def identity_model(datatype: str) -> onnx.ModelProto:
    """``OUTPUT0 = Identity(INPUT0)`` over ``[batch, n]`` tensors of ``datatype``."""
    shape = _onnx_dims([-1], batched=True)
    return _model(
        f"identity_{datatype.lower()}",
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [_value_info("INPUT0", datatype, shape)],
        [_value_info("OUTPUT0", datatype, shape)],
    )


def fp16_scale_model() -> onnx.ModelProto:
    """``OUTPUT0 = INPUT0 * 2`` in FP16, computed as Cast(float) -> Mul -> Cast(float16)."""
    shape = _onnx_dims([4], batched=True)
    return _model(
        "fp16_scale",
        [
            helper.make_node("Cast", ["INPUT0"], ["INPUT0_FP32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["INPUT0_FP32", "TWO"], ["SCALED"]),
            helper.make_node("Cast", ["SCALED"], ["OUTPUT0"], to=TensorProto.FLOAT16),
        ],
        [_value_info("INPUT0", "FP16", shape)],
        [_value_info("OUTPUT0", "FP16", shape)],
        [helper.make_tensor("TWO", TensorProto.FLOAT, [], [2.0])],
    )


def variable_sum_model() -> onnx.ModelProto:
    """``OUTPUT0 = sum(INPUT0, axis=1, keepdims)`` ([batch, 1]); ``OUTPUT1 = INPUT0 * 2``."""
    shape = _onnx_dims([-1], batched=True)
    return _model(
        "variable_sum",
        [
            helper.make_node("ReduceSum", ["INPUT0", "AXES"], ["OUTPUT0"], keepdims=1),
            helper.make_node("Mul", ["INPUT0", "TWO"], ["OUTPUT1"]),
        ],
        [_value_info("INPUT0", "FP32", shape)],
        [_value_info("OUTPUT0", "FP32", [BATCH_DIM, 1]), _value_info("OUTPUT1", "FP32", shape)],
        [
            helper.make_tensor("AXES", TensorProto.INT64, [1], [1]),
            helper.make_tensor("TWO", TensorProto.FLOAT, [], [2.0]),
        ],
    )


def reshape_fail_model() -> onnx.ModelProto:
    """``OUTPUT0 = Reshape(DATA, SHAPE)``: a SHAPE whose element count differs from DATA's fails."""
    return _model(
        "reshape_fail",
        [helper.make_node("Reshape", ["DATA", "SHAPE"], ["OUTPUT0"])],
        [_value_info("DATA", "FP32", ["n"]), _value_info("SHAPE", "INT64", ["rank"])],
        # Declared rank 1 as in config.yaml (a one-element SHAPE); the real rank follows SHAPE.
        [_value_info("OUTPUT0", "FP32", ["m"])],
    )


# --- configurations -------------------------------------------------------------------------------

_DYNAMIC_BATCHING: dict[str, Any] = {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4, 8]}
_TEST_METADATA: dict[str, Any] = {"task": "server test fixture", "research_use_only": True}


def _tensor(name: str, datatype: str, dims: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "dims": list(dims)}


def _config(
    *,
    max_batch_size: int,
    inputs: Sequence[dict[str, Any]] | None,
    outputs: Sequence[dict[str, Any]] | None,
    description: str,
    dynamic_batching: bool = True,
    version_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"runtime": "onnxruntime", "max_batch_size": max_batch_size}
    if inputs is not None:
        config["inputs"] = list(inputs)
    if outputs is not None:
        config["outputs"] = list(outputs)
    if dynamic_batching:
        config["dynamic_batching"] = dict(_DYNAMIC_BATCHING)
    config["instance_count"] = 1
    config["version_policy"] = version_policy or {"latest": {"num_versions": 1}}
    config["runtime_options"] = {"intra_op_threads": 1}
    config["metadata"] = {**_TEST_METADATA, "description": description}
    return config


def _writer(build: Callable[[int], onnx.ModelProto]) -> Callable[[int, Path], None]:
    def write(version: int, path: Path) -> None:
        onnx.save(build(version), str(path))

    return write


def _identity_example(datatype: str) -> ExampleModel:
    return ExampleModel(
        name=f"identity_{datatype.lower()}",
        config=_config(
            max_batch_size=MAX_BATCH_SIZE,
            inputs=[_tensor("INPUT0", datatype, [-1])],
            outputs=[_tensor("OUTPUT0", datatype, [-1])],
            description=f"Returns its {datatype} input unchanged (ONNX Identity).",
        ),
        write=_writer(lambda _version: identity_model(datatype)),
    )


def _test_models() -> tuple[ExampleModel, ...]:
    vec16 = [_tensor("INPUT0", "FP32", [16]), _tensor("INPUT1", "FP32", [16])]
    out16 = [_tensor("OUTPUT0", "FP32", [16]), _tensor("OUTPUT1", "FP32", [16])]
    simple = ExampleModel(
        name="simple",
        config=_config(
            max_batch_size=MAX_BATCH_SIZE,
            inputs=vec16,
            outputs=out16,
            description="Triton's 'simple': OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.",
        ),
        write=_writer(lambda _version: simple_model(batched=True)),
    )
    simple_nobatch = ExampleModel(
        name="simple_nobatch",
        config=_config(
            max_batch_size=0,
            inputs=None,
            outputs=None,
            dynamic_batching=False,
            version_policy={"all": {}},
            description=(
                "Unbatched 'simple' whose inputs/outputs come from the ONNX model. Version 1: "
                "OUTPUT0 = INPUT0 + INPUT1; version 2: OUTPUT0 = INPUT0 + INPUT1 + 1. Both: "
                "OUTPUT1 = INPUT0 - INPUT1."
            ),
        ),
        write=_writer(lambda version: simple_model(batched=False, offset=float(version - 1))),
        versions=(1, 2),
    )
    fp16_scale = ExampleModel(
        name="fp16_scale",
        config=_config(
            max_batch_size=MAX_BATCH_SIZE,
            inputs=[_tensor("INPUT0", "FP16", [4])],
            outputs=[_tensor("OUTPUT0", "FP16", [4])],
            description="OUTPUT0 = INPUT0 * 2 for an FP16 vector of 4.",
        ),
        write=_writer(lambda _version: fp16_scale_model()),
    )
    variable_sum = ExampleModel(
        name="variable_sum",
        config=_config(
            max_batch_size=MAX_BATCH_SIZE,
            inputs=[_tensor("INPUT0", "FP32", [-1])],
            outputs=[_tensor("OUTPUT0", "FP32", [1]), _tensor("OUTPUT1", "FP32", [-1])],
            description=(
                "OUTPUT0 = sum of INPUT0 over its variable dim, OUTPUT1 = INPUT0 * 2; requests whose "
                "variable dims differ must never share a batch."
            ),
        ),
        write=_writer(lambda _version: variable_sum_model()),
    )
    reshape_fail = ExampleModel(
        name="reshape_fail",
        config=_config(
            max_batch_size=0,
            inputs=[_tensor("DATA", "FP32", [-1]), _tensor("SHAPE", "INT64", [-1])],
            outputs=[_tensor("OUTPUT0", "FP32", [-1])],
            dynamic_batching=False,
            description=(
                "OUTPUT0 = Reshape(DATA, SHAPE). A SHAPE such as [-1] succeeds; one whose element "
                "count differs from DATA's makes the engine fail at run time."
            ),
        ),
        write=_writer(lambda _version: reshape_fail_model()),
    )
    identities = tuple(_identity_example(dt) for dt in IDENTITY_DATATYPES)
    return (simple, simple_nobatch, *identities, fp16_scale, variable_sum, reshape_fail)


TEST_MODELS: tuple[ExampleModel, ...] = _test_models()
"""The small test-fixture models, in repository order."""
