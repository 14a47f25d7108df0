"""``solubility_predictor``: an MLP from a Morgan fingerprint to ESOL aqueous solubility (log S).

The training data are computed, not measured: compounds of the synthetic combinatorial library
(``medserve.demo.compound_library``) labelled with Delaney's ESOL equation on
RDKit descriptors (``medserve.clinical.chemistry.solubility``). The model has to learn from the
fingerprint alone what ESOL computes from logP, weight, rotatable bonds and aromaticity. Compounds
are split by Bemis-Murcko scaffold (a fifth of the scaffolds held out), so the held-out R² and RMSE
measure how it carries over to ring systems it has not seen; the build fails below the floors.

Input ``fingerprint``: UINT8 [2048], the radius-2 Morgan bit vector (0/1) of
``medserve.clinical.chemistry.fingerprints.MorganFingerprinter()``. Output ``log_s``: FP32 [1],
log10 of the ESOL-estimated solubility in mol/L (higher is more soluble).

A demonstration for virtual-screening jobs, trained on synthetic data for a fixed number of epochs on
one torch thread (seconds; the same in every profile):
it predicts an equation, not an experiment, and is not a tool for real compound decisions.
torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import current_profile
from medserve.demo.models._progress import BuildClock, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import Schedule, fit

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "solubility_predictor"
INPUT_NAME = "fingerprint"
OUTPUT_NAME = "log_s"
BITS = 2048
RADIUS = 2
ATOL = 1e-4

SEED = 20240611
"""Seeds the library order, the weights and the batch order."""
COMPOUNDS = 6000
"""Compounds drawn from the synthetic library (about 80% train, 20% held out)."""
HELD_OUT_BUCKETS = 5
"""A compound is held out when the CRC-32 of its Murcko scaffold SMILES is 0 modulo this."""
HIDDEN = (128, 32)
EPOCHS = 15
BATCH_SIZE = 256
LEARNING_RATE = 3e-3

MIN_HELD_OUT_R2 = 0.9
MAX_RMSE_FRACTION = 0.35
"""The build fails unless held-out RMSE is below this fraction of the mean predictor's."""
FLOORS = (Floor("R2", MIN_HELD_OUT_R2), Floor("RMSE / mean predictor RMSE", maximum=MAX_RMSE_FRACTION))
"""The held-out floors of every profile."""
MEASURED = {"r2": 0.974, "rmse": 0.202, "mean_predictor_rmse": 1.263, "held_out_compounds": 1178}
"""What a build measured on the held-out scaffolds (replaced in each build's config by its own figures)."""

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 4096,
    "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "dims": [BITS]}],
    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "dims": [1]}],
    # A compound costs about a microsecond: screening jobs gain from large batches.
    "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [1024, 4096]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "metadata": {
        "description": (
            "Demonstration model trained on synthetic data: predicts ESOL-estimated aqueous "
            "solubility (log10 mol/L) from a 2048-bit radius-2 Morgan fingerprint."
        ),
        "task": "compound property regression (virtual screening)",
        "architecture": f"MLP {BITS}-{HIDDEN[0]}-{HIDDEN[1]}-1, ReLU; output de-standardised in the graph",
        "input_preprocessing": (
            f"RDKit Morgan bit fingerprint, radius {RADIUS}, {BITS} bits, no chirality "
            "(rdFingerprintGenerator), as uint8 0/1"
        ),
        "output": "log_s: ESOL log10 solubility in mol/L; higher is more soluble",
        "training_data": (
            f"{COMPOUNDS} compounds of the synthetic combinatorial library (seed {SEED}) labelled with "
            "Delaney's ESOL equation on RDKit Crippen logP, weight, rotatable bonds and aromatic "
            f"proportion; {EPOCHS} epochs of AdamW on the compounds of held-in scaffolds."
        ),
        "held_out": {**MEASURED, "split": "Bemis-Murcko scaffold, 1 in 5 scaffolds held out"},
        "intended_use": (
            "Demonstration of virtual-screening jobs on the inference server only. It reproduces a "
            "computed estimate on synthetic molecules; it is not a measured-solubility model and must "
            "not guide real compound or patient decisions."
        ),
        "research_use": True,
    },
}


@dataclass(frozen=True)
class Dataset:
    """Fingerprints, ESOL targets and the held-out mask of the training library."""

    fingerprints: np.ndarray
    log_s: np.ndarray
    held_out: np.ndarray


