"""``chest_xray_classifier``: a DenseNet-121 over the 14 ChestX-ray14 findings, trained on SYNTHETIC
radiographs when the example is built, as ONNX.

The network (about 7 M parameters, 2.9 GFLOPs per 224 x 224 image) is trained, seeded, on images
from ``medserve.demo.dicom_studies.chest_radiograph`` drawn on the fly, where five findings
carry a signal (``TRAINED_LABELS``: Cardiomegaly, Effusion, Mass, Nodule, Pneumothorax) and the other
nine are always absent, so their probabilities stay near 0 and mean nothing. Training runs for
``$MEDSERVE_EXAMPLES_TRAINING_S`` seconds (default ``DEFAULT_TRAINING_S``) or the step caps, whichever
ends first: ``LOW_RES_FRACTION`` of it on 112 x 112 images (4 times cheaper a step), the rest on
224 x 224 images, Adam with a cosine decay over the budget. The exported graph is checked against
torch, and its per-finding AUC is measured with onnxruntime on held-out images drawn with another
seed. When training got at least ``FLOOR_MIN_STEPS`` steps at 112 x 112 (a default budget on an
ordinary machine does) the build fails when the mean AUC of the trained findings is below
``MIN_MEAN_AUC``; shorter training (the small budgets of tests, a very busy machine) skips that floor
and only logs the figures.

A demonstration of the server only: it has never seen a real radiograph and is not a clinical model.
torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from medserve.demo.dicom_studies import XRAY_FINDINGS, chest_radiograph
from medserve.demo.models._export_check import export_batched, verify_export
from medserve.demo.models._spec import OPSET, ExampleModel

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

BUDGET_ENV = "MEDSERVE_EXAMPLES_TRAINING_S"
"""Seconds of training per trained example model; unset: each model's own default."""


def training_budget_s(default_s: float) -> float:
    """The training budget in seconds: ``$MEDSERVE_EXAMPLES_TRAINING_S`` when set, else ``default_s``.

    Raises ``ValueError`` when the variable is not a positive number.
    """
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return default_s
    try:
        budget = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={raw!r} is not a number of seconds") from None
    if not budget > 0 or math.isinf(budget):
        raise ValueError(f"{BUDGET_ENV}={raw!r} must be a positive, finite number of seconds")
    return budget


class ThreadChooser:
    """Keeps torch on whichever is faster now: one thread, or torch's default (one per core).

    Where the cores are shared with other processes, torch's default can be tens of times slower
    than one thread (its threads wait on each other while another process holds a core), and the
    load changes while a model trains. So every ``recheck_s`` seconds, and after a step three times
    slower than the recent ones, a small 3D convolution benchmark is timed with both counts; the
    default is kept only when it is clearly (20 %) faster. ``close`` restores torch's count.
    """

    def __init__(self, recheck_s: float = 10.0) -> None:
        import torch
        from torch import nn

        self._torch = torch
        self.default = torch.get_num_threads()
        self.threads = self.default
        self.recheck_s = recheck_s
        self._next = 0.0
        self._recent: float | None = None
        with torch.random.fork_rng(devices=[]):  # leave the caller's seeded generator alone
            torch.manual_seed(0)
            self._probe = nn.Sequential(
                nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1)
            )
            self._input = torch.rand(2, 1, 16, 16, 16)

    def before_step(self) -> None:
        if self.default > 1 and time.perf_counter() >= self._next:
            timings = {count: self._time(count) for count in (1, self.default)}
            chosen = self.default if timings[self.default] < 0.8 * timings[1] else 1
            if chosen != self.threads:
                _log.info("training with %d thread(s) (probe: %s s)", chosen, timings)
                self._recent = None
            self.threads = chosen
            self._torch.set_num_threads(chosen)
            self._next = time.perf_counter() + self.recheck_s

    def after_step(self, seconds: float) -> None:
        if self._recent is not None and seconds > 3.0 * self._recent:
            self._next = 0.0
        self._recent = seconds if self._recent is None else 0.8 * self._recent + 0.2 * seconds

    def close(self) -> None:
        self._torch.set_num_threads(self.default)

    def _time(self, threads: int) -> float:
        self._torch.set_num_threads(threads)
        self._probe(self._input).sum().backward()
        started = time.perf_counter()
        for _ in range(3):
            self._probe(self._input).sum().backward()
        return round(time.perf_counter() - started, 4)


