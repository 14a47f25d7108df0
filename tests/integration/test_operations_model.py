"""The example model of operations built from scratch (torch; seconds to a minute)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from operations_data import DAY, EXPECTED_PROBLEMS, defective_csv

from medserve.clinical.operations.forecast_features import (
    FEATURE_COUNT,
)
from medserve.demo.hospital_series import (
    hospital_series,
    hospital_table,
    write_example_operations,
)
from medserve.demo.models import occupancy_forecaster
from medserve.demo.models.config_file import write_config
from medserve.demo.models.occupancy_forecaster import OCCUPANCY_FORECASTER, held_out_metrics
from medserve.jobs.workload import Item, ItemFailure
from medserve.jobs.workloads.operations import RESULT_SCHEMA, OccupancyForecastWorkload
from medserve.repository.config import parse_model_config


@pytest.fixture(scope="session")
def forecaster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built ``occupancy_forecaster`` (its build fails when a held-out floor is missed)."""
    root = tmp_path_factory.mktemp("repository") / OCCUPANCY_FORECASTER.name
    (root / "1").mkdir(parents=True)
    OCCUPANCY_FORECASTER.write(1, root / "1" / "model.onnx")
    write_config(root / "config.yaml", OCCUPANCY_FORECASTER)
    return root


def test_model_config_and_held_out_floors(forecaster: Path) -> None:
    text = (forecaster / "config.yaml").read_text()
    config = parse_model_config(text, "config.yaml", OCCUPANCY_FORECASTER.name)
    assert config.runtime == "onnxruntime" and config.max_batch_size >= 256
    assert config.inputs is not None and config.inputs[0].dims == [72]
    assert config.outputs is not None and config.outputs[0].dims == [2, 7, 3]
    assert config.metadata["research_use"] is True and "synthetic" in config.metadata["description"].lower()
    metrics = held_out_metrics(forecaster / "1" / "model.onnx")
    for target in ("admissions", "occupancy"):
        assert 0.65 <= metrics[target]["coverage_80"] <= 0.95, metrics
        assert metrics[target]["mae_ratio_to_seasonal_naive"] <= occupancy_forecaster.MAX_MAE_RATIO, metrics


def test_model_quantiles_are_monotone_at_any_batch_size(forecaster: Path) -> None:
    session = ort.InferenceSession(str(forecaster / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    noise = rng.normal(1.0, 0.5, (1024, FEATURE_COUNT)).astype(np.float32)
    real, _, _ = occupancy_forecaster.training_set(1, 60, seed=3)
    for batch in (noise[:1], noise, real):
        (forecast,) = session.run(["forecast"], {"features": batch})
        assert forecast.shape == (len(batch), 2, 7, 3)
        assert np.all(np.diff(forecast, axis=-1) >= 0)


def test_workload_backtest_end_to_end(tmp_path: Path, forecaster: Path) -> None:
    csv_path, _ = write_example_operations(tmp_path, 150, seed=8)
    workload = OccupancyForecastWorkload(csv_path, {"origins": "all"})
    assert workload.kind == "operations_forecast" and workload.rank_by is None
    assert [e.index for e in workload.items()] == [e.index for e in workload.items()]
    results, failures = _run(workload, forecaster)
    assert not failures and results.schema == RESULT_SCHEMA
    origins = 4 * (150 - 27)
    assert results.num_rows == 7 * origins
    frame = results.to_pydict()
    assert frame["horizon"][:8] == [1, 2, 3, 4, 5, 6, 7, 1]
    assert frame["index"][:8] == [27] * 7 + [28]
    assert all(
        t == o + h * DAY for o, t, h in zip(frame["origin_date"], frame["target_date"], frame["horizon"])
    )
    for target in ("admissions", "occupancy"):
        low, mid, high = (np.array(frame[f"{target}_{q}"]) for q in ("p10", "p50", "p90"))
        assert np.all(low >= 0) and np.all(low <= mid) and np.all(mid <= high)
    # against what happened, where the target day is in the table
    truth = hospital_table(hospital_series(4, 150, start=dt.date(2022, 1, 1), seed=8)).to_pydict()
    actual = {
        (s, d): (a, o)
        for s, d, a, o in zip(truth["site"], truth["date"], truth["admissions"], truth["occupancy"])
    }
    for k, target in enumerate(("admissions", "occupancy")):
        known = [
            (actual[(s, t)][k], lo, med, hi, actual[(s, t - 7 * DAY)][k])
            for s, t, lo, med, hi in zip(
                frame["site"],
                frame["target_date"],
                frame[f"{target}_p10"],
                frame[f"{target}_p50"],
                frame[f"{target}_p90"],
            )
            if (s, t) in actual
        ]
        values = np.array(known, dtype=np.float64)
        assert len(values) > 2000
        coverage = np.mean((values[:, 0] >= values[:, 1]) & (values[:, 0] <= values[:, 3]))
        assert 0.6 <= coverage <= 0.97, (target, coverage)
        model_mae = np.mean(np.abs(values[:, 2] - values[:, 0]))
        naive_mae = np.mean(np.abs(values[:, 4] - values[:, 0]))
        assert model_mae < 0.9 * naive_mae, (target, model_mae, naive_mae)


def test_workload_last_origin_per_site_and_failures(tmp_path: Path, forecaster: Path) -> None:
    _, parquet_path = write_example_operations(tmp_path, 60, seed=9)
    results, failures = _run(OccupancyForecastWorkload(parquet_path, {}), forecaster)
    frame = results.to_pydict()
    assert not failures and results.num_rows == 4 * 7
    assert sorted(set(frame["site"])) == ["site_01", "site_02", "site_03", "site_04"]
    assert set(frame["origin_date"]) == {dt.date(2022, 1, 1) + 59 * DAY}
    assert sorted(set(frame["index"])) == [59, 119, 179, 239]
    defective = OccupancyForecastWorkload(defective_csv(tmp_path / "defects.csv"), {"origins": "last"})
    entries = list(defective.items())
    assert [(e.index, e.locator) for e in entries if isinstance(e, Item)] == [
        (96, "line 98"),
        (128, "line 130"),
    ]
    reasons = {e.index: e.reason for e in entries if isinstance(e, ItemFailure)}
    assert sorted(reasons) == sorted(EXPECTED_PROBLEMS) and "abc" in reasons[30]
    assert defective.write_sink(iter([]), "vcf", tmp_path / "out.vcf", {}) is False


def _run(
    workload: OccupancyForecastWorkload, model: Path, chunk: int = 256
) -> tuple[pa.Table, list[ItemFailure]]:
    """What the job runner does, with onnxruntime in place of the server."""
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    parts, failures = [], []

    def chunks() -> Iterator[list[Item]]:
        batch: list[Item] = []
        for entry in workload.items():
            if isinstance(entry, ItemFailure):
                failures.append(entry)
                continue
            batch.append(entry)
            if len(batch) == chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    for items in chunks():
        inputs, kept, unusable = workload.featurise(items)
        assert len(kept) == len(items) and not unusable
        (forecast,) = session.run(["forecast"], inputs)
        parts.append(workload.rows(kept, {"forecast": forecast}))
    return pa.concat_tables(parts), failures
