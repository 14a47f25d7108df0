"""``chest_xray_classifier``: a DenseNet-121 over the 14 ChestX-ray14 findings, trained on SYNTHETIC
radiographs when the example is built, as ONNX.

The network (about 7 M parameters, 2.9 GFLOPs per 224 x 224 image) is trained, seeded, on images
from ``medserve.demo.dicom_studies.chest_radiograph`` drawn on the fly, where five findings
carry a signal (``TRAINED_LABELS``: Cardiomegaly, Effusion, Mass, Nodule, Pneumothorax) and the other
nine are always absent, so their probabilities stay near 0 and mean nothing. Training runs a fixed
number of steps per profile (``STEPS``): first on 112 x 112 images (4 times cheaper a step), then on
224 x 224 images, AdamW with a cosine decay over the work, on one torch thread, so every build of a
profile trains the same model. The exported graph is checked against torch, and its per-finding AUC
is measured with onnxruntime on held-out images drawn with another seed; the build fails when a
figure misses its floor (``FLOORS``).

A demonstration of the server only: it has never seen a real radiograph and is not a clinical model.
torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from medserve.demo.dicom_studies import XRAY_FINDINGS, chest_radiograph
from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import Profile, current_profile, for_profile
from medserve.demo.models._progress import BuildClock, TrainingProgress, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import torch_threads

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


TRAINED_LABELS: tuple[str, ...] = XRAY_FINDINGS
"""The findings the synthetic radiographs show; every other label is always absent in training."""

LOW_RES = 112


@dataclass(frozen=True)
class Steps:
    """Optimiser steps at 112 x 112, then at 224 x 224."""

    low_res: int
    full_res: int

    @property
    def total(self) -> int:
        return self.low_res + self.full_res


STEPS: dict[Profile, Steps] = {"default": Steps(240, 24), "test": Steps(40, 4)}
FULL_RES_COST = 4.0
"""A 224 x 224 step counts as this many 112 x 112 steps in the learning-rate decay."""
FULL_RES_TIME = 2.6
"""A 224 x 224 step takes about this many times as long as a 112 x 112 one (measured; for the ETA)."""
BATCH_SIZE = 8
LEARNING_RATE = 2e-3
PREVALENCE = 0.5
"""Chance of each trained finding in a training image (independently)."""

HELD_OUT_SEED = 7877
HELD_OUT_IMAGES = 200
HELD_OUT_PREVALENCE = 0.3
FLOORS: dict[Profile, tuple[Floor, ...]] = {
    "default": (
        Floor("Cardiomegaly AUC", 0.9),
        Floor("Effusion AUC", 0.9),
        Floor("Mass AUC", 0.6),
        Floor("Nodule AUC", 0.6),
        Floor("Pneumothorax AUC", 0.8),
        Floor("mean AUC", 0.8),
    ),
    "test": (Floor("mean AUC", 0.6),),
}
"""The build fails when a held-out figure misses one of its profile's floors."""
MEASURED_HELD_OUT_AUC: dict[str, float] = {
    "Cardiomegaly": 0.985,
    "Effusion": 0.991,
    "Mass": 0.680,
    "Nodule": 0.769,
    "Pneumothorax": 0.922,
}
"""What a default build measured, mean 0.869 (each build records its own figures in its config)."""

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
        "trained_labels": list(TRAINED_LABELS),
        "preprocessing": {"image_size": IMAGE_SIZE, "intensity": "scaled to [0, 1], bright = dense"},
        "input_preprocessing": (
            "single-channel frontal chest radiograph resized to 224 x 224, intensities scaled to [0, 1] "
            "(bright = dense, i.e. MONOCHROME2 after any MONOCHROME1 inversion)"
        ),
        "intended_use": (
            "Demonstration and load testing of the inference server only. Trained on SYNTHETIC "
            "radiographs; NOT a clinical model: it must not be used for diagnosis or any patient care."
        ),
        "description": (
            "DenseNet-121 (growth 32, blocks 6/12/24/16, 1 input channel) with 14 sigmoid outputs "
            "named after the ChestX-ray14 findings, trained at build time on SYNTHETIC radiographs "
            "(medserve.demo.dicom_studies.chest_radiograph). Only "
            f"{', '.join(TRAINED_LABELS)} carry a signal (enlarged cardiac silhouette, basal fluid "
            "with a meniscus, large lobulated and small round opacities, a lucent rim without lung "
            "markings); the other 9 labels were always absent in training, so their probabilities "
            "are near 0 and carry no meaning."
        ),
        "training_data": (
            f"synthetic radiographs drawn on the fly (seed {SEED}), each trained finding present with "
            f"probability {PREVALENCE}; {STEPS['default'].low_res} steps at {LOW_RES} x {LOW_RES}, "
            f"then {STEPS['default'].full_res} at 224 x 224 (test profile: {STEPS['test'].low_res} and "
            f"{STEPS['test'].full_res}); batch {BATCH_SIZE}, AdamW lr {LEARNING_RATE} with cosine decay, "
            "binary cross-entropy over all 14 outputs, one torch thread"
        ),
        "held_out_auc": dict(MEASURED_HELD_OUT_AUC),
        "held_out": {
            "seed": HELD_OUT_SEED,
            "images": HELD_OUT_IMAGES,
            "prevalence": HELD_OUT_PREVALENCE,
            "data": "synthetic, same generator, unseen seed; onnxruntime",
        },
        "research_use": True,
        "research_use_only": True,
    },
}


