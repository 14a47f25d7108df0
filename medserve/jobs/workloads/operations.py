"""``operations_forecast``: seven-day quantile forecasts of a hospital's admissions and bed occupancy.

The source is a CSV or Parquet table with one row per site and day (see
``medserve.clinical.operations.series_reader``), grouped by site and sorted by date within a site.
An item is a forecast origin: a site's day with 28 complete days of history behind it
(``medserve.clinical.operations.forecast_origins``); its index is the ordinal of its row in the table,
and rows that cannot be used (bad values, gaps, duplicates, dates out of order) are failures at their
own index. The model (``occupancy_forecaster`` by default) takes the 72 features of
``medserve.clinical.operations.forecast_features`` as ``features`` and returns ``forecast``
``[2, 7, 3]`` in the window's scale; the result rows are in real units.

Options (all optional):

- ``origins``: ``"last"`` (default) forecasts the week after each site's last day; ``"all"`` forecasts
  from every day with a full history (a backtest);
- ``site_column``, ``date_column``, ``admissions_column``, ``occupancy_column``: the table's column
  names (default ``site``, ``date``, ``admissions``, ``occupancy``);
- ``date_format``: ``strptime`` format of dates held as text (default ``%Y-%m-%d``).

Each origin gives seven rows, one per horizon: ``index``, ``site``, ``origin_date``, ``target_date``,
``horizon`` (days) and the 10/50/90 % quantiles ``admissions_p10`` ... ``occupancy_p90``, negative
values clipped to 0. The generic ``parquet`` and ``csv`` sinks hold them; ranking means nothing here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medserve.clinical.operations.forecast_features import TARGETS, origin_features, window_scales
from medserve.clinical.operations.forecast_origins import (
    HORIZON_DAYS,
    WINDOW_DAYS,
    ForecastOrigin,
    OriginMode,
    forecast_origins,
)
from medserve.clinical.operations.series_reader import (
    HospitalSeriesReader,
    RecordProblem,
    SeriesColumns,
    SeriesFormatError,
)
from medserve.jobs.workload import Item, ItemFailure, SourceError

INPUT_NAME = "features"
OUTPUT_NAME = "forecast"
QUANTILE_LABELS = ("p10", "p50", "p90")

DEFAULT_OPTIONS: dict[str, str] = {
    "origins": "last",
    "site_column": "site",
    "date_column": "date",
    "admissions_column": "admissions",
    "occupancy_column": "occupancy",
    "date_format": "%Y-%m-%d",
}
"""Every option and its default."""

_COLUMN_OPTIONS = ("site_column", "date_column", "admissions_column", "occupancy_column")

RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("site", pa.string()),
        ("origin_date", pa.date32()),
        ("target_date", pa.date32()),
        ("horizon", pa.int32()),
        *((f"{target}_{label}", pa.float64()) for target in TARGETS for label in QUANTILE_LABELS),
    ]
)
"""The columns of the result rows."""


def _options(options: Mapping[str, Any]) -> dict[str, str]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown operations_forecast option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(DEFAULT_OPTIONS)}"
        )
    chosen = {**DEFAULT_OPTIONS, **options}
    for name, value in chosen.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"option {name!r} must be a non-empty string, got {value!r}")
    if chosen["origins"] not in ("all", "last"):
        raise ValueError(f"option 'origins' must be 'all' or 'last', got {chosen['origins']!r}")
    columns = [
        chosen[name] for name in ("site_column", "date_column", "admissions_column", "occupancy_column")
    ]
    if len(set(columns)) != len(columns):
        raise ValueError(f"the four column options must name different columns, got {columns}")
    sample = dt.date(2024, 12, 31)
    try:
        readable = dt.datetime.strptime(sample.strftime(chosen["date_format"]), chosen["date_format"]).date()
    except ValueError:
        readable = None
    if readable != sample:
        raise ValueError(
            f"option 'date_format' {chosen['date_format']!r} cannot write and read back a date "
            "(it needs a year, a month and a day)"
        )
    return chosen


class OccupancyForecastWorkload:
    """Forecast admissions and occupancy from a hospital's daily series (``operations_forecast``)."""

    kind = "operations_forecast"
    rank_by: tuple[str, bool] | None = None

    def __init__(self, source: Path, options: Mapping[str, Any]) -> None:
        """Read the table's header and check the options; raises ``SourceError`` for an unreadable
        table or missing columns and ``ValueError`` for bad options."""
        self.options = _options(options)
        self.origins: OriginMode = "all" if self.options["origins"] == "all" else "last"
        columns = SeriesColumns(
            site=self.options["site_column"],
            date=self.options["date_column"],
            admissions=self.options["admissions_column"],
            occupancy=self.options["occupancy_column"],
        )
        try:
            self.reader = HospitalSeriesReader(Path(source), columns, date_format=self.options["date_format"])
        except SeriesFormatError as exc:
            hint = ""
            if exc.problem.startswith("missing column"):
                hint = f" (name the columns with the options {', '.join(_COLUMN_OPTIONS)})"
            raise SourceError(f"{exc.problem}{hint}") from None

    def items(self) -> Iterator[Item | ItemFailure]:
        """Forecast origins and unusable rows, in row order (the same on every call)."""
        try:
            for event in forecast_origins(self.reader.records(), origins=self.origins, window=WINDOW_DAYS):
                if isinstance(event, RecordProblem):
                    yield ItemFailure(event.row, event.locator, event.reason)
                else:
                    yield Item(event.row, event.locator, event)
        except SeriesFormatError as exc:
            raise SourceError(exc.problem) from None

    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        """``features`` ``(n, 72)`` float32 for the items whose payload is a complete origin."""
        kept: list[Item] = []
        failures: list[ItemFailure] = []
        for item in items:
            origin = item.payload
            if not isinstance(origin, ForecastOrigin):
                failures.append(ItemFailure(item.index, item.locator, "not a forecast origin"))
            elif origin.admissions.shape != (WINDOW_DAYS,) or origin.occupancy.shape != (WINDOW_DAYS,):
                failures.append(
                    ItemFailure(item.index, item.locator, f"history is not {WINDOW_DAYS} days long")
                )
            else:
                kept.append(item)
        features, _ = origin_features([item.payload for item in kept])
        return {INPUT_NAME: features}, kept, failures

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        """Seven rows per item (horizons 1..7), quantiles in real units, clipped at 0."""
        if OUTPUT_NAME not in outputs:
            raise ValueError(
                f"the model returned {sorted(outputs)}; expected an output named {OUTPUT_NAME!r}"
            )
        forecast = np.asarray(outputs[OUTPUT_NAME], dtype=np.float64)
        expected = (len(items), len(TARGETS), HORIZON_DAYS, len(QUANTILE_LABELS))
        if forecast.shape != expected:
            raise ValueError(f"output {OUTPUT_NAME!r} has shape {forecast.shape}; expected {expected}")
        origins: list[ForecastOrigin] = [item.payload for item in items]
        if origins:
            scales = window_scales(
                np.stack([o.admissions for o in origins]), np.stack([o.occupancy for o in origins])
            )
        else:
            scales = np.zeros((0, 2))
        values = np.maximum(forecast * scales[:, :, None, None], 0.0)
        horizon = np.tile(np.arange(1, HORIZON_DAYS + 1, dtype=np.int32), len(items))
        origin_dates = np.repeat(np.array([o.date for o in origins], dtype="datetime64[D]"), HORIZON_DAYS)
        columns: dict[str, Any] = {
            "index": np.repeat(np.array([item.index for item in items], dtype=np.int64), HORIZON_DAYS),
            "site": np.repeat(np.array([o.site for o in origins], dtype=object), HORIZON_DAYS),
            "origin_date": origin_dates,
            "target_date": origin_dates + horizon,
            "horizon": horizon,
        }
        for k, target in enumerate(TARGETS):
            for q, label in enumerate(QUANTILE_LABELS):
                columns[f"{target}_{label}"] = values[:, k, :, q].reshape(-1)
        return pa.table(
            [pa.array(columns[field.name], field.type) for field in RESULT_SCHEMA], schema=RESULT_SCHEMA
        )

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        """No sink of its own: the runner writes the generic ``parquet`` and ``csv`` sinks."""
        return False
