"""``chest_xray_classifier``: an untrained DenseNet-121 over the 14 ChestX-ray14 findings, as ONNX.

The weights are a seeded random initialisation, so the model is reproducible and needs no download,
but its outputs mean nothing clinically: it exists to exercise the server with a realistically sized
convolutional network (about 7 M parameters, 2.9 GFLOPs per 224 x 224 image).

torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medserve.examples._export_check import verify_export
from medserve.examples._spec import OPSET, ExampleModel

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "chest_xray_classifier"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SIZE = 224
SEED = 20240101
ATOL = 1e-4

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The ChestX-ray14 findings, in the order of the output vector."""

Exporter = Literal["auto", "torchscript", "dynamo"]

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 8,
    "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "dims": [1, IMAGE_SIZE, IMAGE_SIZE]}],
    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "dims": [len(LABELS)]}],
    # No queue delay: one image takes tens of milliseconds on a CPU, so requests arriving while the
    # instance is busy already queue up and are batched together; waiting longer only adds latency.
    "dynamic_batching": {"max_queue_delay_us": 0, "preferred_batch_sizes": [4, 8]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "runtime_options": {"intra_op_threads": 0},
    "metadata": {
        "task": "multi-label classification",
        "modality": "CR",
        "architecture": "DenseNet-121",
        "labels": list(LABELS),
        "input_preprocessing": (
            "single-channel frontal chest radiograph resized to 224 x 224, intensities scaled to [0, 1]"
        ),
        "intended_use": (
            "Demonstration and load testing of the inference server only. NOT a clinical model: "
            "it must not be used for diagnosis or any patient care."
        ),
        "description": (
            "DenseNet-121 (growth 32, blocks 6/12/24/16, 1 input channel) with 14 sigmoid outputs "
            "named after the ChestX-ray14 findings. The weights are an UNTRAINED seeded random "
            f"initialisation (torch.manual_seed({SEED})); its probabilities carry no clinical "
            "meaning."
        ),
        "research_use_only": True,
    },
}


def export_chest_xray_classifier(path: Path, *, seed: int = SEED, exporter: Exporter = "auto") -> None:
    """Build the seeded DenseNet-121 and write it to ``path`` as ONNX with a dynamic batch dim.

    ``exporter="auto"`` uses the TorchScript exporter and falls back to the torch.export-based one
    where the former is gone. The written file is checked with ``onnx.checker`` and run in
    onnxruntime against the torch outputs (``atol=1e-4``); a mismatch raises ``RuntimeError``.
    """
    import torch

    from medserve.examples.densenet import densenet121

    torch.manual_seed(seed)
    model = densenet121(in_channels=1, num_classes=len(LABELS)).eval()
    example = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    if exporter == "dynamo":
        _export_dynamo(model, example, path)
    elif exporter == "torchscript":
        _export_torchscript(model, example, path)
    else:
        try:
            _export_torchscript(model, example, path)
        except (ImportError, AttributeError, TypeError, NotImplementedError) as error:
            _log.info("TorchScript ONNX exporter unavailable (%s); using the dynamo exporter", error)
            _export_dynamo(model, example, path)
    _verify(model, path, seed)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=max(OPSET, 18),
        external_data=False,
    )
    if program is None:
        raise RuntimeError("the dynamo ONNX exporter returned no program")
    program.save(str(path), external_data=False)


def _verify(model: torch.nn.Module, path: Path, seed: int) -> None:
    """Compare onnxruntime with torch on a batch of 3 (not the export batch, which also proves the
    batch dimension is dynamic)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(3, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator).numpy()
    verify_export(model, path, images, INPUT_NAME, OUTPUT_NAME, ATOL)


CHEST_XRAY_CLASSIFIER = ExampleModel(
    name=NAME,
    config=CONFIG,
    write=lambda _version, path: export_chest_xray_classifier(path),
)
