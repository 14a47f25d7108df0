"""``ct_lesion_segmentation``: a small 3D MONAI UNet that segments hyperdense lesions in CT patches.

Trained, seeded, when the example is built, on patches of synthetic CT phantoms
(``medserve.demo.dicom_studies.ct_phantom_case``: body, lungs, liver, contrast-filled aorta,
spine and ribs, with 1-5 spherical lesions 80-150 HU above the tissue around them), for a fixed
number of steps per profile (``STEPS``) on one torch thread, so every build of a profile trains the
same model. It is then exported to ONNX with a fixed ``PATCH``^3 patch and a dynamic
batch axis, checked against torch, and scored with onnxruntime by sliding-window inference over
held-out phantoms drawn with another seed; the build fails when the held-out DICE or lesion
sensitivity misses its profile's floor (``FLOORS``).

What the model expects (also in the config's ``metadata.preprocessing``, under the keys the
``segmentation_3d`` imaging pipeline reads): HU clipped to ``WINDOW_HU`` and scaled to [0, 1]
(``preprocess``), then resampled to ``SPACING_MM`` mm isotropic, cut into ``PATCH``^3 patches (one
batch item each, ``[N, 1, 48, 48, 48]``, axes (slice, row, column)); the output is
``[N, 2, 48, 48, 48]`` softmax probabilities of background and lesion. ``segment`` runs that whole
path (the pipeline's own functions) on a volume. Training phantoms are drawn at random scanner
spacings and resampled the same way, so the model sees what the pipeline feeds it.

A demonstration of 3D segmentation serving only: it has never seen a real CT. torch and monai are
imported only when the model is built.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.demo.dicom_studies import CT_SPACING, Phantom, ct_phantom_case
from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import Profile, current_profile
from medserve.demo.models._progress import BuildClock, TrainingProgress, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import torch_threads

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "ct_lesion_segmentation"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
LABELS: tuple[str, ...] = ("background", "lesion")
PATCH = 48
"""Edge of the cubic patch the exported graph takes (voxels)."""
SPACING_MM = 2.0
WINDOW_HU: tuple[float, float] = (-200.0, 300.0)
OVERLAP = 0.25
"""Sliding-window overlap between neighbouring patches (fraction of a patch)."""
ATOL = 1e-4

CHANNELS: tuple[int, ...] = (8, 16, 32, 64)
STRIDES: tuple[int, ...] = (2, 2, 2)
SEED = 20240701
"""Seeds the weights, the training phantoms and the patch sampling."""
STEPS: dict[Profile, int] = {"default": 3000, "test": 1800}
TRAIN_PATCH = 32
"""Training uses smaller patches than the exported graph (the UNet is fully convolutional and uses
batch norm, so it runs unchanged on ``PATCH``^3): about 3 times the steps per second."""
BATCH_SIZE = 8
LEARNING_RATE = 1e-2
LESION_PATCH_FRACTION = 0.6
TRAIN_CASES = 16
FIELD_MM: tuple[float, float, float] = (100.0, 320.0, 320.0)
"""Extent (z, y, x) of the training and held-out phantoms: the whole body section, like the studies
``synthetic.write_study("CT")`` writes."""
TRAIN_LESIONS: tuple[int, int] = (1, 5)

HELD_OUT_SEED = 104729
HELD_OUT_CASES = 4
HELD_OUT_LESIONS: tuple[int, int] = (1, 4)
FLOORS: dict[Profile, tuple[Floor, ...]] = {
    "default": (Floor("DICE", 0.75), Floor("lesion sensitivity", 0.9)),
    "test": (Floor("DICE", 0.7), Floor("lesion sensitivity", 0.9)),
}
"""The build fails when the exported model's held-out DICE (all held-out voxels together) or its
lesion sensitivity (share of the 10 held-out lesions with a voxel found) misses its profile's floor."""
MEASURED_HELD_OUT_DICE = 0.852
"""What a default build measured (replaced in each build's config by the figures it measured)."""

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 8,
    "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "dims": [1, PATCH, PATCH, PATCH]}],
    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "dims": [len(LABELS), PATCH, PATCH, PATCH]}],
    # A pipeline sends the patches of one volume at once; a short wait lets them share batches.
    "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4, 8]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "runtime_options": {"intra_op_threads": 0},
    "metadata": {
        "task": "3D semantic segmentation (lesions)",
        "modality": "CT",
        "architecture": (
            f"MONAI UNet (3D, channels {list(CHANNELS)}, strides {list(STRIDES)}, batch norm, "
            "no residual units) with a softmax over 2 classes"
        ),
        "labels": list(LABELS),
        # The keys medserve.imaging's segmentation_3d pipeline reads: window, spacing_mm, patch_size,
        # overlap; the rest describe the same for people.
        "preprocessing": {
            "window": list(WINDOW_HU),
            "spacing_mm": [SPACING_MM, SPACING_MM, SPACING_MM],
            "patch_size": [PATCH, PATCH, PATCH],
            "overlap": OVERLAP,
            "scaling": "(clip(HU, -200, 300) + 200) / 500, i.e. [0, 1]",
            "axes": "(slice, row, column) = (z, y, x); one patch per batch item, [N, 1, 48, 48, 48]",
            "padding": "edge",
            "output": "softmax probabilities [N, 2, 48, 48, 48]; lesion where channel 1 > channel 0",
        },
        "input_preprocessing": (
            f"CT HU clipped to [-200, 300] and scaled to [0, 1], resampled to {SPACING_MM} mm isotropic, "
            f"{PATCH}^3 patches"
        ),
        "training_data": (
            f"{TRAIN_CASES} synthetic CT phantoms ({FIELD_MM[0]:.0f} x {FIELD_MM[1]:.0f} x "
            f"{FIELD_MM[2]:.0f} mm) from medserve.demo.dicom_studies.ct_phantom_case (seed {SEED}) "
            "at random scanner spacings (slices 1.5-3.5 mm, pixels 1.5-3 mm; a third at 2.5 mm) and "
            f"noise (12-28 HU), windowed and resampled to {SPACING_MM} mm like the pipeline's input; "
            f"{TRAIN_LESIONS[0]}-{TRAIN_LESIONS[1]} spherical lesions each (radius 5-10 mm, +80-150 HU); "
            f"{TRAIN_PATCH}^3 patches, {int(LESION_PATCH_FRACTION * 100)}% centred near a lesion; "
            f"DiceCE loss, Adam lr {LEARNING_RATE} with cosine decay, batch {BATCH_SIZE}, "
            f"{STEPS['default']} steps (test profile: {STEPS['test']}), one torch thread"
        ),
        "dice_held_out": MEASURED_HELD_OUT_DICE,
        "held_out": {
            "seed": HELD_OUT_SEED,
            "cases": HELD_OUT_CASES,
            "data": f"synthetic, same generator, unseen seed; sliding window (overlap {OVERLAP}) in ORT",
        },
        "intended_use": (
            "Demonstration of 3D segmentation serving (DICOM in, DICOM SEG out) only. Trained on "
            "SYNTHETIC phantoms; NOT a clinical model: it must not be used for diagnosis or any "
            "patient care."
        ),
        "research_use": True,
        "research_use_only": True,
    },
}


