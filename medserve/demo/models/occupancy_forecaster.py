"""``occupancy_forecaster``: quantile forecasts of a hospital's daily admissions and midnight bed
occupancy for the next seven days, from four weeks of history, trained on synthetic hospitals.

Input ``features`` is the 72-value vector of ``medserve.clinical.operations.forecast_features`` (the
last 28 days of admissions and occupancy, each divided by its window's mean, then calendar features
of the week ahead); output ``forecast`` is ``[2, 7, 3]``: target (admissions, occupancy) x horizon
(1..7 days) x quantile (0.1, 0.5, 0.9), in the same scaled units (multiply by the window means).

The network is a small MLP that corrects two seasonal baselines built into the graph as a fixed
matrix: for admissions, the mean of the same weekday over the four weeks of history; for occupancy,
the last night's occupancy. It predicts the median's correction and two softplus offsets below and
above it, so the quantiles can never cross. It is trained, seeded, with the pinball loss on the
synthetic sites of ``medserve.demo.hospital_series`` when the example is built, for a fixed number of
epochs on one torch thread (seconds; the same in every profile), exported to ONNX, checked against
torch, and scored on synthetic sites drawn with another seed: the build fails unless the 10-90 %
interval covers 65-95 % of the held-out days and the median beats the seasonal-naive forecast (same
weekday last week) clearly.

A demonstration of offline forecasting jobs: it has never seen a real hospital and must not be used to
plan beds or staff. torch is imported only when the model is built.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.clinical.operations.forecast_features import FEATURE_COUNT, TARGETS, forecast_features
from medserve.clinical.operations.forecast_origins import HORIZON_DAYS, WINDOW_DAYS
from medserve.demo.hospital_series import hospital_series
from medserve.demo.models._export_check import export_batched, scoring_session, verify_export
from medserve.demo.models._profile import current_profile
from medserve.demo.models._progress import BuildClock, announce, report_built
from medserve.demo.models._quality import BuildRecord, Floor, check_floors, record_build
from medserve.demo.models._spec import OPSET, ExampleModel
from medserve.demo.models._training import Schedule, fit

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "occupancy_forecaster"
INPUT_NAME = "features"
OUTPUT_NAME = "forecast"
QUANTILES = (0.1, 0.5, 0.9)
ATOL = 1e-4

SEED = 20240611
"""Seeds the weights, the batch order and the training sites."""
TRAIN_SITES = 16
TRAIN_DAYS = 3 * 365
EPOCHS = 30
BATCH_SIZE = 256
LEARNING_RATE = 3e-3
HIDDEN = 128

HELD_OUT_SEED = 6113
HELD_OUT_SITES = 8
HELD_OUT_DAYS = 2 * 365

COVERAGE_RANGE = (0.65, 0.95)
"""The build fails when the held-out 10-90 % interval coverage of either target leaves this range."""
MAX_MAE_RATIO = 0.85
"""The build fails when the median's MAE exceeds this share of the seasonal-naive MAE (either target)."""
FLOORS = tuple(
    floor
    for target in TARGETS
    for floor in (
        Floor(f"{target} 10-90 % coverage", *COVERAGE_RANGE),
        Floor(f"{target} MAE / seasonal-naive MAE", maximum=MAX_MAE_RATIO),
    )
)
"""The held-out floors of every profile."""
MEASURED: dict[str, dict[str, float]] = {
    "admissions": {
        "coverage_80": 0.8327,
        "mae": 10.5,
        "seasonal_naive_mae": 14.818,
        "mae_ratio_to_seasonal_naive": 0.7086,
    },
    "occupancy": {
        "coverage_80": 0.8549,
        "mae": 19.739,
        "seasonal_naive_mae": 28.619,
        "mae_ratio_to_seasonal_naive": 0.6897,
    },
}
"""What a build measured on the held-out sites (replaced in each build's config by its own figures)."""

