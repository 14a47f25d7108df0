"""Hospital operations forecasting: the bank-holiday calendar, the synthetic hospital generator, the
streamed CSV/Parquet reader and its row problems, forecast origins, the feature vector, the
``occupancy_forecaster`` example model and the ``operations_forecast`` workload end to end in
onnxruntime."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from operations_data import DAY, EXPECTED_PROBLEMS, HEADER, day, defective_csv, write_lines

from medserve.clinical.operations.bank_holidays import bank_holidays, easter_sunday, is_bank_holiday
from medserve.clinical.operations.forecast_features import (
    FEATURE_COUNT,
    FEATURE_NAMES,
    forecast_features,
    origin_features,
)
from medserve.clinical.operations.forecast_origins import ForecastOrigin, forecast_origins
from medserve.clinical.operations.series_reader import (
    DailyRecord,
    HospitalSeriesReader,
    RecordProblem,
    SeriesColumns,
    SeriesFormatError,
)
from medserve.demo.hospital_series import (
    hospital_series,
    hospital_table,
    length_of_stay_pmf,
    write_example_operations,
)
from medserve.jobs.workload import Item, SourceError
from medserve.jobs.workloads.operations import OccupancyForecastWorkload

# -- bank holidays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "expected"),
    [
        (2024, ["01-01", "03-29", "04-01", "05-06", "05-27", "08-26", "12-25", "12-26"]),
        # New Year on a Saturday, Christmas on a Sunday (one-off 2022 holidays are not rules)
        (2022, ["01-03", "04-15", "04-18", "05-02", "05-30", "08-29", "12-26", "12-27"]),
        # Christmas on a Saturday, Boxing Day on a Sunday
        (2027, ["01-01", "03-26", "03-29", "05-03", "05-31", "08-30", "12-27", "12-28"]),
    ],
)
def test_bank_holidays(year: int, expected: list[str]) -> None:
    assert [day.strftime("%m-%d") for day in bank_holidays(year)] == expected


def test_easter_and_vectorised_lookup() -> None:
    assert easter_sunday(2000) == dt.date(2000, 4, 23)
    assert easter_sunday(2285) == dt.date(2285, 3, 22)  # the earliest possible
    assert easter_sunday(2038) == dt.date(2038, 4, 25)  # the latest possible
    days = np.array(["2023-12-24", "2023-12-25", "2024-01-01", "2024-01-02"], dtype="datetime64[D]")
    assert is_bank_holiday(days).tolist() == [False, True, True, False]
    assert is_bank_holiday(np.array([], dtype="datetime64[D]")).shape == (0,)
    with pytest.raises(ValueError, match="1850"):
        bank_holidays(1850)


# -- synthetic hospitals ------------------------------------------------------------------------


def test_generator_is_deterministic_and_sites_are_independent_of_count() -> None:
    first = hospital_table(hospital_series(3, 120, seed=4))
    assert first.equals(hospital_table(hospital_series(3, 120, seed=4)))
    assert not first.equals(hospital_table(hospital_series(3, 120, seed=5)))
    two = hospital_table(hospital_series(2, 120, seed=4))
    assert two.equals(first.slice(0, two.num_rows))
    assert first.column_names == ["site", "date", "admissions", "discharges", "occupancy", "capacity"]
    assert first.num_rows == 360
    sites = first.column("site").to_pylist()
    assert sites == sorted(sites) and sites[0] == "site_01"
    dates = np.array(first.column("date").to_pylist()[:120], dtype="datetime64[D]")
    assert np.all(np.diff(dates).astype(int) == 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_generator_seasonality_weekdays_holidays_and_occupancy(seed: int) -> None:
    for site in hospital_series(4, 3 * 365, seed=seed):
        admissions = site.admissions.astype(np.float64)
        month = site.dates.astype("datetime64[M]").astype(int) % 12 + 1
        weekday = (site.dates.astype(np.int64) + 3) % 7
        holiday = is_bank_holiday(site.dates)
        winter = admissions[np.isin(month, [12, 1, 2])].mean()
        summer = admissions[np.isin(month, [6, 7, 8])].mean()
        assert winter > 1.08 * summer, site.profile
        assert admissions[weekday < 5].mean() > 1.1 * admissions[weekday >= 5].mean()
        mondays = weekday == 0
        assert admissions[mondays & holiday].mean() < 0.9 * admissions[mondays & ~holiday].mean()
        # beds: today's occupancy is yesterday's plus admissions less discharges
        change = np.diff(site.occupancy)
        np.testing.assert_array_equal(change, site.admissions[1:] - site.discharges[1:])
        assert site.occupancy.min() > 0
        # Little's law: occupancy ~ admissions x mean stay (weekend delays add a little)
        pmf = length_of_stay_pmf(site.profile.mean_length_of_stay)
        stay = float(np.sum(pmf * np.arange(1, pmf.size + 1)))
        assert 0.97 < site.occupancy.mean() / (admissions.mean() * stay) < 1.08
        # occupancy lags admissions: weekly means correlate best a few days later
        smooth_a = np.convolve(admissions, np.ones(7) / 7, "valid")
        smooth_o = np.convolve(site.occupancy.astype(np.float64), np.ones(7) / 7, "valid")
        lags = [np.corrcoef(smooth_a[: smooth_a.size - lag], smooth_o[lag:])[0, 1] for lag in range(10)]
        assert 1 <= int(np.argmax(lags)) <= 6


def test_write_example_operations(tmp_path: Path) -> None:
    csv_path, parquet_path = write_example_operations(tmp_path, 40, seed=2)
    assert csv_path.name == "hospital_daily.csv" and parquet_path.name == "hospital_daily.parquet"
    from_csv = list(HospitalSeriesReader(csv_path).records())
    from_parquet = list(HospitalSeriesReader(parquet_path).records())
    assert len(from_csv) == 4 * 40 and all(isinstance(r, DailyRecord) for r in from_csv)
    assert [_values(r) for r in from_csv] == [_values(r) for r in from_parquet]
    with pytest.raises(ValueError, match="35 days"):
        write_example_operations(tmp_path, 20, seed=2)


# -- reading tables -----------------------------------------------------------------------------


def _values(record: DailyRecord | RecordProblem) -> tuple[object, ...]:
    if isinstance(record, RecordProblem):
        return (record.row, record.reason)
    return (record.row, record.site, record.date, record.admissions, record.occupancy)


def test_csv_and_parquet_give_the_same_records_in_any_batch_size(tmp_path: Path) -> None:
    table = hospital_table(hospital_series(3, 90, seed=1))
    extra = table.append_column("ward_notes", pa.array(["x"] * table.num_rows))
    csv_path = tmp_path / "daily.csv"
    pa.csv.write_csv(extra, csv_path)
    parquet_path = tmp_path / "daily.parquet"
    pq.write_table(extra, parquet_path, row_group_size=50)
    reference = [_values(r) for r in HospitalSeriesReader(csv_path).records()]
    assert len(reference) == 270 and reference[0][1:3] == ("site_01", dt.date(2021, 1, 1))
    assert [_values(r) for r in HospitalSeriesReader(csv_path, block_size=700).records()] == reference
    parquet = HospitalSeriesReader(parquet_path, batch_rows=17)
    assert parquet.format == "parquet"
    assert [_values(r) for r in parquet.records()] == reference
    locators = [r.locator for r in HospitalSeriesReader(csv_path).records()]
    assert locators[:2] == ["line 2", "line 3"]
    assert [r.locator for r in parquet.records()][:2] == ["row 1", "row 2"]


def test_named_columns_text_dates_and_dictionary_sites_in_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "hospital": pa.array(["N", "N", "S"]).dictionary_encode(),
            "day": pa.array(["03/01/2024", "04/01/2024", "03/01/2024"]),
            "admitted": pa.array([10, 12, 7], pa.int32()),
            "beds_used": pa.array([50.0, 51.5, 30.0]),
        }
    )
    path = tmp_path / "named.parquet"
    pq.write_table(table, path)
    columns = SeriesColumns(site="hospital", date="day", admissions="admitted", occupancy="beds_used")
    records = list(HospitalSeriesReader(path, columns, date_format="%d/%m/%Y").records())
    assert [_values(r) for r in records] == [
        (0, "N", dt.date(2024, 1, 3), 10.0, 50.0),
        (1, "N", dt.date(2024, 1, 4), 12.0, 51.5),
        (2, "S", dt.date(2024, 1, 3), 7.0, 30.0),
    ]


def test_unreadable_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SeriesFormatError, match="no such file"):
        HospitalSeriesReader(tmp_path / "absent.csv")
    with pytest.raises(SeriesFormatError, match="not a file"):
        HospitalSeriesReader(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(SeriesFormatError, match="not a readable CSV"):
        HospitalSeriesReader(empty)
    missing = write_lines(tmp_path / "missing.csv", ["site,date,beds", "A,2024-01-01,4"])
    with pytest.raises(SeriesFormatError, match="'admissions', 'occupancy'") as raised:
        HospitalSeriesReader(missing)
    assert "site, date, beds" in str(raised.value)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 64)
    with pytest.raises(SeriesFormatError, match="unreadable Parquet"):
        HospitalSeriesReader(broken)
    float_dates = tmp_path / "float_dates.parquet"
    pq.write_table(pa.table({"site": ["A"], "date": [1.5], "admissions": [1], "occupancy": [2]}), float_dates)
    with pytest.raises(SeriesFormatError, match="column 'date' is double"):
        HospitalSeriesReader(float_dates)


@pytest.mark.parametrize("block_size", [1 << 20, 300])
def test_bad_rows_gaps_and_order_are_failures_with_line_numbers(tmp_path: Path, block_size: int) -> None:
    path = defective_csv(tmp_path / "defects.csv")
    events = list(forecast_origins(HospitalSeriesReader(path, block_size=block_size).records()))
    problems = {e.row: e for e in events if isinstance(e, RecordProblem)}
    assert sorted(problems) == sorted(EXPECTED_PROBLEMS)
    for row, (locator, reason) in EXPECTED_PROBLEMS.items():
        assert problems[row].locator == locator and reason in problems[row].reason, problems[row]
    origins = [e for e in events if isinstance(e, ForecastOrigin)]
    # A: rows 27-29; 31-58 restart after row 30; nothing complete after the defects until row 96
    # (28 days from row 69); B: rows 124-126 and 128 (the stray A row does not break B's history)
    expected_rows = [27, 28, 29, 58, 96, 124, 125, 126, 128]
    assert [o.row for o in origins] == expected_rows
    assert [e.row for e in events] == sorted(e.row for e in events)
    last_a = origins[4]
    assert last_a.site == "A" and last_a.date == dt.date(2024, 4, 9) and last_a.locator == "line 98"
    np.testing.assert_array_equal(last_a.admissions, 10 + np.arange(72, 100))
    np.testing.assert_array_equal(last_a.occupancy, 50 + np.arange(72, 100))


def test_last_origins_are_one_per_site_in_row_order(tmp_path: Path) -> None:
    path = defective_csv(tmp_path / "defects.csv")
    events = list(forecast_origins(HospitalSeriesReader(path).records(), origins="last"))
    origins = [e for e in events if isinstance(e, ForecastOrigin)]
    assert [(o.site, o.row, o.date) for o in origins] == [
        ("A", 96, dt.date(2024, 4, 9)),
        ("B", 128, dt.date(2024, 1, 31)),
    ]
    assert sorted(e.row for e in events if isinstance(e, RecordProblem)) == sorted(EXPECTED_PROBLEMS)
    assert [e.row for e in events] == sorted(e.row for e in events)


def test_last_row_without_full_history_is_a_failure(tmp_path: Path) -> None:
    lines = [HEADER] + [f"A,{day(d)},5,9" for d in range(30)] + [f"B,{day(d)},5,9" for d in range(10)]
    lines[1 + 20] = f"A,{day(20)},x,9"
    path = write_lines(tmp_path / "short.csv", lines)
    events = list(forecast_origins(HospitalSeriesReader(path).records(), origins="last"))
    assert [(type(e).__name__, e.row) for e in events] == [
        ("RecordProblem", 20),
        ("RecordProblem", 29),
        ("RecordProblem", 39),
    ]
    assert isinstance(events[1], RecordProblem) and "9 consecutive usable day(s)" in events[1].reason
    assert isinstance(events[2], RecordProblem) and "site 'B'" in events[2].reason
    with pytest.raises(ValueError, match="'first'"):
        forecast_origins([], origins="first")  # type: ignore[arg-type]


def test_parquet_bad_values_are_failures_with_row_numbers(tmp_path: Path) -> None:
    days = [dt.date(2024, 1, 1) + d * DAY for d in range(6)]
    table = pa.table(
        {
            "site": ["A", "A", None, "A", "A", "A"],
            "date": pa.array([days[0], None, days[2], days[3], days[4], days[5]], pa.date32()),
            "admissions": [1.0, 2.0, 3.0, float("nan"), None, 6.0],
            "occupancy": [1, 2, 3, 4, 5, -6],
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    records = list(HospitalSeriesReader(path).records())
    assert [(r.locator, r.reason) for r in records if isinstance(r, RecordProblem)] == [
        ("row 2", "missing date"),
        ("row 3", "missing site"),
        ("row 4", "admissions is not a finite number (nan)"),
        ("row 5", "missing admissions"),
        ("row 6", "negative occupancy (-6)"),
    ]


# -- features -----------------------------------------------------------------------------------


def test_feature_values_on_a_hand_made_series() -> None:
    admissions = np.arange(1.0, 29.0)  # mean 14.5
    occupancy = np.zeros(28)  # an empty ward keeps scale 1
    origin = ForecastOrigin(3, "line 5", "A", dt.date(2024, 12, 24), admissions, occupancy)  # a Tuesday
    features, scales = origin_features([origin])
    assert features.shape == (1, FEATURE_COUNT) == (1, 72) and features.dtype == np.float32
    assert len(FEATURE_NAMES) == 72 and FEATURE_NAMES[27] == "admissions_t-0"
    np.testing.assert_allclose(scales, [[14.5, 1.0]])
    x = features[0]
    np.testing.assert_allclose(x[:28], admissions / 14.5, rtol=1e-6)
    np.testing.assert_array_equal(x[28:56], 0.0)
    assert x[56:63].tolist() == [0, 0, 1, 0, 0, 0, 0]  # the first target day, 25 December, is a Wednesday
    angle = 2 * np.pi * 360 / 365.25  # 25 December 2024 is day 360 of a leap year
    np.testing.assert_allclose(x[63:65], [np.sin(angle), np.cos(angle)], rtol=1e-6)
    assert x[65:].tolist() == [1, 1, 0, 0, 0, 0, 0]  # Christmas and Boxing Day in the week ahead
    with pytest.raises(ValueError, match=r"histories \(n, 28\)"):
        forecast_features(
            np.array(["2024-01-01"], dtype="datetime64[D]"), np.zeros((1, 27)), np.zeros((1, 28))
        )


# -- the example model --------------------------------------------------------------------------


# -- the workload -------------------------------------------------------------------------------


def test_workload_rows_rescale_and_clip() -> None:
    origin = ForecastOrigin(7, "line 9", "A", dt.date(2024, 3, 1), np.full(28, 20.0), np.full(28, 100.0))
    forecast = np.zeros((1, 2, 7, 3), dtype=np.float32)
    forecast[0, 0] = [0.9, 1.0, 1.2]
    forecast[0, 1] = [-0.1, 0.5, 1.1]
    workload = OccupancyForecastWorkload.__new__(OccupancyForecastWorkload)
    table = workload.rows([Item(7, "line 9", origin)], {"forecast": forecast})
    assert table.column("index").to_pylist() == [7] * 7
    np.testing.assert_allclose(table.column("admissions_p50").to_numpy(), 20.0)
    np.testing.assert_allclose(table.column("admissions_p90").to_numpy(), 24.0, rtol=1e-6)
    np.testing.assert_allclose(table.column("occupancy_p10").to_numpy(), 0.0)  # clipped
    np.testing.assert_allclose(table.column("occupancy_p50").to_numpy(), 50.0)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 7\)"):
        workload.rows([Item(7, "line 9", origin)], {"forecast": forecast[..., 0]})
    with pytest.raises(ValueError, match="'forecast'"):
        workload.rows([Item(7, "line 9", origin)], {"scores": forecast})


def test_workload_refuses_bad_sources_and_options(tmp_path: Path) -> None:
    csv_path, _ = write_example_operations(tmp_path, 40, seed=1)
    with pytest.raises(SourceError, match="no such file"):
        OccupancyForecastWorkload(tmp_path / "absent.csv", {})
    missing = write_lines(tmp_path / "missing.csv", ["site,day,admissions,occupancy", "A,2024-01-01,1,2"])
    with pytest.raises(SourceError, match="missing column.*'date'.*date_column"):
        OccupancyForecastWorkload(missing, {})
    assert OccupancyForecastWorkload(missing, {"date_column": "day"}).options["date_column"] == "day"
    with pytest.raises(ValueError, match="unknown operations_forecast option.*'horizon'"):
        OccupancyForecastWorkload(csv_path, {"horizon": 14})
    with pytest.raises(ValueError, match="'all' or 'last'"):
        OccupancyForecastWorkload(csv_path, {"origins": "every"})
    with pytest.raises(ValueError, match="date_format"):
        OccupancyForecastWorkload(csv_path, {"date_format": "%Y-%m"})
    with pytest.raises(ValueError, match="different columns"):
        OccupancyForecastWorkload(csv_path, {"admissions_column": "occupancy"})


def test_gzip_csv_and_a_bounded_wait_for_stray_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from medserve.clinical.operations import forecast_origins as origins_module

    lines = [HEADER] + [f"{site},{day(d)},5,9" for site in "AB" for d in range(30)]
    lines += [f"A,{day(30 + d)},5,9" for d in range(4)] + [f"B,{day(30)},5,9"]
    path = tmp_path / "stray.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    monkeypatch.setattr(origins_module, "_MAX_DEFERRED", 2)
    events = list(forecast_origins(HospitalSeriesReader(path).records(), origins="last"))
    # B's last row waits behind at most two stray rows, then B is taken to have ended
    assert [(type(e).__name__, e.row) for e in events] == [
        ("ForecastOrigin", 29),
        ("ForecastOrigin", 59),
        *(("RecordProblem", row) for row in range(60, 65)),
    ]
    assert isinstance(events[-1], RecordProblem) and "site 'B' appears again" in events[-1].reason


def test_featurise_sets_aside_items_that_are_not_origins(tmp_path: Path) -> None:
    csv_path, _ = write_example_operations(tmp_path, 40, seed=1)
    workload = OccupancyForecastWorkload(csv_path, {"origins": "all"})
    good = next(e for e in workload.items() if isinstance(e, Item))
    inputs, kept, failures = workload.featurise([good, Item(99, "line 101", "not an origin")])
    assert inputs["features"].shape == (1, 72) and inputs["features"].dtype == np.float32
    assert kept == [good] and [(f.index, f.reason) for f in failures] == [(99, "not a forecast origin")]
    empty, none_kept, _ = workload.featurise([])
    assert empty["features"].shape == (0, 72) and not none_kept
    assert workload.rows([], {"forecast": np.zeros((0, 2, 7, 3), np.float32)}).num_rows == 0
