"""Stream a hospital's daily series from a CSV or Parquet table, one checked record per row.

A table holds one row per site and day with (at least) four columns, named by ``SeriesColumns``:
the site (any text), the date, the day's admissions and the midnight bed occupancy (non-negative
numbers). Other columns are ignored. The format is told by the content: a file that starts with the
Parquet magic bytes is Parquet, anything else is read as CSV (``.gz``/``.bz2`` names are decompressed).

The reader holds one batch in memory: Parquet is read in batches of ``batch_rows`` rows (row group by
row group), CSV with ``pyarrow.csv.open_csv`` in blocks of ``block_size`` bytes, every column as text
so that one bad cell spoils one row, not a block. Each data row is a ``DailyRecord`` or, when a value
is missing, unparsable, negative or out of range, a ``RecordProblem`` saying which and why; a CSV line
with the wrong number of fields is a problem too. Rows whose four cells are all empty (blank lines)
are skipped. Rows are numbered from 0 in source order, blank and malformed ones included; their
locator is ``"line N"`` in a CSV (the header is line 1; values must not contain line breaks) and
``"row N"`` (from 1) in Parquet.

Whether the dates follow one another is not the reader's business: see ``forecast_origins``.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

EARLIEST = dt.date(1900, 1, 1)
LATEST = dt.date(2999, 12, 24)
"""Dates outside ``EARLIEST``-``LATEST`` are refused (a forecast week must stay in the holiday calendar)."""

_PARQUET_MAGIC = b"PAR1"
_SHOWN = 40  # characters of a bad cell quoted in a reason
_HEADER_BLOCK = 64 * 1024  # bytes read to find the CSV header (malformed rows in it do not matter)


class SeriesFormatError(ValueError):
    """The table cannot be read at all: missing, not CSV or Parquet, or without a required column."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        """What is wrong, without the path."""


@dataclass(frozen=True)
class SeriesColumns:
    """Names of the four columns the reader needs."""

    site: str = "site"
    date: str = "date"
    admissions: str = "admissions"
    occupancy: str = "occupancy"

    def names(self) -> tuple[str, str, str, str]:
        """The four names, site first."""
        return (self.site, self.date, self.admissions, self.occupancy)


@dataclass(frozen=True)
class DailyRecord:
    """One valid row: a site's admissions and midnight occupancy on one day."""

    row: int
    """0-based ordinal of the row in the source."""
    locator: str
    site: str
    date: dt.date
    admissions: float
    occupancy: float


@dataclass(frozen=True)
class RecordProblem:
    """A row that cannot be used, with what could be read of it (site and date may be None)."""

    row: int
    locator: str
    reason: str
    site: str | None = None
    date: dt.date | None = None


