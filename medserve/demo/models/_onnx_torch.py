"""A small ONNX graph interpreter as a ``torch.nn.Module``, so the ONNX example models can be traced to
TorchScript and exported with ``torch.export`` (see :mod:`medserve.demo.models.runtime_artifacts`).

Only the operators of the example graphs are covered (element-wise arithmetic, casts, reductions,
reshapes, convolutions, pooling, normalisation, dense layers and activations). Shape-like inputs
(``Reshape``'s shape, ``ReduceSum``'s axes...) must be initializers: the traced program bakes them in.
Anything else raises ``NotImplementedError`` naming the operator. torch is imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    import torch

_Attrs = dict[str, Any]
_Op = Callable[[list[Any], _Attrs], Any]


def _torch_dtype(element_type: int) -> torch.dtype:
    import torch

    names: dict[int, torch.dtype] = {
        onnx.TensorProto.FLOAT: torch.float32,
        onnx.TensorProto.DOUBLE: torch.float64,
        onnx.TensorProto.FLOAT16: torch.float16,
        onnx.TensorProto.BFLOAT16: torch.bfloat16,
        onnx.TensorProto.INT8: torch.int8,
        onnx.TensorProto.INT16: torch.int16,
        onnx.TensorProto.INT32: torch.int32,
        onnx.TensorProto.INT64: torch.int64,
        onnx.TensorProto.UINT8: torch.uint8,
        onnx.TensorProto.BOOL: torch.bool,
    }
    try:
        return names[element_type]
    except KeyError:
        raise NotImplementedError(f"ONNX element type {element_type} has no torch dtype here") from None


#: operand positions that are shapes or axes: taken as constants (initializers), baked into the program
_SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "Unsqueeze": (1,),
}


def _ints(value: Any) -> list[int]:
    """A shape-like operand (an initializer's array) as Python ints."""
    return [int(v) for v in value.reshape(-1).tolist()]


def _pool_args(attrs: dict[str, Any], rank: int) -> tuple[list[int], list[int]]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    if pads[:rank] != pads[rank:]:
        raise NotImplementedError(f"asymmetric pads {pads}")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError(f"auto_pad {attrs['auto_pad']!r}")
    return pads[:rank], list(attrs.get("strides", [1] * rank))


def _operators() -> dict[str, _Op]:
    import torch
    import torch.nn.functional as F

    def conv(x: list[Any], a: _Attrs) -> Any:
        rank = x[1].dim() - 2
        padding, stride = _pool_args(a, rank)
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
        bias = x[2] if len(x) > 2 else None
        dilation = list(a.get("dilations", [1] * rank))
        return fn(x[0], x[1], bias, stride, padding, dilation, int(a.get("group", 1)))

    def pool(kind: str) -> _Op:
        def run(x: list[Any], a: _Attrs) -> Any:
            kernel = list(a["kernel_shape"])
            padding, stride = _pool_args(a, len(kernel))
            ceil = bool(a.get("ceil_mode", 0))
            if kind == "max":
                max_pool: Any = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
                return max_pool(x[0], kernel, stride, padding, ceil_mode=ceil)
            avg_pool: Any = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
            return avg_pool(x[0], kernel, stride, padding, ceil, bool(a.get("count_include_pad", 0)))

        return run

    def gemm(x: list[Any], a: _Attrs) -> Any:
        left = x[0].t() if a.get("transA", 0) else x[0]
        right = x[1].t() if a.get("transB", 0) else x[1]
        out = float(a.get("alpha", 1.0)) * (left @ right)
        return out + float(a.get("beta", 1.0)) * x[2] if len(x) > 2 else out

    def flatten(x: list[Any], a: _Attrs) -> Any:
        axis = int(a.get("axis", 1))
        if axis == 0:
            return x[0].reshape(1, -1)
        return torch.flatten(torch.flatten(x[0], 0, axis - 1), 1)

    def reshape(x: list[Any], a: _Attrs) -> Any:
        shape = _ints(x[1])
        if not a.get("allowzero", 0):
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x[0].reshape(shape)

    def reduce(fn: Callable[..., Any]) -> _Op:
        def run(x: list[Any], a: _Attrs) -> Any:
            axes = _ints(x[1]) if len(x) > 1 else list(a.get("axes", []))
            keep = bool(a.get("keepdims", 1))
            if not axes:
                return fn(x[0].reshape(-1), dim=0).reshape([1] * x[0].dim() if keep else [])
            return fn(x[0], dim=axes, keepdim=keep)

        return run

    def batch_norm(x: list[Any], a: _Attrs) -> Any:
        return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, float(a.get("epsilon", 1e-5)))

    return {
        "Add": lambda x, a: x[0] + x[1],
        "Sub": lambda x, a: x[0] - x[1],
        "Mul": lambda x, a: x[0] * x[1],
        "Div": lambda x, a: x[0] / x[1],
        "Identity": lambda x, a: x[0].clone(),
        "Cast": lambda x, a: x[0].to(_torch_dtype(int(a["to"]))),
        "Relu": lambda x, a: torch.relu(x[0]),
        "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
        "Tanh": lambda x, a: torch.tanh(x[0]),
        "Softmax": lambda x, a: torch.softmax(x[0], int(a.get("axis", -1))),
        "MatMul": lambda x, a: x[0] @ x[1],
        "Concat": lambda x, a: torch.cat(x, int(a["axis"])),
        "Transpose": lambda x, a: x[0].permute(list(a["perm"])),
        "Unsqueeze": lambda x, a: x[0].reshape(_unsqueezed(list(x[0].shape), _ints(x[1]))),
        "GlobalAveragePool": lambda x, a: x[0].mean(dim=list(range(2, x[0].dim())), keepdim=True),
        "Conv": conv,
        "MaxPool": pool("max"),
        "AveragePool": pool("avg"),
        "Gemm": gemm,
        "Flatten": flatten,
        "Reshape": reshape,
        "ReduceSum": reduce(torch.sum),
        "ReduceMean": reduce(torch.mean),
        "BatchNormalization": batch_norm,
    }


