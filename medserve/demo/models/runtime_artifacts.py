"""One model in the artifact format of every engine: ONNX, TorchScript, torch.export and OpenVINO IR.

:func:`write_runtime_variants` takes an ONNX example model (a ``.onnx`` file, a version folder or a
repository model folder) or a torch module, and writes into ``dest``:

================  ===============  ===================  ============================================
key               runtime          file                 how
================  ===============  ===================  ============================================
``onnx``          ``onnxruntime``  ``model.onnx``       copied, or ``torch.onnx.export`` of a module
``torchscript``   ``torch``        ``model.pt``         ``torch.jit.trace``, ``medserve.json`` embedded
``torch_export``  ``torch``        ``model.pt2``        ``torch.export.export`` (dynamic dims kept)
``openvino``      ``openvino``     ``model.xml`` + bin  ``save_model(convert_model(model.onnx))``
================  ===============  ===================  ============================================

An ONNX source is turned into a torch module by a small graph interpreter
(:mod:`medserve.demo.models._onnx_torch`), so only the operators of the example graphs convert. The torch
archives embed ``medserve.json`` (tensor names, datatypes, shapes, taken from the ONNX graph) so the
torch engine serves them without a ``config.yaml`` too. IR weights stay FP32 (``compress_to_fp16`` off).
``openvino`` is written only when the package is installed (or raises when asked for explicitly).
torch and openvino are imported when called.
"""

from __future__ import annotations

import inspect
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import yaml

from medserve.demo.models.test_models import ONNX_ELEMENT_TYPES
from medserve.runtimes._declared import METADATA_FILE, metadata_json
from medserve.runtimes.base import EngineTensor

if TYPE_CHECKING:
    import torch

#: variant -> (runtime name in config.yaml, artifact file name)
VARIANTS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime", "model.onnx"),
    "torchscript": ("torch", "model.pt"),
    "torch_export": ("torch", "model.pt2"),
    "openvino": ("openvino", "model.xml"),
}
_OIP_OF_ONNX = {element: name for name, element in ONNX_ELEMENT_TYPES.items()}
_EXAMPLE_SEED = 7


def onnx_path(source: Path) -> Path:
    """The ONNX file of a ``.onnx`` path, a version folder, or a model folder (its newest version)."""
    source = Path(source)
    if source.is_file():
        return source
    artifact = "model.onnx"
    config = source / "config.yaml"
    if config.is_file():
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        artifact = str(raw.get("artifact", artifact))
        versions = sorted((int(p.name), p) for p in source.iterdir() if p.is_dir() and p.name.isdigit())
        if versions:
            source = versions[-1][1]
    path = source / artifact
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    return path


def onnx_tensors(model: onnx.ModelProto) -> tuple[list[EngineTensor], list[EngineTensor]]:
    """Inputs and outputs of an ONNX graph (symbolic dims as -1)."""
    constants = {i.name for i in model.graph.initializer}

    def tensor(value: onnx.ValueInfoProto) -> EngineTensor:
        kind = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
        return EngineTensor(value.name, _OIP_OF_ONNX[kind.elem_type], dims)

    inputs = [tensor(v) for v in model.graph.input if v.name not in constants]
    return inputs, [tensor(v) for v in model.graph.output]