@dataclass(frozen=True)
class BuildReport:
    """What one build did and measured."""

    profile: Profile
    steps: Steps
    training_seconds: float
    held_out_auc: dict[str, float]
    mean_auc: float

    def figures(self) -> dict[str, float]:
        return {
            **{f"{label} AUC": value for label, value in self.held_out_auc.items()},
            "mean AUC": self.mean_auc,
        }


def sample_batch(
    rng: np.random.Generator, count: int, size: int = IMAGE_SIZE, prevalence: float = PREVALENCE
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synthetic radiographs ``[count, 1, size, size]`` and their 14-label targets."""
    images = np.empty((count, 1, size, size), dtype=np.float32)
    targets = np.zeros((count, len(LABELS)), dtype=np.float32)
    for index in range(count):
        present = [label for label in TRAINED_LABELS if rng.random() < prevalence]
        images[index, 0] = chest_radiograph(size, rng, present)
        targets[index, [LABELS.index(label) for label in present]] = 1.0
    return images, targets


def train(seed: int = SEED, steps: Steps | None = None) -> tuple[torch.nn.Module, float]:
    """Train the DenseNet on synthetic radiographs for ``steps`` (the current profile's when None),
    seeded, on one torch thread; returns ``(model in eval mode, seconds)``."""
    import torch
    from torch import nn

    from medserve.demo.models.densenet import densenet121

    plan = for_profile(STEPS) if steps is None else steps
    torch.manual_seed(seed)
    model = densenet121(in_channels=1, num_classes=len(LABELS))
    features = cast("nn.Module", model.features)
    classifier = cast("nn.Module", model.classifier)
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    loss_function = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    progress = TrainingProgress(NAME, plan.total)
    progress.weigh(plan.low_res + FULL_RES_TIME * plan.full_res)
    work_total = plan.low_res + FULL_RES_COST * plan.full_res
    work = 0.0

    def step(size: int) -> float:
        share = work / work_total
        for group in optimiser.param_groups:
            group["lr"] = LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * share)))
        images, targets = sample_batch(rng, BATCH_SIZE, size)
        optimiser.zero_grad()
        pooled = nn.functional.adaptive_avg_pool2d(features(torch.from_numpy(images)), 1)
        loss = loss_function(classifier(torch.flatten(pooled, 1)), torch.from_numpy(targets))
        loss.backward()
        optimiser.step()
        return float(loss.item())

    announce(NAME, f"training {plan.low_res} steps at {LOW_RES} px, then {plan.full_res} at {IMAGE_SIZE} px")
    model.train()
    with torch_threads():
        phases = (
            (LOW_RES, plan.low_res, 1.0, 1.0),
            (IMAGE_SIZE, plan.full_res, FULL_RES_COST, FULL_RES_TIME),
        )
        for size, count, cost, time_cost in phases:
            total = 0.0
            for _ in range(count):
                loss = step(size)
                work += cost
                total += loss
                progress.advance(loss=loss, work=time_cost)
            _log.debug("%s: %d steps at %d px, mean loss %.4f", NAME, count, size, total / max(count, 1))
    return model.eval(), progress.seconds


def export_chest_xray_classifier(
    path: Path, *, seed: int = SEED, exporter: Exporter = "auto", profile: Profile | None = None
) -> BuildReport:
    """Train the DenseNet-121 (see ``train``) for ``profile``'s steps (the current profile when
    None), write it to ``path`` as ONNX with a dynamic batch dim and measure its held-out AUC per
    trained finding with onnxruntime.

    ``exporter="auto"`` uses the TorchScript exporter and falls back to the torch.export-based one
    where the former is gone. The written file is checked with ``onnx.checker`` and run in
    onnxruntime against the torch outputs (``atol=1e-4``); a mismatch raises ``RuntimeError``, a
    figure below the profile's ``FLOORS`` raises ``QualityFloorMissed``.
    """
    import torch

    chosen = current_profile() if profile is None else profile
    plan = STEPS[chosen]
    model, seconds = train(seed, plan)
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
    announce(NAME, f"scoring {HELD_OUT_IMAGES} held-out radiographs")
    auc = held_out_auc(path)
    report = BuildReport(
        profile=chosen,
        steps=plan,
        training_seconds=seconds,
        held_out_auc=auc,
        mean_auc=round(float(np.mean(list(auc.values()))), 4),
    )
    check_floors(NAME, chosen, report.figures(), FLOORS[chosen])
    return report


def held_out_auc(
    path: Path, *, seed: int = HELD_OUT_SEED, images: int = HELD_OUT_IMAGES, batch_size: int = 8
) -> dict[str, float]:
    """AUC of the ONNX model at ``path`` for each trained finding, on fresh synthetic radiographs."""
    session = scoring_session(path)
    rng = np.random.default_rng(seed)
    scores: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for start in range(0, images, batch_size):
        batch, targets = sample_batch(rng, min(batch_size, images - start), prevalence=HELD_OUT_PREVALENCE)
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        scores.append(np.asarray(probabilities))
        truths.append(targets)
    score, truth = np.concatenate(scores), np.concatenate(truths)
    return {
        label: round(auc(score[:, LABELS.index(label)], truth[:, LABELS.index(label)]), 4)
        for label in TRAINED_LABELS
    }


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); 0.5 when one class is missing."""
    positive, negative = scores[labels > 0.5], scores[labels <= 0.5]
    if positive.size == 0 or negative.size == 0:
        return 0.5
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    export_batched(model, example, path, INPUT_NAME, OUTPUT_NAME, OPSET)


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
    """Compare onnxruntime with torch on 3 synthetic radiographs (not the export batch of 2, which
    also proves the batch dimension is dynamic)."""
    images, _ = sample_batch(np.random.default_rng(seed + 1), 3)
    verify_export(model, path, images, INPUT_NAME, OUTPUT_NAME, ATOL)


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    report = export_chest_xray_classifier(path)
    record = BuildRecord(
        report.profile,
        SEED,
        report.steps.total,
        report.training_seconds,
        report.figures(),
        FLOORS[report.profile],
    )
    updates = {
        "held_out_auc": report.held_out_auc,
        "training": {"steps_112px": report.steps.low_res, "steps_224px": report.steps.full_res, "seed": SEED},
    }
    record_build(path, CHEST_XRAY_CLASSIFIER, record, updates)
    report_built(NAME, report.figures(), clock, report.profile)


CHEST_XRAY_CLASSIFIER = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