def _unsqueezed(shape: list[Any], axes: list[int]) -> list[Any]:
    rank = len(shape) + len(axes)
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    return shape


def onnx_module(model: onnx.ModelProto) -> torch.nn.Module:
    """A module computing ``model``'s graph: positional inputs in graph order, one tensor or a tuple of
    tensors in graph output order. Raises ``NotImplementedError`` for an operator outside the subset."""
    import torch

    operators = _operators()
    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node if n.op_type not in operators or n.domain})
    if unsupported:
        raise NotImplementedError(f"ONNX operator(s) {unsupported} are not supported by the converter")
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        for position in _SHAPE_OPERANDS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] not in constants:
                raise NotImplementedError(
                    f"{node.op_type} '{node.name or node.output[0]}': operand {position} "
                    f"('{node.input[position]}') must be an initializer for the converter"
                )

    class OnnxGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._constants: dict[str, str] = {}
            self._literals: dict[str, np.ndarray] = {}
            for index, init in enumerate(graph.initializer):
                attribute = f"c{index}_{re.sub(r'[^0-9A-Za-z_]', '_', init.name)}"
                array = np.array(numpy_helper.to_array(init))
                self.register_buffer(attribute, torch.from_numpy(array))
                self._constants[init.name] = attribute
                self._literals[init.name] = array
            self._inputs = [v.name for v in graph.input if v.name not in self._constants]
            self._outputs = [v.name for v in graph.output]
            self._nodes = [
                (
                    n.op_type,
                    list(n.input),
                    list(n.output),
                    {a.name: helper.get_attribute_value(a) for a in n.attribute},
                )
                for n in graph.node
            ]

        def forward(self, *args: torch.Tensor) -> Any:
            values: dict[str, Any] = {name: getattr(self, attr) for name, attr in self._constants.items()}
            values.update(zip(self._inputs, args))
            for op, inputs, outputs, attrs in self._nodes:
                operands = [
                    self._literals[name] if position in _SHAPE_OPERANDS.get(op, ()) else values[name]
                    for position, name in enumerate(inputs)
                    if name
                ]
                result = operators[op](operands, attrs)
                values[outputs[0]] = result
            results = tuple(values[name] for name in self._outputs)
            return results[0] if len(results) == 1 else results

    return OnnxGraph().eval()
