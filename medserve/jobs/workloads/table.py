"""The ``table`` workload: any model over the numeric columns of a CSV or Parquet table.

Options::

    inputs: {INPUT0: [c0, c1, ...], INPUT1: [...]}   # model input → the columns that make its vector
    keep: [patient_ref, sample_id]                  # columns copied into the results (default none)
    datatype: FP32                                  # FP32 or FP64 inputs

Each row is one item; a row with a missing or non-numeric value in an input column is a failure
("row 17: column 'age' is empty"). Outputs with several values per row become columns
``<output>_0``, ``<output>_1`` ...; rows are numbered from 1 after the header.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medserve.jobs.tables import iter_table_rows, table_columns
from medserve.jobs.workload import Item, ItemFailure, SourceError

_DTYPES = {"FP32": np.float32, "FP64": np.float64}


class TableWorkload:
    kind = "table"
    rank_by: tuple[str, bool] | None = None

    def __init__(self, source: Path, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"inputs", "keep", "datatype", "rank_by"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown))}; expected inputs, keep, datatype, rank_by"
            )
        inputs = options.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError("inputs must map each model input to a list of column names")
        self.inputs: dict[str, list[str]] = {}
        for name, columns in inputs.items():
            if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
                raise ValueError(f"inputs.{name} must be a non-empty list of column names")
            self.inputs[str(name)] = list(columns)
        keep = options.get("keep", [])
        if not isinstance(keep, list) or not all(isinstance(c, str) for c in keep):
            raise ValueError("keep must be a list of column names")
        self.keep: list[str] = list(keep)
        datatype = str(options.get("datatype", "FP32")).upper()
        if datatype not in _DTYPES:
            raise ValueError(f"datatype must be FP32 or FP64, not {datatype}")
        self.dtype = _DTYPES[datatype]
        rank = options.get("rank_by")
        if rank is not None:
            if not isinstance(rank, str):
                raise ValueError("rank_by must be an output column name")
            self.rank_by = (rank, True)
        self.source = source
        present = set(table_columns(source))
        needed = [c for columns in self.inputs.values() for c in columns] + self.keep
        missing = [c for c in dict.fromkeys(needed) if c not in present]
        if missing:
            raise SourceError(
                f"missing column(s) {', '.join(missing)}; the table has {', '.join(sorted(present))}"
            )

    def items(self) -> Iterator[Item | ItemFailure]:
        wanted = list(dict.fromkeys([c for cols in self.inputs.values() for c in cols] + self.keep))
        for index, row in enumerate(iter_table_rows(self.source, wanted)):
            where = f"row {index + 1}"
            try:
                vectors = {name: self._vector(row, columns) for name, columns in self.inputs.items()}
            except ValueError as exc:
                yield ItemFailure(index, where, str(exc))
                continue
            yield Item(index, where, (vectors, {c: row[c] for c in self.keep}))

    def _vector(self, row: Mapping[str, Any], columns: Sequence[str]) -> np.ndarray:
        values = []
        for column in columns:
            value = row[column]
            if value is None or value == "":
                raise ValueError(f"column '{column}' is empty")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"column '{column}' is not a number: {str(value)[:40]!r}") from None
            if not math.isfinite(number):
                raise ValueError(f"column '{column}' is not finite: {value}")
            values.append(number)
        return np.asarray(values, dtype=self.dtype)

    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        inputs = {name: np.stack([item.payload[0][name] for item in items]) for name in self.inputs}
        return inputs, list(items), []

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        columns: dict[str, Any] = {"index": pa.array([item.index for item in items], pa.int64())}
        for column in self.keep:
            columns[column] = pa.array([item.payload[1][column] for item in items])
        for name, array in outputs.items():
            flat = np.asarray(array).reshape(len(items), -1)
            if flat.shape[1] == 1:
                columns[name] = pa.array(flat[:, 0])
            else:
                for k in range(flat.shape[1]):
                    columns[f"{name}_{k}"] = pa.array(flat[:, k])
        return pa.table(columns)

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        return False
