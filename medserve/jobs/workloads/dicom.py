"""``dicom_studies``: re-score a folder of DICOM studies offline through the imaging pipelines.

The source is a folder, read recursively (hidden files and folders skipped). An item is a **series**:
the files sharing a SeriesInstanceUID, found by reading headers only
(``medserve.imaging.folder_scan``); series are numbered in (StudyInstanceUID, SeriesInstanceUID)
order, then every file that is not a usable DICOM instance takes the next index, in path order, as a
failure naming the file. A folder without any DICOM instance is refused.

For each series, ``run_chunk`` (the runner calls it instead of featurise → score → rows) does what
the imaging service does for a series received over the network: it routes the series with the
configured rules, runs the chosen pipeline through ``medserve.imaging.series_runner`` (the one runner
both use) with the models called through the core in the job's priority class (not the pipeline's),
and writes the chosen results (DICOM SEG, Comprehensive 3D SR, FHIR Bundle) into
``<results_dir>/<StudyInstanceUID>/<SeriesInstanceUID>/``. Each series is one audited ``inference``
record (door ``job:<id>``), with the pipeline's model and version, the patient and study pseudonyms,
and digests of the file names and of the summary.

The results are written into a staging folder beside the final one and renamed over it, so a chunk
done again after a crash replaces a series' results instead of adding a second set. A series that no
rule matches is a result row with status ``unmatched`` and the reason; a series the pipeline refuses
(unreadable instances, inconsistent geometry, too few slices...) is a failure with the reason. A
pipeline's model that is not loaded is loaded first, as the imaging service and the repository API
load it: the job's principal needs ``manage`` on the model, and the load is audited (``model.load``,
door ``job:<id>``). Export destinations of the imaging configuration are not used: the files stay in
``results_dir``.

Options:

- ``results_dir`` (required): where the results go; a relative path is taken from the folder that
  holds the source folder; it must not lie inside the source (the results would be read as input
  the next time);
- ``imaging_config``: the imaging YAML whose ``pipelines`` and ``routes`` are used (relative as
  above); default the built-in example pipelines and routes (CT → ``ct-lesions``, CR/DX →
  ``chest-xray``);
- ``write``: which results to keep, a subset of ``[seg, pm, sr, fhir]`` (default all; a
  classification pipeline has no SEG, and Parametric Maps (``pm``) only when it explains its findings).

Result rows: ``index``, ``study_instance_uid``, ``series_instance_uid``, ``modality``,
``instances``, ``pipeline``, ``model``, ``model_version``, ``status`` (``done`` or ``unmatched``),
``summary`` (e.g. ``"2 lesion(s), total volume 5.1 mL"``), ``reason`` (the routing decision) and
``files`` (the written files, comma separated, relative to ``results_dir``). Ranking means nothing
here; the generic ``parquet`` and ``csv`` sinks hold the rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medserve.clinical.dicom.results import ImagingResult
from medserve.clinical.dicom.routing import load_rules, route
from medserve.imaging.config import load_config
from medserve.imaging.folder_scan import FolderScan, ScannedSeries, first_series_file, scan_folder
from medserve.imaging.pipelines import PipelineSpec
from medserve.imaging.results_writer import write_results
from medserve.imaging.series_runner import run_series
from medserve.jobs.scoring import CoreScorer
from medserve.jobs.workload import Item, ItemFailure, SourceError, WithRoom
from medserve.values.errors import InvalidConfig, InvalidInput
from medserve.values.files import fsync_directory

RESULT_KINDS = ("seg", "pm", "sr", "fhir")
"""What ``write`` may choose from."""

DONE = "done"
UNMATCHED = "unmatched"

RESULT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("modality", pa.string()),
        ("instances", pa.int32()),
        ("pipeline", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("status", pa.string()),
        ("summary", pa.string()),
        ("reason", pa.string()),
        ("files", pa.string()),
    ]
)
"""The columns of the result rows."""

_OPTIONS = ("results_dir", "imaging_config", "write")
_STAGING, _RETIRED = ".staging-", ".retired-"


def _path_option(name: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"option {name!r} must be a non-empty path, not {value!r}")
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _write_option(value: Any) -> tuple[str, ...]:
    if value is None:
        return RESULT_KINDS
    chosen = [value] if isinstance(value, str) else value
    if not isinstance(chosen, list) or not chosen or not all(isinstance(v, str) for v in chosen):
        raise ValueError(
            f"option 'write' must be a non-empty list of {', '.join(RESULT_KINDS)}, not {value!r}"
        )
    kinds = {v.strip().lower() for v in chosen}
    unknown = sorted(kinds - set(RESULT_KINDS))
    if unknown:
        raise ValueError(
            f"option 'write': unknown result kind(s) {', '.join(unknown)}; known: {', '.join(RESULT_KINDS)}"
        )
    return tuple(kind for kind in RESULT_KINDS if kind in kinds)


class DicomStudiesWorkload:
    """Route, run and write results for every series of a folder of DICOM files (``dicom_studies``)."""

    kind = "dicom_studies"
    rank_by: tuple[str, bool] | None = None

    def __init__(self, source: Path, options: Mapping[str, Any]) -> None:
        """Check the options and that the folder holds at least one DICOM instance; raises
        ``SourceError`` for a source that is not such a folder and ``ValueError`` for bad options."""
        self.source = Path(source).resolve()
        if not self.source.is_dir():
            raise SourceError("not a folder (dicom_studies reads a folder of DICOM files)")
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown dicom_studies option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(_OPTIONS)}"
            )
        if "results_dir" not in options:
            raise ValueError("option 'results_dir' is required: the folder the DICOM results go to")
        base = self.source.parent
        self.results_dir = _path_option("results_dir", options["results_dir"], base)
        if self.results_dir == self.source or self.results_dir.is_relative_to(self.source):
            raise ValueError(
                f"option 'results_dir' ({self.results_dir}) lies inside the source folder; the results "
                "would be read as input the next time: choose a folder outside it"
            )
        if self.results_dir.exists() and not self.results_dir.is_dir():
            raise ValueError(f"option 'results_dir' ({self.results_dir}) is a file, not a folder")
        self.write = _write_option(options.get("write"))
        config_option = options.get("imaging_config")
        config_path = None if config_option is None else _path_option("imaging_config", config_option, base)
        try:
            config = load_config(config_path, self.results_dir)
            self.rules = load_rules(config.routes)
        except InvalidConfig as exc:
            raise ValueError(f"option 'imaging_config': {exc}") from None
        self.pipelines: dict[str, PipelineSpec] = config.pipeline_specs()
        for rule in self.rules:
            if rule.pipeline not in self.pipelines:
                raise ValueError(
                    f"route '{rule.name}' names pipeline '{rule.pipeline}', which is not configured"
                )
        self.models: tuple[str, ...] = tuple(sorted({self.pipelines[r.pipeline].model for r in self.rules}))
        """The models the routed pipelines call."""
        if first_series_file(self.source) is None:
            raise SourceError("no DICOM instance of any series in the folder or its subfolders")
        self._scan: FolderScan | None = None
        self._lock = threading.Lock()

    # -- the source -------------------------------------------------------------------------------
    def _scanned(self) -> FolderScan:
        with self._lock:  # scanned once per workload: the runner reads the items more than once
            if self._scan is None:
                self._scan = scan_folder(self.source)
            return self._scan

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.source).as_posix()

    def items(self) -> Iterator[Item | ItemFailure]:
        """The series in (study, series) UID order, then the unusable files in path order."""
        scan = self._scanned()
        for index, series in enumerate(scan.series):
            folder = self._relative(series.paths[0].parent)  # "." for the source folder itself
            locator = f"series {series.series_instance_uid} ({len(series.paths)} file(s) in {folder})"
            yield Item(index, locator, series)
        offset = len(scan.series)
        for k, unreadable in enumerate(scan.unreadable):
            yield ItemFailure(offset + k, f"file {self._relative(unreadable.path)}", unreadable.reason)

    # -- one chunk --------------------------------------------------------------------------------
    def run_chunk(
        self, items: Sequence[Item], scorer: CoreScorer, with_room: WithRoom
    ) -> tuple[pa.Table | None, list[ItemFailure]]:
        """Route, run (on the job's event loop, this worker thread waiting) and write each series;
        the result rows and the series that failed. A series is all or nothing: its results replace any
        earlier ones; while the disk is full, the job pauses before writing them and tries again."""
        rows: list[dict[str, Any]] = []
        failures: list[ItemFailure] = []
        for item in items:
            outcome = self._series(item, scorer, with_room)
            if isinstance(outcome, ItemFailure):
                failures.append(outcome)
            else:
                rows.append(outcome)
        if not rows:
            return None, failures
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), failures

    def _series(self, item: Item, scorer: CoreScorer, with_room: WithRoom) -> dict[str, Any] | ItemFailure:
        series = item.payload
        if not isinstance(series, ScannedSeries):
            return ItemFailure(item.index, item.locator, "not a DICOM series of this source")
        decision = route(self.rules, series.attributes, len(series.paths))
        row: dict[str, Any] = {
            "index": item.index,
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
            "modality": series.modality,
            "instances": len(series.paths),
            "pipeline": decision.pipeline or "",
            "model": "",
            "model_version": "",
            "status": UNMATCHED,
            "summary": "",
            "reason": decision.reason,
            "files": "",
        }
        if decision.pipeline is None:
            return row
        spec = dataclasses.replace(self.pipelines[decision.pipeline], priority_class=scorer.priority_class)
        try:
            result = self._run(item.index, series, spec, scorer)
        except InvalidInput as exc:  # SeriesRejected included: the series cannot be used as it is
            return ItemFailure(item.index, item.locator, f"pipeline '{spec.name}': {exc}")
        files = with_room(
            lambda: self._publish(result, series),
            f"writing the results of series {series.series_instance_uid}",
        )
        row.update(
            model=result.algorithm.name,
            model_version=result.algorithm.version,
            status=DONE,
            summary=result.summary,
            files=",".join(files),
        )
        return row

    def _run(
        self, index: int, series: ScannedSeries, spec: PipelineSpec, scorer: CoreScorer
    ) -> ImagingResult:
        """``run_series`` on the job's event loop; this, the job's worker thread, waits for it."""
        running = asyncio.run_coroutine_threadsafe(
            run_series(
                scorer.service,
                scorer.caller,
                spec,
                series.paths,
                patient=series.patient_id,
                study=series.study_instance_uid,
                request_id=f"{scorer.caller.request_id}-series-{index}",
                name_of=self._relative,
                timeout_s=scorer.timeout_s,
            ),
            scorer.loop,
        )
        try:
            return running.result(scorer.timeout_s)
        except TimeoutError:  # the series may still be running: stop waiting for it
            running.cancel()
            raise

    # -- results ----------------------------------------------------------------------------------
    def _publish(self, result: ImagingResult, series: ScannedSeries) -> list[str]:
        """Write the results into a staging folder, keep the chosen kinds, and rename it over the
        series' folder; the written files relative to ``results_dir``."""
        study_dir = self.results_dir / series.study_instance_uid
        final = study_dir / series.series_instance_uid
        study_dir.mkdir(parents=True, exist_ok=True)
        for prefix in (_STAGING, _RETIRED):  # left by a run that stopped midway
            for leftover in study_dir.glob(f"{prefix}{series.series_instance_uid}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        token = uuid.uuid4().hex[:12]
        staging = study_dir / f"{_STAGING}{series.series_instance_uid}-{token}"
        retired = study_dir / f"{_RETIRED}{series.series_instance_uid}-{token}"
        try:
            kept: list[str] = []
            for kind, _, path in write_results(result, staging):
                if kind in self.write:
                    kept.append(path.name)
                else:
                    path.unlink()
            fsync_directory(staging)
            if final.exists():
                os.replace(final, retired)
            os.replace(staging, final)
            fsync_directory(study_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        folder = f"{series.study_instance_uid}/{series.series_instance_uid}"
        return [f"{folder}/{name}" for name in sorted(kept)]

    # -- the rest of the workload interface ------------------------------------------------------
    def featurise(self, items: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[Item], list[ItemFailure]]:
        """Not used: a series is not one tensor; the runner calls ``run_chunk``."""
        raise NotImplementedError("dicom_studies runs whole imaging pipelines: the runner calls run_chunk")

    def rows(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> pa.Table:
        """Not used: ``run_chunk`` returns the rows."""
        raise NotImplementedError("dicom_studies runs whole imaging pipelines: the runner calls run_chunk")

    def write_sink(
        self, parts: Iterator[pa.Table], sink_format: str, path: Path, options: Mapping[str, Any]
    ) -> bool:
        """No sink of its own (the DICOM results are already in ``results_dir``): the runner writes
        the generic ``parquet`` and ``csv`` sinks."""
        return False