def record_build_metadata(model_path: Path, example: ExampleModel, updates: dict[str, Any]) -> None:
    """Merge ``updates`` (figures measured by this build) into ``metadata`` of the ``config.yaml``
    beside the version folder of ``model_path``, when the build writes one (a repository build
    writes the config first, from ``example.config``, then each version's model)."""
    config_path = model_path.parent.parent / "config.yaml"
    if not config_path.is_file():
        return
    from medserve.demo.models.repository import write_config

    config = dict(example.config)
    config["metadata"] = {**dict(example.config.get("metadata", {})), **updates}
    write_config(config_path, replace(example, config=config))


TRAINED_LABELS: tuple[str, ...] = XRAY_FINDINGS
"""The findings the synthetic radiographs show; every other label is always absent in training."""

DEFAULT_TRAINING_S = 180.0
LOW_RES = 112
LOW_RES_FRACTION = 0.75
MAX_LOW_RES_STEPS = 600
MAX_FULL_RES_STEPS = 60
"""Step caps: a machine fast enough to reach them trains the same model every time."""
BATCH_SIZE = 8
LEARNING_RATE = 2e-3
PREVALENCE = 0.5
"""Chance of each trained finding in a training image (independently)."""

HELD_OUT_SEED = 7877
HELD_OUT_IMAGES = 200
HELD_OUT_PREVALENCE = 0.3
FLOOR_MIN_STEPS = 100
MIN_MEAN_AUC = 0.7
"""After at least ``FLOOR_MIN_STEPS`` low-resolution steps, the build fails below this mean held-out AUC."""
MEASURED_HELD_OUT_AUC: dict[str, float] = {
    "Cardiomegaly": 0.993,
    "Effusion": 0.996,
    "Mass": 0.726,
    "Nodule": 0.729,
    "Pneumothorax": 0.903,
}
"""What a default build measured (180 s: 222 steps at 112 px, 32 at 224 px; torch 2.13 CPU, 2 shared
cores); each build records its own figures in its config."""

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
            f"probability {PREVALENCE}; {int(LOW_RES_FRACTION * 100)}% of the budget at {LOW_RES} x "
            f"{LOW_RES} (at most {MAX_LOW_RES_STEPS} steps), then 224 x 224 (at most "
            f"{MAX_FULL_RES_STEPS} steps); batch {BATCH_SIZE}, AdamW lr {LEARNING_RATE} with cosine "
            "decay, binary cross-entropy over all 14 outputs; $MEDSERVE_EXAMPLES_TRAINING_S seconds "
            f"(default {DEFAULT_TRAINING_S:.0f})"
        ),
        "held_out_auc": dict(MEASURED_HELD_OUT_AUC),
        "held_out": {
            "seed": HELD_OUT_SEED,
            "images": HELD_OUT_IMAGES,
            "prevalence": HELD_OUT_PREVALENCE,
            "data": "synthetic, same generator, unseen seed; onnxruntime",
            "floor": f"mean AUC of the trained labels >= {MIN_MEAN_AUC} once training got at least "
            f"{FLOOR_MIN_STEPS} steps at {LOW_RES} px; not enforced after shorter training",
        },
        "research_use": True,
        "research_use_only": True,
    },
}


@dataclass(frozen=True)
class BuildReport:
    """What one build measured."""

    held_out_auc: dict[str, float]
    mean_auc: float
    low_res_steps: int
    full_res_steps: int
    training_seconds: float
    budget_seconds: float
    floor_enforced: bool


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


