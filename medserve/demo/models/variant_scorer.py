"""``variant_scorer``: a small MLP that scores each ALT allele of a VCF record as a true variant or a
sequencing artefact, trained on synthetic calls.

Input ``features`` is the float32 vector of ``medserve.clinical.genomics.variant_features``
(``FEATURE_NAMES``, raw values as the featuriser gives them); output ``score`` is P(true variant).
The network prepares its input itself: ``log1p`` of the heavy-tailed counts and qualities
(``LOG_SCALED_FEATURES``), then standardisation with the training set's mean and standard deviation
(constants in the graph), then 64-32-1 with ReLU and a sigmoid.

It is trained, seeded, for a fixed number of epochs on one torch thread when the example is built
(seconds; the same in every profile) on the synthetic calls of
``medserve.demo.variants``, read back through the same VCF reader and
featuriser a job uses; a quarter of the training rows have their sequence context blanked as when
no reference is given, so the model also serves jobs without one. The exported model is checked
against torch and its AUC measured on calls drawn with another seed; the build fails below
``MIN_HELD_OUT_AUC``.

A demonstration of offline variant scoring: it has seen only synthetic data, and its score is not a
validated variant-quality measure for any sequencing assay.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.clinical.genomics.sequence_context import ReferenceGenome
from medserve.clinical.genomics.variant_features import (
    COLUMN,
    FEATURE_COUNT,
    FEATURE_NAMES,
    NEUTRAL_GC_FRACTION,
    NEUTRAL_HOMOPOLYMER_RUN,
    variant_features,
)
from medserve.clinical.genomics.variant_record import split_alleles
from medserve.clinical.genomics.vcf_reader import VcfSource
from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import current_profile
from medserve.demo.models._progress import BuildClock, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import Schedule, fit
from medserve.demo.variants import TRUTH_COLUMNS, write_synthetic_calls

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "variant_scorer"
INPUT_NAME = "features"
OUTPUT_NAME = "score"
ATOL = 1e-5

LOG_SCALED_FEATURES: tuple[str, ...] = ("qual", "depth", "alt_depth", "fisher_strand")
"""Features the network takes ``log1p`` of before standardising."""

SEED = 20240607
"""Seeds the synthetic training calls, the weights and the batch order."""
TRAIN_VARIANTS = 20_000
NO_CONTEXT_FRACTION = 0.25
"""Share of training rows whose sequence-context features are set as without a reference."""
EPOCHS = 20
BATCH_SIZE = 256
LEARNING_RATE = 3e-3

HELD_OUT_SEED = 4241
HELD_OUT_VARIANTS = 5_000
MIN_HELD_OUT_AUC = 0.90
"""The build fails when the exported model's held-out AUC is below this (any profile)."""
FLOORS = (Floor("AUC", MIN_HELD_OUT_AUC),)
MEASURED_HELD_OUT_AUC = 0.978
"""What a build measured on the held-out calls (replaced in each build's config by its own figure)."""

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 16384,
    "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "dims": [FEATURE_COUNT]}],
    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "dims": [1]}],
    # A row costs well under a microsecond: offline jobs send whole chunks; online callers gain from
    # waiting a little for company.
    "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4096, 16384]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "runtime_options": {"intra_op_threads": 1},
    "metadata": {
        "description": (
            "Demonstration variant scorer: estimates whether each ALT allele of a VCF record is a true "
            "variant or a sequencing artefact. Trained on SYNTHETIC variant calls only; not a validated "
            "variant-quality measure and not for clinical use."
        ),
        "task": "variant scoring (true variant vs sequencing artefact)",
        "architecture": "MLP (log1p of counts, standardisation, 64-32-1, ReLU, sigmoid)",
        "features": list(FEATURE_NAMES),
        "input_preprocessing": (
            "medserve.clinical.genomics.variant_features: raw values, one row per ALT allele; the "
            "network applies log1p and standardisation itself"
        ),
        "training_data": (
            f"{TRAIN_VARIANTS} synthetic records (seed {SEED}) from "
            "medserve.demo.variants: true SNVs/indels and artefacts with low "
            "allele fraction, strand bias, low mapping quality or homopolymer context; "
            f"{EPOCHS} epochs of AdamW"
        ),
        "held_out_auc": {
            "value": MEASURED_HELD_OUT_AUC,
            "seed": HELD_OUT_SEED,
            "records": HELD_OUT_VARIANTS,
            "data": "synthetic, same generator, unseen seed, with the reference",
        },
        "research_use": True,
    },
}


