"""The torch and OpenVINO engines, and ONNX Runtime's execution providers.

Every engine must give ONNX Runtime's outputs for the same model. Tolerances (``numpy.testing.
assert_allclose``: ``|actual - expected| <= atol + rtol * |expected|``):

* fp32: atol 1e-5, rtol 1e-4 (measured: at most 2e-7 on these models and on DenseNet-121);
* fp16: atol 2e-3, rtol 1e-2 (measured on CPU: at most 9e-4);
* bf16: atol 1.5e-2, rtol 2e-2 (measured on CPU: at most 7e-3).

CUDA tests skip on machines without a CUDA device, OpenVINO tests where openvino is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from medserve.core.loading import declaration
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.demo.models.runtime_artifacts import (
    VARIANTS,
    openvino_available,
    place_variant,
    small_conv_net,
    variant_config,
    write_runtime_variants,
)
from medserve.demo.models.test_models import TEST_MODELS, simple_model
from medserve.repository.config import load_model_config
from medserve.repository.repository import ModelRepository
from medserve.runtimes import runtime_class, runtime_names
from medserve.runtimes.base import Declaration
from medserve.runtimes.onnxruntime import OnnxRuntime, default_providers
from medserve.runtimes.torch import TorchRuntime
from medserve.values.errors import InvalidConfig, MedserveError, ModelLoadError
from medserve.values.types import InferenceRequest, RequestedOutput, Tensor

# TorchScript is deprecated upstream, and still served here
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

FP32 = {"atol": 1e-5, "rtol": 1e-4}
FP16 = {"atol": 2e-3, "rtol": 1e-2}
BF16 = {"atol": 1.5e-2, "rtol": 2e-2}

HAS_OPENVINO = openvino_available()
HAS_CUDA = torch.cuda.is_available()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")

ENGINES = [
    pytest.param("torchscript", id="torchscript"),
    pytest.param("torch_export", id="torch_export"),
    pytest.param("openvino", id="openvino", marks=needs_openvino),
]
SIMPLE_CONFIG = next(m.config for m in TEST_MODELS if m.name == "simple")
CONV_CONFIG: dict[str, Any] = {
    "max_batch_size": 8,
    "inputs": [{"name": "image", "datatype": "FP32", "dims": [1, 16, 16]}],
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "dims": [3]},
        {"name": "features", "datatype": "FP32", "dims": [8]},
    ],
    "dynamic_batching": {"max_queue_delay_us": 20000, "preferred_batch_sizes": [4, 8]},
}


@pytest.fixture(scope="module")
def simple(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``simple`` (an ONNX example) in every format, through the ONNX-to-torch path."""
    root = tmp_path_factory.mktemp("simple")
    onnx.save(simple_model(batched=True), str(root / "source.onnx"))
    return write_runtime_variants(root / "source.onnx", root / "variants")


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small conv net with two outputs in every format, through the torch-module path."""
    root = tmp_path_factory.mktemp("conv")
    return write_runtime_variants(
        small_conv_net(),
        root,
        example_inputs=[torch.rand(2, 1, 16, 16)],
        input_names=["image"],
        output_names=["probabilities", "features"],
    )


def feeds(model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "simple":
        return {f"INPUT{i}": rng.standard_normal((batch, 16)).astype(np.float32) for i in (0, 1)}
    return {"image": rng.random((batch, 1, 16, 16), dtype=np.float32)}


def loaded(
    path: Path, variant: str, options: dict[str, Any] | None = None, declared: Declaration | None = None
) -> Any:
    runtime = runtime_class(VARIANTS[variant][0])(path, dict(options or {}), declared=declared)
    runtime.load()
    return runtime


def declared_by(model_dir: Path) -> Declaration:
    """What the loader hands the engines of ``model_dir``'s version 1: its config.yaml's declaration."""
    config = load_model_config(model_dir)
    return declaration(config, model_dir / "1" / config.artifact)


def reference(paths: dict[str, Path], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort_runtime = loaded(paths["onnx"], "onnx")
    result: dict[str, np.ndarray] = ort_runtime.run(inputs, [t.name for t in ort_runtime.outputs()])
    return result


def assert_matches(
    actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], tol: dict[str, float]
) -> None:
    assert set(actual) == set(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype and actual[name].shape == array.shape, name
        np.testing.assert_allclose(actual[name], array, **tol, err_msg=name)


# ------------------------------------------------------------------ engines loaded directly


@pytest.mark.parametrize("variant", ENGINES)
@pytest.mark.parametrize("model", ["simple", "conv"])
def test_engine_matches_onnxruntime_at_every_batch_size(
    variant: str, model: str, simple: dict[str, Path], conv: dict[str, Path]
) -> None:
    paths = simple if model == "simple" else conv
    runtime = loaded(paths[variant], variant)
    ort_runtime = loaded(paths["onnx"], "onnx")
    assert runtime.inputs() == ort_runtime.inputs() and runtime.outputs() == ort_runtime.outputs()
    assert runtime.device() == "cpu"
    names = [t.name for t in runtime.outputs()]
    for batch in (1, 3, 8):  # the artifacts were traced/exported at batch 2: the batch dim is dynamic
        inputs = feeds(model, batch, seed=batch)
        assert_matches(runtime.run(inputs, names), ort_runtime.run(inputs, names), FP32)
    assert set(runtime.run(feeds(model, 2), names[:1])) == {names[0]}
    runtime.unload()


@pytest.mark.parametrize(("precision", "tol"), [("fp16", FP16), ("bf16", BF16)])
@pytest.mark.parametrize("variant", ["torchscript", "torch_export"])
def test_reduced_precision_on_cpu_returns_the_declared_datatype(
    variant: str, precision: str, tol: dict[str, float], conv: dict[str, Path]
) -> None:
    runtime = loaded(conv[variant], variant, {"precision": precision})
    assert runtime.describe()["precision"] == precision
    inputs = feeds("conv", 5)
    assert_matches(runtime.run(inputs, ["probabilities", "features"]), reference(conv, inputs), tol)


def test_compile_runs_the_compiled_module(conv: dict[str, Path]) -> None:
    runtime = loaded(conv["torch_export"], "torch_export", {"compile": True, "compile_backend": "eager"})
    assert runtime.describe()["compiled"] is True
    for batch in (3, 5):
        inputs = feeds("conv", batch, seed=batch)
        assert_matches(runtime.run(inputs, ["probabilities", "features"]), reference(conv, inputs), FP32)


def test_compile_failure_falls_back_to_eager_with_a_warning(
    conv: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medserve.runtimes.torch"):
        runtime = loaded(conv["torchscript"], "torchscript", {"compile": True, "compile_backend": "no_such"})
    assert runtime.describe()["compiled"] is False
    assert any("running eagerly" in r.getMessage() for r in caplog.records)
    inputs = feeds("conv", 2)
    assert_matches(runtime.run(inputs, ["probabilities", "features"]), reference(conv, inputs), FP32)


def test_intra_op_threads_sets_torch_threads_process_wide(simple: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    try:
        runtime = loaded(simple["torchscript"], "torchscript", {"intra_op_threads": 1})
        assert torch.get_num_threads() == 1 and runtime.describe()["intra_op_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_exported_program_without_description_names_tensors_from_its_signature(tmp_path: Path) -> None:
    program = torch.export.export(
        small_conv_net(), (torch.rand(2, 1, 16, 16),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    runtime = loaded(tmp_path / "model.pt2", "torch_export")
    assert [(t.name, t.datatype, t.shape) for t in runtime.inputs()] == [("image", "FP32", (-1, 1, 16, 16))]
    assert [t.name for t in runtime.outputs()] == ["OUTPUT__0", "OUTPUT__1"]
    assert runtime.describe()["tensors_from"] == "exported program"
    out = runtime.run(feeds("conv", 3), ["OUTPUT__1"])
    assert out["OUTPUT__1"].shape == (3, 8)


def test_torchscript_dict_outputs_map_by_name(tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"doubled": x * 2, "negated": -x}

    torch.jit.save(torch.jit.script(Pair()), str(tmp_path / "model.pt"))
    model_dir = place_variant(
        tmp_path / "repo",
        "pair",
        {
            "runtime": "torch",
            "artifact": "model.pt",
            "max_batch_size": 4,
            "inputs": [{"name": "x", "datatype": "FP32", "dims": [2]}],
            "outputs": [  # declared in the other order: mapped by key, not position
                {"name": "negated", "datatype": "FP32", "dims": [2]},
                {"name": "doubled", "datatype": "FP64", "dims": [2]},
            ],
        },
        tmp_path / "model.pt",
    )
    with pytest.raises(ModelLoadError, match="names no tensors"):  # an engine reads no config.yaml itself
        loaded(model_dir / "1" / "model.pt", "torchscript")
    runtime = loaded(model_dir / "1" / "model.pt", "torchscript", declared=declared_by(model_dir))
    assert runtime.describe()["tensors_from"] == "config.yaml"
    x = np.array([[1.0, -2.0]], dtype=np.float32)
    out = runtime.run({"x": x}, ["doubled", "negated"])
    assert out["doubled"].dtype == np.float64  # returned in the declared datatype
    np.testing.assert_array_equal(out["doubled"], [[2.0, -4.0]])
    np.testing.assert_array_equal(out["negated"], -x)


@needs_openvino
def test_openvino_splits_a_batch_over_several_requests(conv: dict[str, Path]) -> None:
    runtime = loaded(
        conv["openvino"],
        "openvino",
        {"num_requests": 3, "performance_hint": "THROUGHPUT", "dynamic_batch": True},
    )
    assert runtime.describe()["num_requests"] == 3
    for batch in (1, 2, 7):
        inputs = feeds("conv", batch, seed=batch)
        assert_matches(runtime.run(inputs, ["features", "probabilities"]), reference(conv, inputs), FP32)


@needs_openvino
def test_openvino_gives_a_fixed_batch_model_a_variable_batch(tmp_path: Path) -> None:
    net = small_conv_net()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated upstream
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.rand(2, 1, 16, 16),),
            str(tmp_path / "fixed.onnx"),
            dynamo=False,
            input_names=["image"],
            output_names=["probabilities", "features"],
        )
    fixed = loaded(tmp_path / "fixed.onnx", "openvino")
    assert fixed.inputs()[0].shape == (2, 1, 16, 16)
    # dynamic_batch auto follows the declared model: variable when it batches
    for max_batch_size, first in ((8, -1), (0, 2)):
        declared = Declaration("fixed/config.yaml", max_batch_size)
        assert loaded(tmp_path / "fixed.onnx", "openvino", declared=declared).inputs()[0].shape[0] == first
    runtime = loaded(tmp_path / "fixed.onnx", "openvino", {"dynamic_batch": True})
    assert runtime.inputs()[0].shape == (-1, 1, 16, 16)
    inputs = feeds("conv", 5)
    with torch.no_grad():
        expected = [t.numpy() for t in net(torch.from_numpy(inputs["image"]))]
    out = runtime.run(inputs, ["probabilities", "features"])
    np.testing.assert_allclose(out["probabilities"], expected[0], **FP32)
    np.testing.assert_allclose(out["features"], expected[1], **FP32)


# ------------------------------------------------------------------ through the repository and registry


@pytest.fixture()
def repository(tmp_path: Path, simple: dict[str, Path], conv: dict[str, Path]) -> Path:
    repo = tmp_path / "repo"
    for variant in ("onnx", "torchscript", "torch_export", "openvino"):
        if variant in simple:
            place_variant(repo, f"simple_{variant}", variant_config(SIMPLE_CONFIG, variant), simple[variant])
            place_variant(repo, f"conv_{variant}", variant_config(CONV_CONFIG, variant), conv[variant])
    return repo


async def _served_outputs(
    registry: ModelRegistry, name: str, batches: list[dict[str, np.ndarray]]
) -> list[Any]:
    model = registry.get(name)
    requests = [
        InferenceRequest(
            name,
            inputs=[Tensor(k, "FP32", v.shape, v) for k, v in inputs.items()],
            outputs=[RequestedOutput(t.name) for t in model.loaded.outputs],
        )
        for inputs in batches
    ]
    responses = await asyncio.gather(*(model.infer(r) for r in requests))  # batched together
    return [{t.name: t.data for t in response.outputs} for response in responses]


@pytest.mark.parametrize("variant", ENGINES)
@pytest.mark.parametrize("model", ["simple", "conv"])
async def test_repository_model_serves_like_onnxruntime(variant: str, model: str, repository: Path) -> None:
    registry = ModelRegistry(ModelRepository(repository), ServingMetrics())
    try:
        await registry.load(f"{model}_{variant}")
        await registry.load(f"{model}_onnx")
        batches = [feeds(model, size, seed=size) for size in (1, 2, 3)]
        served = await _served_outputs(registry, f"{model}_{variant}", batches)
        expected = await _served_outputs(registry, f"{model}_onnx", batches)
        for got, want in zip(served, expected):
            assert_matches(got, want, FP32)
        served_model = registry.get(f"{model}_{variant}")
        metadata = served_model.metadata(registry.versions(f"{model}_{variant}"))
        assert (
            metadata.platform == {"torch": "pytorch_libtorch", "openvino": "openvino"}[VARIANTS[variant][0]]
        )
        assert (
            metadata.parameters["runtime"] == VARIANTS[variant][0] and metadata.parameters["device"] == "cpu"
        )
        reference_metadata = registry.get(f"{model}_onnx").metadata(["1"])
        assert metadata.inputs == reference_metadata.inputs and metadata.outputs == reference_metadata.outputs
        if VARIANTS[variant][0] == "torch":
            assert metadata.parameters["tensors_from"] == "config.yaml"
    finally:
        await registry.close()


async def _load_error(repo: Path, name: str) -> MedserveError:
    registry = ModelRegistry(ModelRepository(repo), ServingMetrics())
    try:
        with pytest.raises(MedserveError) as failure:
            await registry.load(name)
    finally:
        await registry.close()
    return failure.value


@pytest.mark.parametrize(
    ("variant", "options", "message"),
    [
        pytest.param(
            "torchscript",
            {"device": "cuda:0"},
            "device 'cuda:0' is not available (torch.cuda.is_available() is False); available: cpu",
            marks=no_cuda,
            id="torch-cuda-unavailable",
        ),
        pytest.param(
            "torch_export", {"device": "tpu"}, "'device': 'tpu' is not a device name", id="torch-tpu"
        ),
        pytest.param(
            "torchscript", {"precision": "fp8"}, "'fp8' is not one of fp32, fp16, bf16", id="precision"
        ),
        pytest.param(
            "torchscript", {"cuda_graphs": [1, 4]}, "CUDA graphs need a CUDA device", id="graphs-cpu"
        ),
        pytest.param("torchscript", {"threads": 2}, "unknown option(s) ['threads']", id="torch-unknown"),
        pytest.param(
            "openvino",
            {"device": "NPU"},
            "device 'NPU' is not available; core.available_devices: ",
            marks=needs_openvino,
            id="openvino-npu",
        ),
        pytest.param(
            "openvino",
            {"performance_hint": "FAST"},
            "'FAST' is not one of LATENCY",
            marks=needs_openvino,
            id="openvino-hint",
        ),
        pytest.param(
            "onnx",
            {"providers": ["NoSuchExecutionProvider"]},
            "['NoSuchExecutionProvider'] are not available; available: ['",
            id="ort-provider",
        ),
        pytest.param(
            "onnx", {"device": "tpu"}, "'device': 'tpu' is not cpu, cuda or cuda:N", id="ort-device"
        ),
    ],
)
async def test_bad_runtime_options_fail_the_load_naming_the_field(
    variant: str, options: dict[str, Any], message: str, tmp_path: Path, simple: dict[str, Path]
) -> None:
    config = variant_config(SIMPLE_CONFIG, variant, options)
    model_dir = place_variant(tmp_path, "bad", config, simple[variant])
    with pytest.raises(InvalidConfig) as direct:
        loaded(model_dir / "1" / config["artifact"], variant, options, declared_by(model_dir))
    error = await _load_error(tmp_path, "bad")
    for text in (str(direct.value), str(error)):
        assert message in text, text
        assert f"{model_dir}/config.yaml: field 'runtime_options" in text, text


@pytest.mark.parametrize("variant", ENGINES)
async def test_missing_or_corrupt_artifacts_fail_the_load(
    variant: str, tmp_path: Path, simple: dict[str, Path], conv: dict[str, Path]
) -> None:
    config = variant_config(SIMPLE_CONFIG, variant)
    model_dir = place_variant(tmp_path, "broken", config, simple[variant])
    artifact = model_dir / "1" / config["artifact"]
    artifact.unlink()
    assert f"{artifact} does not exist" in str(await _load_error(tmp_path, "broken"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        loaded(artifact, variant)
    artifact.write_bytes(b"not a model")
    error = await _load_error(tmp_path, "broken")
    assert isinstance(error, ModelLoadError) and str(artifact) in str(error), error
    if variant == "openvino":  # an IR whose weights file is missing
        place_variant(tmp_path, "no_bin", variant_config(CONV_CONFIG, variant), conv[variant])
        (tmp_path / "no_bin" / "1" / "model.bin").unlink()
        error = await _load_error(tmp_path, "no_bin")
        assert "openvino cannot read" in str(error) and "bin file cannot be found" in str(error), error


async def test_torchscript_without_tensor_declarations_is_refused(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(tmp_path / "model.pt"))
    config = {"runtime": "torch", "artifact": "model.pt", "max_batch_size": 0}
    place_variant(tmp_path / "repo", "bare", config, tmp_path / "model.pt")
    error = await _load_error(tmp_path / "repo", "bare")
    assert "declare 'inputs' and 'outputs' in the model's config.yaml" in str(error)


# ------------------------------------------------------------------ ONNX Runtime providers


def test_onnxruntime_default_providers_are_unchanged(simple: dict[str, Path]) -> None:
    runtime = loaded(simple["onnx"], "onnx")
    assert runtime.describe()["providers"] == default_providers()


def test_onnxruntime_device_cpu_and_provider_lists(simple: dict[str, Path]) -> None:
    assert loaded(simple["onnx"], "onnx", {"device": "cpu"}).describe()["providers"] == [
        "CPUExecutionProvider"
    ]
    runtime = loaded(simple["onnx"], "onnx", {"providers": ["CPUExecutionProvider"]})
    assert runtime.describe()["providers"] == ["CPUExecutionProvider"] and runtime.device() == "cpu"
    with pytest.raises(InvalidConfig, match="not both"):
        loaded(simple["onnx"], "onnx", {"providers": ["CPUExecutionProvider"], "execution_providers": []})
    with pytest.raises(InvalidConfig, match="needs one of"):
        loaded(simple["onnx"], "onnx", {"device": "cuda", "providers": ["CPUExecutionProvider"]})


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this onnxruntime has the CUDA provider",
)
def test_onnxruntime_cuda_device_without_the_cuda_provider(simple: dict[str, Path]) -> None:
    with pytest.raises(InvalidConfig, match=r"\['CUDAExecutionProvider'\] are not available; available: \["):
        loaded(simple["onnx"], "onnx", {"device": "cuda:1"})


# ------------------------------------------------------------------ CUDA


@needs_cuda
@pytest.mark.parametrize(("precision", "tol"), [("fp32", FP16), ("fp16", FP16), ("bf16", BF16)])
@pytest.mark.parametrize("variant", ["torchscript", "torch_export"])
def test_cuda_precisions_match_onnxruntime(
    variant: str, precision: str, tol: dict[str, float], conv: dict[str, Path]
) -> None:
    # fp32 on CUDA may use TF32 convolutions, hence the fp16 tolerance there too
    runtime = loaded(conv[variant], variant, {"device": "cuda:0", "precision": precision})
    assert runtime.device() == "cuda:0"
    inputs = feeds("conv", 5)
    assert_matches(runtime.run(inputs, ["probabilities", "features"]), reference(conv, inputs), tol)


@needs_cuda
@pytest.mark.parametrize("variant", ["torchscript", "torch_export"])
def test_cuda_graphs_pad_to_the_captured_sizes(variant: str, conv: dict[str, Path]) -> None:
    runtime = loaded(conv[variant], variant, {"device": "cuda", "cuda_graphs": [1, 4], "precision": "fp16"})
    assert runtime.describe()["cuda_graphs"] == [1, 4]
    for batch in (1, 3, 4, 6):  # 3 is padded to 4; 6 is larger than any graph and runs eagerly
        inputs = feeds("conv", batch, seed=batch)
        assert_matches(runtime.run(inputs, ["probabilities", "features"]), reference(conv, inputs), FP16)


# ------------------------------------------------------------------ registration


def test_runtimes_are_registered_and_imported_lazily() -> None:
    assert {"torch", "openvino", "onnxruntime"} <= set(runtime_names())
    assert runtime_class("torch") is TorchRuntime
    code = (
        "import sys, medserve.runtimes, medserve.core.model\n"
        "assert 'torch' not in sys.modules and 'openvino' not in sys.modules, 'imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert OnnxRuntime.name == "onnxruntime"


@pytest.mark.slow
def test_chest_xray_classifier_in_every_format(tmp_path: Path) -> None:
    from medserve.demo.models.runtime_artifacts import chest_xray_variants

    paths = chest_xray_variants(tmp_path)
    images = np.random.default_rng(3).random((3, 1, 224, 224), dtype=np.float32)
    expected = reference(paths, {"image": images})
    for variant in ("torchscript", "torch_export", "openvino"):
        if variant in paths:
            assert_matches(
                loaded(paths[variant], variant).run({"image": images}, ["probabilities"]), expected, FP32
            )