class HospitalSeriesReader:
    """Reads a CSV or Parquet hospital series; the constructor reads only the header or schema."""

    def __init__(
        self,
        path: Path,
        columns: SeriesColumns | None = None,
        *,
        date_format: str = "%Y-%m-%d",
        block_size: int = 1 << 20,
        batch_rows: int = 65_536,
    ) -> None:
        """Check that ``path`` is a readable table with the named columns of usable types.

        ``date_format`` (``strptime`` codes) parses dates held as text. Raises ``SeriesFormatError``
        naming the path and the problem."""
        self.path = Path(path)
        self.columns = columns or SeriesColumns()
        self.date_format = date_format
        self.block_size = block_size
        self.batch_rows = batch_rows
        if not self.path.exists():
            raise SeriesFormatError(self.path, "no such file")
        if not self.path.is_file():
            raise SeriesFormatError(self.path, "not a file")
        with self.path.open("rb") as stream:
            self.format: Literal["csv", "parquet"] = "parquet" if stream.read(4) == _PARQUET_MAGIC else "csv"
        schema = self._parquet_schema() if self.format == "parquet" else self._csv_schema()
        missing = [name for name in self.columns.names() if name not in schema.names]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise SeriesFormatError(
                self.path,
                f"missing column(s) {listed}; the {self.format.upper()} columns are "
                f"{', '.join(schema.names) or '(none)'}",
            )
        if self.format == "parquet":
            _check_parquet_types(self.path, schema, self.columns)

    def _parquet_schema(self) -> pa.Schema:
        try:
            return pq.ParquetFile(self.path).schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise SeriesFormatError(self.path, f"unreadable Parquet file: {exc}") from None

    def _csv_schema(self) -> pa.Schema:
        try:
            reader = pa_csv.open_csv(
                self.path,
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=_HEADER_BLOCK),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            )
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise SeriesFormatError(self.path, f"not a readable CSV table: {exc}") from None
        schema = reader.schema
        reader.close()
        return schema

    def _csv_read_options(self) -> pa_csv.ReadOptions:
        return pa_csv.ReadOptions(use_threads=False, block_size=self.block_size)

    def records(self) -> Iterator[DailyRecord | RecordProblem]:
        """Every data row in source order, as a record or a problem (blank rows skipped)."""
        if self.format == "parquet":
            yield from self._parquet_records()
        else:
            yield from self._csv_records()

    def _parquet_records(self) -> Iterator[DailyRecord | RecordProblem]:
        parquet = pq.ParquetFile(self.path)
        first = 0
        for batch in parquet.iter_batches(batch_size=self.batch_rows, columns=list(self.columns.names())):
            locators = [f"row {row + 1}" for row in range(first, first + batch.num_rows)]
            yield from self._batch_records(batch, range(first, first + batch.num_rows), locators)
            first += batch.num_rows

    def _csv_records(self) -> Iterator[DailyRecord | RecordProblem]:
        malformed: list[tuple[int, str]] = []

        def skip(row: pa_csv.InvalidRow) -> str:
            if row.number is None or row.number < 2:
                return "error"  # cannot be placed: the reader fails with pyarrow's message
            found = "field" if row.actual_columns == 1 else "fields"
            malformed.append(
                (row.number, f"expected {row.expected_columns} fields, found {row.actual_columns} {found}")
            )
            return "skip"

        names = self.columns.names()
        reader = pa_csv.open_csv(
            self.path,
            read_options=self._csv_read_options(),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=skip, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(names),
                column_types={name: pa.string() for name in names},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
        line = 2  # the first data line
        try:
            for batch in reader:
                # The rows pyarrow skipped (reported by ``skip`` while it parsed the block) take their
                # line numbers out of the sequence and are merged back in line order.
                malformed.sort()
                skipped: list[RecordProblem] = []
                lines: list[int] = []
                for _ in range(batch.num_rows):
                    while malformed and malformed[0][0] == line:
                        skipped.append(RecordProblem(line - 2, f"line {line}", malformed.pop(0)[1]))
                        line += 1
                    lines.append(line)
                    line += 1
                parsed = self._batch_records(batch, [n - 2 for n in lines], [f"line {n}" for n in lines])
                yield from heapq.merge(parsed, skipped, key=lambda record: record.row)
            for number, reason in sorted(malformed):
                yield RecordProblem(number - 2, f"line {number}", reason)
        except pa.ArrowInvalid as exc:
            raise SeriesFormatError(self.path, f"CSV unreadable after line {line - 1}: {exc}") from None
        finally:
            reader.close()

    def _batch_records(
        self, batch: pa.RecordBatch, rows: range | list[int], locators: list[str]
    ) -> Iterator[DailyRecord | RecordProblem]:
        site_name, date_name, admissions_name, occupancy_name = self.columns.names()
        sites, site_problems = _sites(batch.column(site_name), site_name)
        dates, date_problems = _dates(batch.column(date_name), date_name, self.date_format)
        admissions, admission_problems = _numbers(batch.column(admissions_name), admissions_name)
        occupancy, occupancy_problems = _numbers(batch.column(occupancy_name), occupancy_name)
        blank = np.ones(batch.num_rows, dtype=bool)
        for column in batch.columns:
            blank &= column.is_null().to_numpy(zero_copy_only=False)
        for i, (row, locator) in enumerate(zip(rows, locators)):
            reasons = [
                problems[i]
                for problems in (site_problems, date_problems, admission_problems, occupancy_problems)
                if i in problems
            ]
            site, date = sites[i], dates[i]
            if reasons:
                if not blank[i]:  # blank lines are skipped
                    yield RecordProblem(row, locator, "; ".join(reasons), site, date)
                continue
            if site is None or date is None:  # unreachable: a missing value always has a reason
                raise RuntimeError(f"{locator}: site or date missing without a reason")
            yield DailyRecord(row, locator, site, date, float(admissions[i]), float(occupancy[i]))


def _check_parquet_types(path: Path, schema: pa.Schema, columns: SeriesColumns) -> None:
    """Refuse columns whose Parquet type can never hold the value (checked once, at open)."""
    date_type = schema.field(columns.date).type
    if not (pa.types.is_temporal(date_type) and not pa.types.is_time(date_type) or _is_text(date_type)):
        raise SeriesFormatError(
            path, f"column '{columns.date}' is {date_type}; expected a date, a timestamp or text"
        )
    for name in (columns.admissions, columns.occupancy):
        kind = schema.field(name).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        if not numeric and not _is_text(kind):
            raise SeriesFormatError(path, f"column '{name}' is {kind}; expected numbers")


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_text(kind.value_type)
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _sites(column: pa.Array, name: str) -> tuple[list[str | None], dict[int, str]]:
    values: list[str | None] = pc.cast(column, pa.string()).to_pylist()
    problems: dict[int, str] = {}
    for i, value in enumerate(values):
        if value is None or not value.strip():
            problems[i] = f"missing {name}"
            values[i] = None
    return values, problems


def _dates(column: pa.Array, name: str, date_format: str) -> tuple[list[dt.date | None], dict[int, str]]:
    """Dates of a text or temporal column, None where missing, unparsable or out of range."""
    problems: dict[int, str] = {}
    missing = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if _is_text(column.type):
        column = pc.utf8_trim_whitespace(column)
        parsed = pc.strptime(column, format=date_format, unit="s", error_is_null=True)
        days = parsed.to_numpy(zero_copy_only=False).astype("datetime64[D]")
        # pyarrow's strptime rolls invalid days over (2023-02-30 becomes 2023-03-02): dates that do
        # not print back as written are parsed again, strictly.
        same = pc.fill_null(pc.equal(pc.strftime(parsed, format=date_format), column), False)
        for i in np.flatnonzero(~missing & ~same.to_numpy(zero_copy_only=False)).tolist():
            written = column[i].as_py()
            try:
                days[i] = np.datetime64(dt.datetime.strptime(written, date_format).date(), "D")
            except ValueError:
                days[i] = np.datetime64("NaT")
                problems[i] = f"unparsable {name} {_shown(written)} (expected {date_format})"
    else:
        days = column.to_numpy(zero_copy_only=False).astype("datetime64[D]")
    out_of_range = ~np.isnat(days) & (
        (days < np.datetime64(EARLIEST, "D")) | (days > np.datetime64(LATEST, "D"))
    )
    for i in np.flatnonzero(out_of_range).tolist():
        problems[i] = f"{name} {days[i]} is outside {EARLIEST}..{LATEST}"
        days[i] = np.datetime64("NaT")
    for i in np.flatnonzero(missing).tolist():
        problems[i] = f"missing {name}"
    return list(days.astype(object)), problems


def _numbers(column: pa.Array, name: str) -> tuple[np.ndarray, dict[int, str]]:
    """float64 values of a numeric or text column and a reason for each unusable one."""
    problems: dict[int, str] = {}
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    try:
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # text that is not all numbers: parse cell by cell
        values = np.full(len(column), np.nan)
        for i, text in enumerate(column.to_pylist()):
            if text is None:
                continue
            try:
                values[i] = float(text)
            except ValueError:
                problems[i] = f"unparsable {name} {_shown(text)}"
    missing = column.is_null().to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(~np.isfinite(values) & ~missing).tolist():
        problems.setdefault(i, f"{name} is not a finite number ({values[i]})")
    for i in np.flatnonzero(values < 0).tolist():
        problems[i] = f"negative {name} ({values[i]:g})"
    for i in np.flatnonzero(missing).tolist():
        problems[i] = f"missing {name}"
    return values, problems