def labelled_variants(
    n: int, seed: int, *, no_context_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(m, FEATURE_COUNT)`` float32 and labels ``(m,)`` float32 (1 = true variant) of the
    ``m`` ALT alleles of ``n`` synthetic records, read through the job's reader and featuriser."""
    with tempfile.TemporaryDirectory(prefix="variant-scorer-") as directory:
        reference_path, _, vcf_path, truth_path = write_synthetic_calls(Path(directory), n, seed)
        source = VcfSource(vcf_path)
        alleles = []
        for read in source.records():
            if read.record is None:
                raise RuntimeError(
                    f"{vcf_path} {read.locator}: the generator wrote an unreadable record: {read.error}"
                )
            alleles.extend(split_alleles(read.record))
        reference = ReferenceGenome(reference_path)
        try:
            features, errors = variant_features(alleles, reference)
        finally:
            reference.close()
        failed = [(allele.record.pos, error) for allele, error in zip(alleles, errors) if error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} synthetic allele(s) cannot be featurised, e.g. {failed[0]}")
        labels = _truth(truth_path)
    if labels.size != len(alleles):
        raise RuntimeError(f"{labels.size} truth rows for {len(alleles)} alleles")
    if no_context_fraction > 0:
        blank = np.random.default_rng(seed + 1).random(len(alleles)) < no_context_fraction
        features[blank, COLUMN["gc_fraction"]] = NEUTRAL_GC_FRACTION
        features[blank, COLUMN["homopolymer_run"]] = NEUTRAL_HOMOPOLYMER_RUN
        features[blank, COLUMN["context_present"]] = 0.0
    return features, labels


def _truth(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != TRUTH_COLUMNS:
            raise RuntimeError(f"{path}: unexpected truth columns {header}")
        column = TRUTH_COLUMNS.index("truth")
        return np.array([float(line.split("\t")[column]) for line in handle], dtype=np.float32)


def _network(mean: np.ndarray, std: np.ndarray) -> torch.nn.Sequential:
    import torch
    from torch import nn

    class _Prepare(nn.Module):
        """log1p of the count-like columns, then standardisation with the training statistics."""

        log_mask: torch.Tensor
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            mask = np.zeros(FEATURE_COUNT, dtype=bool)
            mask[[COLUMN[name] for name in LOG_SCALED_FEATURES]] = True
            self.register_buffer("log_mask", torch.from_numpy(mask))
            self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
            self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scaled = torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)
            return (scaled - self.mean) / self.std

    return nn.Sequential(
        _Prepare(),
        nn.Linear(FEATURE_COUNT, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 1),
        nn.Sigmoid(),
    )


def _statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaled = x.astype(np.float64)
    columns = [COLUMN[name] for name in LOG_SCALED_FEATURES]
    scaled[:, columns] = np.log1p(np.maximum(scaled[:, columns], 0.0))
    return scaled.mean(axis=0), np.maximum(scaled.std(axis=0), 1e-3)


def train(seed: int = SEED) -> tuple[torch.nn.Module, int, float]:
    """Train on synthetic calls; returns ``(network in eval mode with its sigmoid, steps, seconds)``."""
    import torch
    from torch import nn

    started = time.perf_counter()
    announce(NAME, f"featurising {TRAIN_VARIANTS} synthetic training records")
    x, y = labelled_variants(TRAIN_VARIANTS, seed, no_context_fraction=NO_CONTEXT_FRACTION)
    mean, std = _statistics(x)
    torch.manual_seed(seed)
    model = _network(mean, std)
    body = model[:-1]  # train on logits; the sigmoid stays in the exported graph
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    schedule = Schedule(EPOCHS, BATCH_SIZE, LEARNING_RATE)
    announce(NAME, f"training {schedule.steps(len(targets))} steps ({EPOCHS} epochs)")
    steps = fit(NAME, model, body, nn.BCEWithLogitsLoss(), inputs, targets, schedule, seed)
    return model.eval(), steps, time.perf_counter() - started


def export_variant_scorer(path: Path, *, seed: int = SEED) -> BuildRecord:
    """Train, export to ``path`` as ONNX (dynamic batch dim), verify against torch and measure the
    held-out AUC with onnxruntime; raises ``RuntimeError`` on a mismatch and ``QualityFloorMissed``
    for an AUC below ``MIN_HELD_OUT_AUC``."""
    import torch

    model, steps, seconds = train(seed)
    export_batched(model, torch.zeros(2, FEATURE_COUNT), path, INPUT_NAME, OUTPUT_NAME, OPSET)
    announce(NAME, f"scoring {HELD_OUT_VARIANTS} held-out records")
    x, y = labelled_variants(HELD_OUT_VARIANTS, HELD_OUT_SEED)
    verify_export(model, path, x[:3], INPUT_NAME, OUTPUT_NAME, ATOL)
    figures = {"AUC": roc_auc(_scores(path, x), y)}
    profile = current_profile()
    check_floors(NAME, profile, figures, FLOORS)
    return BuildRecord(profile, seed, steps, seconds, figures, FLOORS)


def held_out_auc(path: Path, *, seed: int = HELD_OUT_SEED, n: int = HELD_OUT_VARIANTS) -> float:
    """AUC of the ONNX model at ``path`` in onnxruntime on fresh synthetic calls."""
    x, y = labelled_variants(n, seed)
    return roc_auc(_scores(path, x), y)


def _scores(path: Path, x: np.ndarray) -> np.ndarray:
    session = scoring_session(path)
    (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(scores).reshape(-1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores sharing ranks); raises
    ``ValueError`` unless both classes are present."""
    from scipy.stats import rankdata

    positive = np.asarray(labels) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    record = export_variant_scorer(path)
    auc = {**CONFIG["metadata"]["held_out_auc"], "value": round(record.figures["AUC"], 4)}
    record_build(path, VARIANT_SCORER, record, {"held_out_auc": auc})
    report_built(NAME, record.figures, clock, record.profile)


VARIANT_SCORER = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