def train(seed: int = SEED, *, budget_s: float | None = None) -> tuple[torch.nn.Module, int, int, float]:
    """Train the DenseNet on synthetic radiographs; returns ``(model in eval mode, low-resolution
    steps, full-resolution steps, seconds)``. Each phase takes at least one step."""
    import torch
    from torch import nn

    from medserve.demo.models.densenet import densenet121

    budget = training_budget_s(DEFAULT_TRAINING_S) if budget_s is None else budget_s
    torch.manual_seed(seed)
    model = densenet121(in_channels=1, num_classes=len(LABELS))
    features = cast("nn.Module", model.features)
    classifier = cast("nn.Module", model.classifier)
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    loss_function = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    steps = {LOW_RES: 0, IMAGE_SIZE: 0}
    threads = ThreadChooser()
    clock = time.perf_counter()

    def step(size: int, progress: float) -> float:
        for group in optimiser.param_groups:
            group["lr"] = LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
        images, targets = sample_batch(rng, BATCH_SIZE, size)
        optimiser.zero_grad()
        pooled = nn.functional.adaptive_avg_pool2d(features(torch.from_numpy(images)), 1)
        loss = loss_function(classifier(torch.flatten(pooled, 1)), torch.from_numpy(targets))
        loss.backward()
        optimiser.step()
        return float(loss.item())

    model.train()
    try:
        for size, end_fraction, cap in (
            (LOW_RES, LOW_RES_FRACTION, MAX_LOW_RES_STEPS),
            (IMAGE_SIZE, 1.0, MAX_FULL_RES_STEPS),
        ):
            total = 0.0
            while steps[size] < cap:
                elapsed = time.perf_counter() - clock
                if steps[size] and elapsed >= end_fraction * budget:
                    break
                by_steps = (
                    LOW_RES_FRACTION * steps[LOW_RES] / MAX_LOW_RES_STEPS
                    + (1 - LOW_RES_FRACTION) * steps[IMAGE_SIZE] / MAX_FULL_RES_STEPS
                )
                threads.before_step()
                started = time.perf_counter()
                loss = step(size, min(1.0, max(elapsed / budget, by_steps)))
                threads.after_step(time.perf_counter() - started)
                steps[size] += 1
                total += loss
                if steps[size] % 20 == 0:
                    _log.info("%s %d px step %d (%.0f s): loss %.4f", NAME, size, steps[size], elapsed, loss)
            mean = total / max(steps[size], 1)
            _log.info("%s: %d steps at %d px, mean loss %.4f", NAME, steps[size], size, mean)
    finally:
        threads.close()
    seconds = time.perf_counter() - clock
    _log.info("%s trained in %.1f s (budget %.0f s)", NAME, seconds, budget)
    return model.eval(), steps[LOW_RES], steps[IMAGE_SIZE], seconds


def export_chest_xray_classifier(
    path: Path, *, seed: int = SEED, exporter: Exporter = "auto", budget_s: float | None = None
) -> BuildReport:
    """Train the DenseNet-121 (see ``train``), write it to ``path`` as ONNX with a dynamic batch dim
    and measure its held-out AUC per trained finding with onnxruntime.

    ``exporter="auto"`` uses the TorchScript exporter and falls back to the torch.export-based one
    where the former is gone. The written file is checked with ``onnx.checker`` and run in
    onnxruntime against the torch outputs (``atol=1e-4``); a mismatch raises ``RuntimeError``, and
    so does a mean AUC below ``MIN_MEAN_AUC`` after at least ``FLOOR_MIN_STEPS`` low-resolution steps.
    """
    import torch

    budget = training_budget_s(DEFAULT_TRAINING_S) if budget_s is None else budget_s
    model, low_steps, full_steps, seconds = train(seed, budget_s=budget)
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
    auc = held_out_auc(path)
    mean = float(np.mean(list(auc.values())))
    enforced = low_steps >= FLOOR_MIN_STEPS
    report = BuildReport(
        held_out_auc=auc,
        mean_auc=round(mean, 4),
        low_res_steps=low_steps,
        full_res_steps=full_steps,
        training_seconds=round(seconds, 1),
        budget_seconds=budget,
        floor_enforced=enforced,
    )
    _log.info("%s held-out AUC %s, mean %.3f (%s)", NAME, auc, mean, report)
    if enforced and mean < MIN_MEAN_AUC:
        raise RuntimeError(f"{path}: mean held-out AUC {mean:.3f} is below {MIN_MEAN_AUC} ({auc})")
    return report


def held_out_auc(
    path: Path, *, seed: int = HELD_OUT_SEED, images: int = HELD_OUT_IMAGES, batch_size: int = 8
) -> dict[str, float]:
    """AUC of the ONNX model at ``path`` for each trained finding, on fresh synthetic radiographs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
    report = export_chest_xray_classifier(path)
    record_build_metadata(
        path,
        CHEST_XRAY_CLASSIFIER,
        {
            "held_out_auc": report.held_out_auc,
            "training": {
                "steps_112px": report.low_res_steps,
                "steps_224px": report.full_res_steps,
                "seconds": report.training_seconds,
                "budget_seconds": report.budget_seconds,
                "auc_floor_enforced": report.floor_enforced,
                "seed": SEED,
            },
        },
    )


CHEST_XRAY_CLASSIFIER = ExampleModel(name=NAME, config=CONFIG, write=_write)
