"""``ecg_rhythm_classifier``: a small 1D CNN over 10 s single-lead ECG windows, trained on synthetic data.

The network standardises each window itself (so raw millivolts can be sent), runs four
Conv1d-BatchNorm-ReLU-MaxPool blocks, averages over time and ends in a softmax over the five classes
of ``medserve.demo.ecg``. It is trained, seeded, for a fixed number of epochs on one torch thread on
synthetic windows when the example is built (well under a minute; the same in every profile), then
exported to ONNX and checked against torch and against a held-out synthetic set drawn with another
seed; the build fails below ``MIN_HELD_OUT_ACCURACY``.

A demonstration for streaming monitoring: it has never seen a real ECG and is not a clinical device.
torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.demo import ecg as ecg_synthetic
from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import current_profile
from medserve.demo.models._progress import BuildClock, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import Schedule, fit

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "ecg_rhythm_classifier"
INPUT_NAME = "ecg"
OUTPUT_NAME = "probabilities"
LABELS = ecg_synthetic.CLASSES
SAMPLES = ecg_synthetic.SAMPLE_RATE * ecg_synthetic.WINDOW_SECONDS
ATOL = 1e-4

SEED = 20240601
"""Seeds the weights, the batch order and the training data."""
TRAIN_PER_CLASS = 500
EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 3e-3

HELD_OUT_SEED = 7919
HELD_OUT_PER_CLASS = 100
MIN_HELD_OUT_ACCURACY = 0.95
"""The build fails when the exported model scores less than this on the held-out set (any profile)."""
FLOORS = (Floor("accuracy", MIN_HELD_OUT_ACCURACY),)
MEASURED_HELD_OUT_ACCURACY = 0.998
"""What a build measured on the held-out set (replaced in each build's config by its own figure)."""

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 32,
    "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "dims": [1, SAMPLES]}],
    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "dims": [len(LABELS)]}],
    # A window costs well under a millisecond, so monitoring streams gain from waiting a little for
    # company: batches of 8-32 windows run in about the time of one.
    "dynamic_batching": {"max_queue_delay_us": 5000, "preferred_batch_sizes": [8, 16, 32]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "runtime_options": {"intra_op_threads": 1},
    "metadata": {
        "task": "ECG rhythm classification",
        "modality": "ECG",
        "architecture": "1D CNN (4 x Conv1d-BatchNorm-ReLU-MaxPool, global average pool, linear, softmax)",
        "labels": list(LABELS),
        "sample_rate_hz": ecg_synthetic.SAMPLE_RATE,
        "window_seconds": ecg_synthetic.WINDOW_SECONDS,
        "input_preprocessing": (
            f"one lead, {ecg_synthetic.WINDOW_SECONDS} s at {ecg_synthetic.SAMPLE_RATE} Hz in millivolts, "
            "unfiltered; the model standardises each window itself"
        ),
        "training_data": (
            f"{TRAIN_PER_CLASS} synthetic windows per class from medserve.demo.ecg "
            f"(seed {SEED}): Gaussian P-QRS-T beats with per-window rate, heart-rate variability, "
            "amplitudes, baseline wander, EMG and mains noise; AF without P waves and with irregular "
            f"RR and f waves; artefact-only noise windows. {EPOCHS} epochs of AdamW."
        ),
        "held_out_accuracy": {
            "value": MEASURED_HELD_OUT_ACCURACY,
            "seed": HELD_OUT_SEED,
            "windows": HELD_OUT_PER_CLASS * len(LABELS),
            "data": "synthetic, same generator, unseen seed",
        },
        "intended_use": (
            "Demonstration of streaming ECG monitoring on the inference server only. Trained on "
            "SYNTHETIC ECG; NOT a clinical device: it must not be used for diagnosis, monitoring of "
            "patients or any patient care."
        ),
        "research_use_only": True,
    },
}


def _network() -> torch.nn.Sequential:
    import torch
    from torch import nn

    class _Standardise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=-1, keepdim=True)
            centred = x - mean
            std = torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
            return centred / std

    def block(inputs: int, outputs: int, kernel: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv1d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm1d(outputs),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
        ]

    return nn.Sequential(
        _Standardise(),
        *block(1, 16, 7, stride=2),  # 2500 -> 625
        *block(16, 32, 5),  # -> 312
        *block(32, 32, 5),  # -> 156
        *block(32, 64, 5),  # -> 78
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, len(LABELS)),
        nn.Softmax(dim=-1),
    )


def train(seed: int = SEED) -> tuple[torch.nn.Module, int, float]:
    """Train the network on synthetic windows; returns ``(model in eval mode with its softmax,
    steps, seconds)``."""
    import torch
    from torch import nn

    started = time.perf_counter()
    announce(NAME, f"drawing {TRAIN_PER_CLASS * len(LABELS)} training windows")
    x, y = ecg_synthetic.dataset(TRAIN_PER_CLASS, seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    model = _network()
    body = model[:-1]  # train on logits; the softmax stays in the exported graph
    schedule = Schedule(EPOCHS, BATCH_SIZE, LEARNING_RATE)
    announce(NAME, f"training {schedule.steps(len(targets))} steps ({EPOCHS} epochs)")
    steps = fit(NAME, model, body, nn.CrossEntropyLoss(), inputs, targets, schedule, seed)
    return model.eval(), steps, time.perf_counter() - started


def export_ecg_rhythm_classifier(path: Path, *, seed: int = SEED) -> BuildRecord:
    """Train, export to ``path`` as ONNX (dynamic batch dim), verify against torch (``atol=1e-4``) and
    measure the held-out accuracy with onnxruntime; raises ``RuntimeError`` on a mismatch and
    ``QualityFloorMissed`` for an accuracy below ``MIN_HELD_OUT_ACCURACY``."""
    import torch

    model, steps, seconds = train(seed)
    example = torch.zeros(2, 1, SAMPLES)
    export_batched(model, example, path, INPUT_NAME, OUTPUT_NAME, OPSET)
    _verify(model, path, seed)
    figures = {"accuracy": held_out_accuracy(path)}
    profile = current_profile()
    check_floors(NAME, profile, figures, FLOORS)
    return BuildRecord(profile, seed, steps, seconds, figures, FLOORS)


def held_out_accuracy(path: Path, *, seed: int = HELD_OUT_SEED, per_class: int = HELD_OUT_PER_CLASS) -> float:
    """Accuracy of the ONNX model at ``path`` in onnxruntime on fresh synthetic windows."""
    x, y = ecg_synthetic.dataset(per_class, seed)
    session = scoring_session(path)
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return float(np.mean(np.argmax(probabilities, axis=1) == y))


def _verify(model: torch.nn.Module, path: Path, seed: int) -> None:
    """Compare onnxruntime with torch on 3 windows (not the export batch of 2)."""
    rng = np.random.default_rng(seed + 1)
    windows = np.stack([ecg_synthetic.synthesize(label, rng) for label in LABELS[:3]])[:, None, :]
    verify_export(model, path, windows, INPUT_NAME, OUTPUT_NAME, ATOL)


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    record = export_ecg_rhythm_classifier(path)
    accuracy = {**CONFIG["metadata"]["held_out_accuracy"], "value": round(record.figures["accuracy"], 4)}
    record_build(path, ECG_RHYTHM_CLASSIFIER, record, {"held_out_accuracy": accuracy})
    report_built(NAME, record.figures, clock, record.profile)


ECG_RHYTHM_CLASSIFIER = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
