"""Result parts and sinks: each chunk's rows as a Parquet part file (written atomically), and the
job's output assembled from the parts in index order when it ends.

Every file is written to a temporary name beside its place, flushed to disk and renamed, so a crash
leaves either the old file or the new one, never half of one. ``hits`` keeps the best ``top_k`` rows
by one column while streaming the parts, so memory holds ``top_k`` plus one part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from medserve.values.errors import InvalidInput
from medserve.values.files import fsync_directory

#: OS errors that mean "no room": the job pauses and tries again instead of failing.
NO_SPACE_ERRNOS = frozenset({28, 122, 27})  # ENOSPC, EDQUOT, EFBIG


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``; renamed onto ``final`` (after fsync) when the block ends
    without an error, removed otherwise."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    temporary = Path(name)
    os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; results are meant to be read
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        fsync_directory(final.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_part(path: Path, table: pa.Table) -> None:
    """One chunk's result rows, atomically."""
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_parts(paths: Sequence[Path]) -> Iterator[pa.Table]:
    for path in paths:
        yield pq.read_table(path)


def write_generic(
    parts: Iterator[pa.Table],
    sink_format: str,
    path: Path,
    *,
    top_k: int = 100,
    rank_by: tuple[str, bool] | None = None,
) -> int:
    """Write ``parquet``, ``csv`` or ``hits`` from the parts to ``path``; returns the rows written."""
    if sink_format == "hits":
        if rank_by is None:
            raise InvalidInput("a hits sink needs a column to rank by (sink.rank_by)")
        return _write_hits(parts, path, top_k, rank_by)
    if sink_format not in ("parquet", "csv"):
        raise InvalidInput(f"sink format '{sink_format}' is not one this workload writes")
    rows = 0
    writer: pq.ParquetWriter | pa_csv.CSVWriter | None = None
    schema: pa.Schema | None = None
    try:
        for table in parts:
            if writer is None:
                schema = table.schema
                writer = (
                    pq.ParquetWriter(path, schema)
                    if sink_format == "parquet"
                    else pa_csv.CSVWriter(path, schema)
                )
            writer.write_table(table if table.schema == schema else table.cast(schema))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all: still an output file, with nothing in it
        path.write_bytes(b"")
    return rows


def _write_hits(parts: Iterator[pa.Table], path: Path, top_k: int, rank_by: tuple[str, bool]) -> int:
    column, descending = rank_by
    best: pa.Table | None = None
    for table in parts:
        if column not in table.column_names:
            raise InvalidInput(
                f"hits: the results have no column '{column}' ({', '.join(table.column_names)})"
            )
        table = table.filter(pc.invert(pc.is_nan(table[column].cast(pa.float64()))))
        merged = table if best is None else pa.concat_tables([best, table.cast(best.schema)])
        order = "descending" if descending else "ascending"
        # Ties keep index order: sort by the column, then by index.
        best = merged.sort_by([(column, order), ("index", "ascending")]).slice(0, top_k)
    if best is None:
        path.write_bytes(b"")
        return 0
    ranked = best.add_column(0, "rank", pa.array(np.arange(1, best.num_rows + 1), pa.int64()))
    if path.suffix.lower() == ".parquet":
        pq.write_table(ranked, path)
    else:
        pa_csv.write_csv(ranked, path)
    return int(ranked.num_rows)