def dataset(count: int = COMPOUNDS, seed: int = SEED) -> Dataset:
    """The first ``count`` compounds of the synthetic library for ``seed``, featurised and labelled."""
    from rdkit import Chem

    from medserve.clinical.chemistry.fingerprints import MorganFingerprinter
    from medserve.clinical.chemistry.solubility import esol_log_solubility
    from medserve.demo.compound_library import synthetic_library

    molecules = [Chem.MolFromSmiles(compound.smiles) for compound in synthetic_library(count, seed=seed)]
    scaffolds = [Chem.MolToSmiles(Chem.MurckoDecompose(molecule)) for molecule in molecules]
    return Dataset(
        fingerprints=MorganFingerprinter(RADIUS, BITS)(molecules),
        log_s=np.array([esol_log_solubility(molecule) for molecule in molecules], dtype=np.float32),
        held_out=np.array([zlib.crc32(s.encode()) % HELD_OUT_BUCKETS == 0 for s in scaffolds]),
    )


def _network(mean: float, std: float) -> torch.nn.Sequential:
    import torch
    from torch import nn

    class _Destandardise(nn.Module):
        scale: torch.Tensor
        shift: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.tensor([std], dtype=torch.float32))
            self.register_buffer("shift", torch.tensor([mean], dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale + self.shift

    class _ToFloat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(torch.float32)

    return nn.Sequential(
        _ToFloat(),  # bits arrive as uint8 0/1
        nn.Linear(BITS, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], 1),
        _Destandardise(),
    )


def train(data: Dataset, seed: int = SEED) -> tuple[torch.nn.Module, int]:
    """Train on the held-in compounds on one torch thread; returns ``(network in eval mode with its
    de-standardisation, steps)``."""
    import torch
    from torch import nn

    inputs = torch.from_numpy(data.fingerprints[~data.held_out])
    targets = torch.from_numpy(data.log_s[~data.held_out])
    mean, std = float(targets.mean()), float(targets.std())
    standardised = (targets - mean) / std
    torch.manual_seed(seed)
    model = _network(mean, std)
    body = model[:-1]  # trained on standardised targets
    schedule = Schedule(EPOCHS, BATCH_SIZE, LEARNING_RATE)

    def loss(predicted: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(predicted.squeeze(1), expected)

    announce(NAME, f"training {schedule.steps(len(targets))} steps ({EPOCHS} epochs)")
    steps = fit(NAME, model, body, loss, inputs, standardised, schedule, seed)
    return model.eval(), steps


def held_out_metrics(path: Path, data: Dataset) -> dict[str, float]:
    """R², RMSE and the mean predictor's RMSE of the ONNX model at ``path`` (onnxruntime) on the
    held-out compounds; the mean predictor predicts the training mean."""
    session = scoring_session(path)
    (predicted,) = session.run([OUTPUT_NAME], {INPUT_NAME: data.fingerprints[data.held_out]})
    truth = data.log_s[data.held_out].astype(np.float64)
    errors = predicted[:, 0].astype(np.float64) - truth
    baseline = truth - float(np.mean(data.log_s[~data.held_out]))
    return {
        "r2": float(1.0 - np.sum(errors**2) / np.sum((truth - truth.mean()) ** 2)),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mean_predictor_rmse": float(np.sqrt(np.mean(baseline**2))),
        "held_out_compounds": float(truth.size),
    }


def export_solubility_predictor(path: Path, *, seed: int = SEED) -> dict[str, float]:
    """Build the data, train, export to ``path`` (dynamic batch), check onnxruntime against torch
    (``atol=1e-4``) and return the held-out metrics; raises ``RuntimeError`` on a mismatch and
    ``QualityFloorMissed`` when R² < ``MIN_HELD_OUT_R2`` or RMSE > ``MAX_RMSE_FRACTION`` x the mean
    predictor's."""
    return _build(path, seed)[0]


def _build(path: Path, seed: int) -> tuple[dict[str, float], BuildRecord]:
    import torch

    started = time.perf_counter()
    announce(NAME, f"featurising {COMPOUNDS} synthetic compounds (RDKit)")
    data = dataset(seed=seed)
    model, steps = train(data, seed)
    seconds = time.perf_counter() - started
    export_batched(model, torch.zeros(2, BITS, dtype=torch.uint8), path, INPUT_NAME, OUTPUT_NAME, OPSET)
    verify_export(model, path, data.fingerprints[:3], INPUT_NAME, OUTPUT_NAME, ATOL)
    metrics = held_out_metrics(path, data)
    figures = {
        "R2": metrics["r2"],
        "RMSE / mean predictor RMSE": metrics["rmse"] / metrics["mean_predictor_rmse"],
    }
    profile = current_profile()
    check_floors(NAME, profile, figures, FLOORS)
    return metrics, BuildRecord(profile, seed, steps, seconds, figures, FLOORS)


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    metrics, record = _build(path, SEED)
    held_out = {**CONFIG["metadata"]["held_out"], **{key: round(value, 4) for key, value in metrics.items()}}
    record_build(path, SOLUBILITY_PREDICTOR, record, {"held_out": held_out})
    report_built(NAME, record.figures, clock, record.profile)


SOLUBILITY_PREDICTOR = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