def _examples(model: onnx.ModelProto) -> tuple[list[torch.Tensor], list[dict[int, Any]]]:
    """Random inputs (symbolic dims: 2 for the first, 3 for others) and their ``torch.export`` dims."""
    import torch

    from medserve.values.datatypes import numpy_dtype

    rng = np.random.default_rng(_EXAMPLE_SEED)
    dims: dict[str, Any] = {}
    tensors, dynamic = [], []
    inputs, _ = onnx_tensors(model)
    graph_inputs = {v.name: v for v in model.graph.input}
    for spec in inputs:
        shape, axes = [], {}
        for axis, dim in enumerate(graph_inputs[spec.name].type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
                continue
            name = "".join(c if c.isalnum() else "_" for c in dim.dim_param or f"{spec.name}_{axis}")
            axes[axis] = dims.setdefault(name, torch.export.Dim(f"d_{name}", min=1, max=4096))
            shape.append(2 if axis == 0 else 3)
        array = rng.standard_normal(shape).astype(numpy_dtype(spec.datatype))
        tensors.append(torch.from_numpy(array))
        dynamic.append(axes)
    return tensors, dynamic


def write_runtime_variants(
    source: Path | torch.nn.Module,
    dest: Path,
    *,
    example_inputs: Sequence[torch.Tensor] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    openvino: bool | None = None,
) -> dict[str, Path]:
    """Write ``source`` in every engine's format under ``dest``; returns variant -> artifact path.

    For a torch module, ``example_inputs`` are required (batch size >= 2: the first dimension is
    exported as a variable batch dimension); names default to ``forward``'s parameters and
    ``OUTPUT__0``... ``openvino``: None writes the IR when openvino is installed, True requires it.
    """
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {variant: dest / file for variant, (_, file) in VARIANTS.items() if variant != "openvino"}
    if isinstance(source, torch.nn.Module):
        module = source.eval()
        if example_inputs is None:
            raise ValueError("example_inputs are needed to trace and export a torch module")
        examples = list(example_inputs)
        _export_onnx(module, examples, paths["onnx"], input_names, output_names)
        model = onnx.load(str(paths["onnx"]))
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic: list[dict[int, Any]] = [{0: batch} for _ in examples]
    else:
        path = onnx_path(source)
        if path.resolve() != paths["onnx"].resolve():
            shutil.copyfile(path, paths["onnx"])
        model = onnx.load(str(paths["onnx"]))
        from medserve.demo.models._onnx_torch import onnx_module

        module = onnx_module(model)
        examples, dynamic = _examples(model)
    extra = {METADATA_FILE: metadata_json(*onnx_tensors(model))}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jit: Any = torch.jit
        traced = jit.trace(module, tuple(examples), check_trace=False)
        torch.jit.save(traced, str(paths["torchscript"]), _extra_files=extra)
        shapes = {"args": tuple(dynamic)} if _variadic(module) else tuple(dynamic)
        program = torch.export.export(module, tuple(examples), dynamic_shapes=shapes)
        torch.export.save(program, str(paths["torch_export"]), extra_files=extra)
    if openvino or (openvino is None and openvino_available()):
        paths["openvino"] = write_openvino_ir(paths["onnx"], dest / VARIANTS["openvino"][1])
    return paths


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _variadic(module: torch.nn.Module) -> bool:
    parameters = inspect.signature(module.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)


def _export_onnx(
    module: torch.nn.Module,
    examples: list[torch.Tensor],
    path: Path,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> None:
    import torch

    with torch.no_grad():
        result = module(*examples)
    count = len(result) if isinstance(result, list | tuple) else 1
    inputs = list(input_names or list(inspect.signature(module.forward).parameters)[: len(examples)])
    outputs = list(output_names or [f"OUTPUT__{i}" for i in range(count)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(examples),
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
            opset_version=17,
        )


def write_openvino_ir(onnx_file: Path, xml: Path) -> Path:
    """``openvino.save_model(openvino.convert_model(onnx_file), xml)`` with FP32 weights kept."""
    import openvino

    openvino.save_model(openvino.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
    return xml


def variant_config(
    config: Mapping[str, Any], variant: str, runtime_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An example's ``config.yaml`` content for one variant: its runtime, artifact and options."""
    runtime, artifact = VARIANTS[variant]
    result = {k: v for k, v in config.items() if k != "name"}
    result.update(runtime=runtime, artifact=artifact, runtime_options=dict(runtime_options or {}))
    return result


def place_variant(
    repository: Path, name: str, config: Mapping[str, Any], artifact: Path, version: int = 1
) -> Path:
    """Write ``<repository>/<name>/config.yaml`` and copy ``artifact`` (with an IR's ``.bin``) into
    version ``version``; returns the model folder."""
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    target = version_dir / str(config.get("artifact", artifact.name))
    shutil.copyfile(artifact, target)
    if artifact.suffix == ".xml":
        shutil.copyfile(artifact.with_suffix(".bin"), target.with_suffix(".bin"))
    return model_dir


def small_conv_net(seed: int = 11) -> torch.nn.Module:
    """A seeded conv net ``image [N, 1, 16, 16]`` -> (``probabilities [N, 3]``, ``features [N, 8]``)."""
    import torch
    from torch import nn

    class SmallConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 8, 3, padding=1),
                nn.ReLU(),
            )
            self.head = nn.Linear(8, 3)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(image), 1), 1)
            return torch.sigmoid(self.head(pooled)), pooled

    torch.manual_seed(seed)
    net = SmallConvNet()
    norm: Any = net.features[1]
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is exercised
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return net.eval()


def chest_xray_variants(dest: Path) -> dict[str, Path]:
    """``chest_xray_classifier`` (the seeded DenseNet-121) in every engine's format."""
    import torch

    from medserve.demo.models.chest_xray import IMAGE_SIZE, INPUT_NAME, LABELS, OUTPUT_NAME, SEED
    from medserve.demo.models.densenet import densenet121

    torch.manual_seed(SEED)
    model = densenet121(in_channels=1, num_classes=len(LABELS)).eval()
    example = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(SEED))
    return write_runtime_variants(
        model, dest, example_inputs=[example], input_names=[INPUT_NAME], output_names=[OUTPUT_NAME]
    )