CONFIG: dict[str, Any] = {
    "runtime": "onnxruntime",
    "max_batch_size": 16384,
    "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "dims": [FEATURE_COUNT]}],
    "outputs": [
        {"name": OUTPUT_NAME, "datatype": "FP32", "dims": [len(TARGETS), HORIZON_DAYS, len(QUANTILES)]}
    ],
    # A forecast costs microseconds: jobs send whole chunks, and batches of hundreds run in about the
    # time of one.
    "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4096, 16384]},
    "instance_count": 1,
    "version_policy": {"latest": {"num_versions": 1}},
    "runtime_options": {"intra_op_threads": 1},
    "metadata": {
        "description": (
            "Demonstration: 7-day quantile forecasts (10/50/90 %) of daily admissions and midnight bed "
            "occupancy from 28 days of history, a small MLP trained on SYNTHETIC hospital series. Not "
            "a planning tool: it has never seen a real hospital."
        ),
        "task": "hospital operations forecasting",
        "architecture": (
            f"MLP {FEATURE_COUNT}-{HIDDEN}-{HIDDEN}-{len(TARGETS) * HORIZON_DAYS * len(QUANTILES)} (GELU) "
            "correcting fixed seasonal baselines; median plus softplus offsets (monotone quantiles)"
        ),
        "targets": list(TARGETS),
        "horizon_days": HORIZON_DAYS,
        "window_days": WINDOW_DAYS,
        "quantiles": list(QUANTILES),
        "input_preprocessing": (
            "medserve.clinical.operations.forecast_features: the 28-day admissions and occupancy "
            "histories each divided by its mean (at least 1), the first target day's weekday one-hot "
            "and day-of-year sine/cosine, bank-holiday flags (England and Wales) of the 7 target days"
        ),
        "output_scale": "scaled units: multiply admissions by the admissions scale, occupancy by its own",
        "training_data": (
            f"{TRAIN_SITES} synthetic sites x {TRAIN_DAYS} days from "
            f"medserve.demo.hospital_series (seed {SEED}): negative-binomial "
            "admissions with trend, weekday, winter and holiday effects and outbreaks; occupancy from "
            f"gamma lengths of stay with weekend discharge delays. {EPOCHS} epochs of AdamW on the "
            "pinball loss."
        ),
        "held_out": {
            "seed": HELD_OUT_SEED,
            "sites": HELD_OUT_SITES,
            "days": HELD_OUT_DAYS,
            "data": "synthetic, same generator, unseen seed (other sites)",
            "metrics": MEASURED,
            "seasonal_naive": "the same weekday of the week before",
        },
        "intended_use": (
            "Demonstration of offline forecasting jobs on the inference server only. Trained on "
            "SYNTHETIC data; NOT for planning beds, staff or any patient care."
        ),
        "research_use": True,
    },
}


