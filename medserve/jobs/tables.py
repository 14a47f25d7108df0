"""Streamed reading of CSV and Parquet tables (one record batch in memory at a time)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from medserve.jobs.workload import SourceError

_BLOCK_BYTES = 1 << 20


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _csv_options(path: Path) -> tuple[pa_csv.ReadOptions, pa_csv.ParseOptions, pa_csv.ConvertOptions]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # Every column read as text: values are checked row by row, so one bad cell fails one item only.
    return (
        pa_csv.ReadOptions(block_size=_BLOCK_BYTES),
        pa_csv.ParseOptions(delimiter=delimiter),
        pa_csv.ConvertOptions(column_types={}, strings_can_be_null=False, auto_dict_encode=False),
    )


def table_columns(path: Path) -> list[str]:
    """The column names of a CSV/TSV or Parquet table; ``SourceError`` when it cannot be read as one."""
    try:
        if _is_parquet(path):
            return list(pq.ParquetFile(path).schema_arrow.names)
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise SourceError(f"{path.name}: expected a .csv, .tsv or .parquet table")
        read, parse, _ = _csv_options(path)
        with path.open("rb") as handle:
            header = handle.readline().decode("utf-8", errors="replace").strip()
        if not header:
            raise SourceError(f"{path.name} is empty: no header row")
        return [name.strip().strip('"') for name in header.split(parse.delimiter)]
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path.name} cannot be read as a table: {exc}") from None


def iter_table_rows(path: Path, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Each row's ``columns`` as a dict, in file order; CSV values are strings (empty when missing)."""
    for batch in iter_table_batches(path, columns):
        names = batch.schema.names
        values = [batch.column(i).to_pylist() for i in range(len(names))]
        for k in range(batch.num_rows):
            yield {name: values[i][k] for i, name in enumerate(names)}


def iter_table_batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` (CSV columns as strings), streamed."""
    if _is_parquet(path):
        yield from pq.ParquetFile(path).iter_batches(batch_size=8192, columns=list(columns))
        return
    read, parse, _ = _csv_options(path)
    convert = pa_csv.ConvertOptions(
        include_columns=list(columns),
        column_types={name: pa.string() for name in columns},
        strings_can_be_null=False,
    )
    with pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
        yield from reader
