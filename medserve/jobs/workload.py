"""What an offline job runs over: a workload turns a source into items, items into model inputs, and
model outputs into result rows; the job runner does the chunking, batching, commits and resumption.

A workload is the clinical adapter of a job (``medserve/clinical/<domain>/`` does the domain work; the
workload in ``medserve/jobs/workloads/<domain>.py`` glues it to this interface). It holds no state
about progress: the runner may stop it at any item and start it again from the first item, so
``items()`` must yield the same items with the same indices every time it is called on the same source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    """One unit of work read from the source."""

    index: int
    """0-based ordinal in the source, stable across runs (failed items take an index too)."""
    locator: str
    """Where it is in the source, for people: ``"line 1234"``, ``"record 17 (ZINC0001)"``, ``"row 5"``."""
    payload: Any
    """The domain object (a parsed variant, a molecule, a forecast window)."""


@dataclass(frozen=True)
class ItemFailure:
    """An item that could not be read, featurised or scored; recorded and skipped, never fatal."""

    index: int
    locator: str
    reason: str


class SourceError(ValueError):
    """The source cannot be read at all (missing, unreadable, wrong format): refused at submit."""


class WithRoom(Protocol):
    """The runner's way to write while the disk may be full (see ``PipelineWorkload.run_chunk``)."""

    def __call__(self, write: Callable[[], T], what: str) -> T: ...


class PipelineWorkload(Protocol):
    """Optional, for workloads whose items are not one tensor each (a DICOM series goes through an
    imaging pipeline that makes many model calls): the runner calls ``run_chunk`` instead of
    ``featurise`` → score → ``rows``. ``scorer`` is the job's ``CoreScorer`` (``service``, ``loop``,
    ``caller``, ``priority_class``, ``timeout_s``). Returns the chunk's result rows (with the
    ``index`` column) and the items that failed; every other item counts as scored. Whatever it writes
    besides the rows must be idempotent: the chunk is run again if the job dies before its commit.
    ``with_room(write, what)`` runs ``write()`` and returns its value; while the disk is full the job
    pauses (saying it was ``what``) and tries the same write again, as the runner does with its own."""

    def run_chunk(
        self, items: Sequence[Item], scorer: Any, with_room: WithRoom
    ) -> tuple[pa.Table | None, list[ItemFailure]]: ...


class Workload(Protocol):
    """The domain half of a job. Implementations are constructed by ``open_workload`` (see
    ``medserve/jobs/workloads/__init__.py``) from the job spec's ``source`` path and ``options``,
    and must raise ``SourceError`` there for a source that cannot be read at all."""

    kind: str
    """The job spec's ``workload`` value, e.g. ``"variant_scoring"``."""

    rank_by: tuple[str, bool] | None
    """For the ``hits`` sink: the result column to rank by and whether higher is better (None when
    ranking means nothing for this workload)."""

    def items(self) -> Iterator[Item | ItemFailure]:
        """Stream the source in a deterministic order, holding O(1) items in memory."""
        ...

    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        """Model inputs for one chunk: ``(inputs, kept, failures)``; every array's axis 0 has
        ``len(kept)`` rows, in the order of ``kept``; items that cannot be featurised are failures."""
        ...

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        """Result rows for the ``items`` that were scored (axis 0 of each output matches ``items``).

        The table must have an ``index`` column (int64, the item's index) first; the other columns
        are the workload's results (identifiers, scores, intervals...). Several rows per item are
        allowed (e.g. one per forecast horizon)."""
        ...

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        """Write a domain-specific sink (``"vcf"``...) from the result parts, in index order, to
        ``path`` (a temporary path the runner renames into place). Return False when
        ``sink_format`` is not one this workload writes itself; the runner then writes the generic
        ones (``parquet``, ``csv``, ``hits``)."""
        ...