def training_set(sites: int, days: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every complete origin of ``sites`` synthetic sites: features ``(n, FEATURE_COUNT)`` float32,
    targets ``(n, 2, HORIZON_DAYS)`` in scaled units (float32) and the scales ``(n, 2)``."""
    features, targets, scales = [], [], []
    for site in hospital_series(sites, days, seed=seed):
        count = site.dates.size - WINDOW_DAYS - HORIZON_DAYS + 1
        admissions = np.lib.stride_tricks.sliding_window_view(site.admissions.astype(np.float64), WINDOW_DAYS)
        occupancy = np.lib.stride_tricks.sliding_window_view(site.occupancy.astype(np.float64), WINDOW_DAYS)
        future_a = np.lib.stride_tricks.sliding_window_view(site.admissions[WINDOW_DAYS:], HORIZON_DAYS)
        future_o = np.lib.stride_tricks.sliding_window_view(site.occupancy[WINDOW_DAYS:], HORIZON_DAYS)
        origin_dates = site.dates[WINDOW_DAYS - 1 : WINDOW_DAYS - 1 + count]
        x, scale = forecast_features(origin_dates, admissions[:count], occupancy[:count])
        future = np.stack([future_a[:count], future_o[:count]], axis=1).astype(np.float64)
        features.append(x)
        targets.append((future / scale[:, :, None]).astype(np.float32))
        scales.append(scale)
    return np.concatenate(features), np.concatenate(targets), np.concatenate(scales)


def baseline_matrix() -> np.ndarray:
    """``(FEATURE_COUNT, 2 * HORIZON_DAYS)``: features @ matrix gives the seasonal baselines in scaled
    units, admissions (same weekday, mean of four weeks) then occupancy (last night), horizon 1..7."""
    matrix = np.zeros((FEATURE_COUNT, 2 * HORIZON_DAYS), dtype=np.float32)
    weeks = WINDOW_DAYS // 7
    for h in range(1, HORIZON_DAYS + 1):
        for week in range(1, weeks + 1):
            matrix[WINDOW_DAYS - 1 + h - 7 * week, h - 1] = 1.0 / weeks
        matrix[2 * WINDOW_DAYS - 1, HORIZON_DAYS + h - 1] = 1.0
    return matrix


def _network() -> torch.nn.Module:
    import torch
    from torch import nn

    class _QuantileForecaster(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            outputs = len(TARGETS) * HORIZON_DAYS * len(QUANTILES)
            self.body = nn.Sequential(
                nn.Linear(FEATURE_COUNT, HIDDEN),
                nn.GELU(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.GELU(),
                nn.Linear(HIDDEN, outputs),
            )
            self.register_buffer("baseline", torch.from_numpy(baseline_matrix()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raw = self.body(x).reshape(-1, len(TARGETS), HORIZON_DAYS, len(QUANTILES))
            baseline = (x @ self.get_buffer("baseline")).reshape(-1, len(TARGETS), HORIZON_DAYS)
            median = baseline + raw[..., 1]
            lower = median - nn.functional.softplus(raw[..., 0])
            upper = median + nn.functional.softplus(raw[..., 2])
            return torch.stack([lower, median, upper], dim=-1)

    return _QuantileForecaster()


def pinball_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss of ``predicted`` ``(n, 2, 7, 3)`` against ``target`` ``(n, 2, 7)``."""
    import torch

    quantiles = torch.tensor(QUANTILES, dtype=predicted.dtype)
    error = target.unsqueeze(-1) - predicted
    return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()


def train(seed: int = SEED) -> tuple[torch.nn.Module, int, float]:
    """Train the forecaster on synthetic sites; returns ``(model in eval mode, steps, seconds)``."""
    import torch

    started = time.perf_counter()
    announce(NAME, f"drawing {TRAIN_SITES} synthetic sites of {TRAIN_DAYS} days")
    x, y, _ = training_set(TRAIN_SITES, TRAIN_DAYS, seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    model = _network()
    schedule = Schedule(EPOCHS, BATCH_SIZE, LEARNING_RATE)
    announce(NAME, f"training {schedule.steps(len(targets))} steps ({EPOCHS} epochs, {len(targets)} origins)")
    steps = fit(NAME, model, model, pinball_loss, inputs, targets, schedule, seed)
    return model.eval(), steps, time.perf_counter() - started


def held_out_metrics(
    path: Path, *, seed: int = HELD_OUT_SEED, sites: int = HELD_OUT_SITES, days: int = HELD_OUT_DAYS
) -> dict[str, dict[str, float]]:
    """Per target, in onnxruntime on fresh synthetic sites: ``coverage_80`` (share of the actual values
    inside the 10-90 % interval), ``mae`` of the median, ``seasonal_naive_mae`` and their ratio
    ``mae_ratio_to_seasonal_naive`` (all errors in real units)."""
    x, y, scales = training_set(sites, days, seed)
    session = scoring_session(path)
    (forecast,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    forecast = forecast.astype(np.float64) * scales[:, :, None, None]
    actual = y.astype(np.float64) * scales[:, :, None]
    metrics: dict[str, dict[str, float]] = {}
    for k, target in enumerate(TARGETS):
        history = x[:, k * WINDOW_DAYS : (k + 1) * WINDOW_DAYS].astype(np.float64) * scales[:, k : k + 1]
        naive = history[:, WINDOW_DAYS - 7 : WINDOW_DAYS - 7 + HORIZON_DAYS]
        inside = (actual[:, k] >= forecast[:, k, :, 0]) & (actual[:, k] <= forecast[:, k, :, 2])
        mae = float(np.mean(np.abs(forecast[:, k, :, 1] - actual[:, k])))
        naive_mae = float(np.mean(np.abs(naive - actual[:, k])))
        metrics[target] = {
            "coverage_80": round(float(np.mean(inside)), 4),
            "mae": round(mae, 3),
            "seasonal_naive_mae": round(naive_mae, 3),
            "mae_ratio_to_seasonal_naive": round(mae / naive_mae, 4),
        }
    return metrics


def export_occupancy_forecaster(path: Path, *, seed: int = SEED) -> dict[str, dict[str, float]]:
    """Train, export to ``path`` as ONNX (dynamic batch dim), verify against torch (``atol=1e-4``) and
    return ``held_out_metrics``; raises ``RuntimeError`` on a mismatch and ``QualityFloorMissed``
    when a figure misses ``FLOORS``."""
    return _build(path, seed)[0]


def _build(path: Path, seed: int) -> tuple[dict[str, dict[str, float]], BuildRecord]:
    import torch

    model, steps, seconds = train(seed)
    export_batched(model, torch.zeros(2, FEATURE_COUNT), path, INPUT_NAME, OUTPUT_NAME, OPSET)
    sample, _, _ = training_set(1, WINDOW_DAYS + HORIZON_DAYS + 2, seed + 1)
    verify_export(model, path, sample[:3], INPUT_NAME, OUTPUT_NAME, ATOL)
    announce(NAME, f"forecasting {HELD_OUT_SITES} held-out sites")
    metrics = held_out_metrics(path)
    figures: dict[str, float] = {}
    for target, measured in metrics.items():
        figures[f"{target} 10-90 % coverage"] = measured["coverage_80"]
        figures[f"{target} MAE / seasonal-naive MAE"] = measured["mae_ratio_to_seasonal_naive"]
    profile = current_profile()
    check_floors(NAME, profile, figures, FLOORS)
    return metrics, BuildRecord(profile, seed, steps, seconds, figures, FLOORS)


def _write(_version: int, path: Path) -> None:
    clock = BuildClock()
    metrics, record = _build(path, SEED)
    held_out = {**CONFIG["metadata"]["held_out"], "metrics": metrics}
    record_build(path, OCCUPANCY_FORECASTER, record, {"held_out": held_out})
    report_built(NAME, record.figures, clock, record.profile)


OCCUPANCY_FORECASTER = ExampleModel(name=NAME, config=CONFIG, write=_write, trained=True)