@dataclass(frozen=True)
class BuildReport:
    """What one build did and measured."""

    profile: Profile
    steps: int
    training_seconds: float
    final_loss: float
    dice_held_out: float
    lesion_sensitivity: float

    def figures(self) -> dict[str, float]:
        return {"DICE": self.dice_held_out, "lesion sensitivity": self.lesion_sensitivity}


def preprocess(hu: np.ndarray) -> np.ndarray:
    """HU to the model's intensity scale: clipped to ``WINDOW_HU`` and mapped to [0, 1] (float32).
    Applied before resampling to ``SPACING_MM``, as the imaging pipeline does."""
    from medserve.clinical.dicom import preprocessing as prep  # scipy: only when used

    return prep.window(hu, *WINDOW_HU)


def segment(hu: np.ndarray, spacing: Sequence[float], run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Lesion mask (uint8, shape of ``hu``) of a CT volume ``(z, y, x)`` in HU at ``spacing`` mm, the
    way ``medserve.imaging``'s ``segmentation_3d`` pipeline computes it: window, resample to
    ``SPACING_MM`` (linear), pad by repeating the edge voxels, ``PATCH``^3 sliding windows
    (``OVERLAP``, gaussian-weighted), argmax, nearest-neighbour back to the original grid. ``run``
    maps patches ``[N, 1, 48, 48, 48]`` to probabilities ``[N, 2, 48, 48, 48]`` (an onnxruntime
    session, a served model)."""
    from medserve.clinical.dicom import preprocessing as prep

    image, _ = prep.resample(preprocess(hu), spacing, (SPACING_MM,) * 3)
    patch = (PATCH, PATCH, PATCH)
    padded, crop = prep.pad_to(image, patch, mode="edge")
    windows = prep.sliding_window_patches(padded.shape, patch, OVERLAP)
    accumulator = prep.PatchAccumulator((len(LABELS), *padded.shape), patch)
    for first in range(0, len(windows), 8):
        chunk = windows[first : first + 8]
        outputs = np.asarray(run(np.stack([padded[window] for window in chunk])[:, None]))
        for window, output in zip(chunk, outputs):
            accumulator.add(window, output)
    labels = np.argmax(accumulator.result(), axis=0).astype(np.uint8)[crop]
    return prep.resample_label_map_back(labels, hu.shape)


@dataclass(frozen=True)
class _Case:
    """A phantom at its own (scanner) spacing and what the model sees of it at ``SPACING_MM``."""

    phantom: Phantom
    image: np.ndarray
    mask: np.ndarray
    lesion_voxels: np.ndarray
    body_voxels: np.ndarray


def _case(rng: np.random.Generator, lesions: tuple[int, int]) -> _Case:
    """A phantom at a random scanner spacing (a third at the studies' default 2.5 mm) and noise,
    windowed and resampled to ``SPACING_MM`` like the pipeline's input; the mask resampled nearest."""
    from medserve.clinical.dicom import preprocessing as prep

    if rng.random() < 1 / 3:
        spacing = CT_SPACING
    else:
        in_plane = float(rng.uniform(1.5, 3.0))
        spacing = (float(rng.uniform(1.5, 3.5)), in_plane, in_plane)
    shape = (
        round(FIELD_MM[0] / spacing[0]),
        round(FIELD_MM[1] / spacing[1]),
        round(FIELD_MM[2] / spacing[2]),
    )
    phantom = ct_phantom_case(shape, spacing, rng, lesions, noise_hu=float(rng.uniform(12.0, 28.0)))
    target = (SPACING_MM,) * 3
    image, _ = prep.resample(preprocess(phantom.array), spacing, target)
    mask, _ = prep.resample(phantom.mask, spacing, target, order=0)
    body = np.argwhere(image[::4, ::4, ::4] > 0.3) * 4  # soft tissue and denser, on a coarse grid
    return _Case(phantom, image, mask, np.argwhere(mask > 0), body)


def _cases(seed: int, count: int, lesions: tuple[int, int]) -> list[_Case]:
    rng = np.random.default_rng(seed)
    return [_case(rng, lesions) for _ in range(count)]


def _network() -> torch.nn.Module:
    from monai.networks.nets.unet import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(LABELS),
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=0,
        norm="batch",
    )


def _sample(cases: Sequence[_Case], rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One training patch: around a lesion voxel (``LESION_PATCH_FRACTION``) or elsewhere in the body."""
    case = cases[int(rng.integers(len(cases)))]
    shape = np.asarray(case.image.shape)
    if len(case.lesion_voxels) and rng.random() < LESION_PATCH_FRACTION:
        centre = case.lesion_voxels[int(rng.integers(len(case.lesion_voxels)))] + rng.uniform(
            -size / 3, size / 3, size=3
        )
    elif len(case.body_voxels):  # inside the body: the tissue, bone and vessels a lesion is told from
        centre = case.body_voxels[int(rng.integers(len(case.body_voxels)))] + rng.uniform(-2, 2, size=3)
    else:
        centre = rng.uniform(size / 2, np.maximum(shape - size / 2, size / 2))
    low = np.clip(np.round(centre - size / 2).astype(int), 0, np.maximum(shape - size, 0))
    box = tuple(slice(int(a), int(a) + size) for a in low)
    image, mask = case.image[box], case.mask[box]
    if image.shape != (size, size, size):  # a volume thinner than the patch: pad with air
        pad = [(0, size - n) for n in image.shape]
        image, mask = np.pad(image, pad), np.pad(mask, pad)
    return image, mask


def train(seed: int = SEED, steps: int | None = None) -> tuple[torch.nn.Module, float, float]:
    """Train the UNet on synthetic patches for ``steps`` (the current profile's when None), seeded,
    on one torch thread; returns ``(model in eval mode with the softmax, last loss, seconds)``."""
    import torch
    from monai.losses.dice import DiceCELoss
    from torch import nn

    total = STEPS[current_profile()] if steps is None else steps
    started = time.perf_counter()
    announce(NAME, f"drawing {TRAIN_CASES} training phantoms")
    cases = _cases(seed, TRAIN_CASES, TRAIN_LESIONS)
    _log.debug(
        "%s: %d training phantoms (%d lesions) in %.1f s",
        NAME,
        len(cases),
        sum(len(case.phantom.lesions) for case in cases),
        time.perf_counter() - started,
    )
    torch.manual_seed(seed)
    network = _network()
    optimiser = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(seed + 1)
    network.train()
    loss_value = float("nan")
    announce(NAME, f"training {total} steps")
    progress = TrainingProgress(NAME, total)
    with torch_threads():
        for step in range(total):
            for group in optimiser.param_groups:
                group["lr"] = LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / total)))
            patches, masks = zip(*(_sample(cases, rng, TRAIN_PATCH) for _ in range(BATCH_SIZE)))
            inputs = torch.from_numpy(np.stack(patches)[:, None])
            targets = torch.from_numpy(np.stack(masks)[:, None].astype(np.int64))
            optimiser.zero_grad()
            loss = loss_function(network(inputs), targets)
            loss.backward()
            optimiser.step()
            loss_value = float(loss.item())
            progress.advance(loss=loss_value)
    model = nn.Sequential(network, nn.Softmax(dim=1)).eval()
    return model, loss_value, progress.seconds


def export_ct_lesion_segmentation(
    path: Path, *, seed: int = SEED, profile: Profile | None = None
) -> BuildReport:
    """Train for ``profile``'s steps (the current profile when None), export to ``path`` as ONNX
    (``[N, 1, 48, 48, 48]`` -> ``[N, 2, 48, 48, 48]``, dynamic N), verify against torch
    (``atol=1e-4``) and score on held-out phantoms with onnxruntime.

    Raises ``RuntimeError`` on a mismatch, ``QualityFloorMissed`` when a held-out figure misses the
    profile's ``FLOORS``.
    """
    import torch

    chosen = current_profile() if profile is None else profile
    model, loss, seconds = train(seed, STEPS[chosen])
    example = torch.zeros(2, 1, PATCH, PATCH, PATCH)
    export_batched(model, example, path, INPUT_NAME, OUTPUT_NAME, OPSET)
    patches = np.random.default_rng(seed + 2).random((3, 1, PATCH, PATCH, PATCH), dtype=np.float32)
    verify_export(model, path, patches, INPUT_NAME, OUTPUT_NAME, ATOL)
    announce(NAME, f"segmenting {HELD_OUT_CASES} held-out phantoms")
    dice, sensitivity = held_out_dice(path)
    report = BuildReport(
        profile=chosen,
        steps=STEPS[chosen],
        training_seconds=seconds,
        final_loss=round(loss, 4),
        dice_held_out=round(dice, 4),
        lesion_sensitivity=round(sensitivity, 4),
    )
    check_floors(NAME, chosen, report.figures(), FLOORS[chosen])
    return report


def held_out_dice(
    path: Path, *, seed: int = HELD_OUT_SEED, cases: int = HELD_OUT_CASES
) -> tuple[float, float]:
    """``(DICE, lesion sensitivity)`` of the ONNX model at ``path`` on fresh phantoms, segmented as the
    imaging pipeline does (``segment``) and scored on each phantom's own grid: DICE over all their
    voxels together; sensitivity = share of lesions with at least one voxel found."""
    session = scoring_session(path)

    def run(patches: np.ndarray) -> np.ndarray:
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: patches})
        return np.asarray(probabilities)

    overlap = predicted = actual = found = total = 0
    for case in _cases(seed, cases, HELD_OUT_LESIONS):
        phantom = case.phantom
        prediction = segment(phantom.array, phantom.spacing, run) > 0
        truth = phantom.mask > 0
        overlap += int(np.count_nonzero(prediction & truth))
        predicted += int(np.count_nonzero(prediction))
        actual += int(np.count_nonzero(truth))
        for lesion in phantom.lesions:
            total += 1
            found += int(_hit(prediction, lesion.centre_voxel, lesion.radius_mm, phantom.spacing))
    dice = 2.0 * overlap / (predicted + actual) if predicted + actual else 1.0
    return dice, (found / total if total else 1.0)


def _hit(
    prediction: np.ndarray,
    centre: tuple[float, float, float],
    radius_mm: float,
    spacing: tuple[float, float, float],
) -> bool:
    reach = [radius_mm / s for s in spacing]
    low = [max(0, int(math.floor(c - r))) for c, r in zip(centre, reach)]
    high = [min(n, int(math.ceil(c + r)) + 1) for c, r, n in zip(centre, reach, prediction.shape)]
    grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij")
    inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing)) <= radius_mm**2
    box = tuple(slice(a, b) for a, b in zip(low, high))
    return bool(np.any(prediction[box] & inside))


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    report = export_ct_lesion_segmentation(path)
    figures = report.figures()
    record = BuildRecord(
        report.profile, SEED, report.steps, report.training_seconds, figures, FLOORS[report.profile]
    )
    updates = {
        "dice_held_out": report.dice_held_out,
        "lesion_sensitivity_held_out": report.lesion_sensitivity,
        "training": {"steps": report.steps, "final_dice_ce_loss": report.final_loss, "seed": SEED},
    }
    record_build(path, CT_LESION_SEGMENTATION, record, updates)
    report_built(NAME, figures, clock, report.profile)


CT_LESION_SEGMENTATION = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
