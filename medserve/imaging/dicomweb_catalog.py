"""What DICOMweb retrieval may serve: received instances and medserve's SEG / SR results, by grant.

A principal without model grants reads every instance. A principal with grants reads an instance
only when it was routed to (or, for a result, written by) a model it holds a grant for: a received
series that no pipeline took is visible only to principals without grants. A study is the union of
the instances the principal may read, so two principals may see different series of one study.

Headers are read from the files (without pixel data) and kept in a bounded cache keyed by path and
modification time, so repeated QIDO-RS queries do not re-read unchanged files.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select

from medserve.imaging.pipelines import PipelineSpec
from medserve.store.database import Database
from medserve.store.tables import DicomInstanceRow, DicomSeriesRow, ImagingResultRow
from medserve.values.access import Action, Principal

RESULT_KINDS = ("seg", "sr", "pm")
_CACHE_ENTRIES = 8192


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One instance DICOMweb may serve: its file, and the model it belongs to ('' when none)."""

    path: Path
    model: str
    header: pydicom.Dataset

    @property
    def study_uid(self) -> str:
        return str(self.header.get("StudyInstanceUID", ""))

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def sop_uid(self) -> str:
        return str(self.header.get("SOPInstanceUID", ""))


def may_read(principal: Principal, model: str) -> bool:
    """Whether ``principal`` may read an instance belonging to ``model`` ('' for unrouted)."""
    if not principal.may(Action.READ):
        return False
    return principal.models is None or (bool(model) and model in principal.models)


class Catalog:
    """The instances medserve holds, filtered by grant, with their headers."""

    def __init__(
        self,
        database: Database,
        dicom_root: Path,
        results_root: Path,
        pipelines: Mapping[str, PipelineSpec],
    ) -> None:
        self.database = database
        self.dicom_root = dicom_root
        self.results_root = results_root
        self.pipelines = pipelines
        self._headers: OrderedDict[tuple[Path, int], pydicom.Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def entries(
        self,
        principal: Principal,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[CatalogEntry]:
        """The instances ``principal`` may read, narrowed to a study, series or instance."""
        principal.require(Action.READ)
        found: list[CatalogEntry] = []
        for path, model in self._candidates(study_uid, series_uid, sop_uid):
            if not may_read(principal, model):
                continue
            header = self.header(path)
            if header is None:
                continue
            entry = CatalogEntry(path, model, header)
            if study_uid and entry.study_uid != study_uid:
                continue
            if series_uid and entry.series_uid != series_uid:
                continue
            if sop_uid and entry.sop_uid != sop_uid:
                continue
            found.append(entry)
        return found

    def _candidates(
        self, study_uid: str | None, series_uid: str | None, sop_uid: str | None
    ) -> list[tuple[Path, str]]:
        with self.database.session() as session:
            received = select(DicomInstanceRow.path, DicomSeriesRow.pipeline).join(
                DicomSeriesRow, DicomSeriesRow.series_uid == DicomInstanceRow.series_uid
            )
            if study_uid:
                received = received.where(DicomSeriesRow.study_uid == study_uid)
            if series_uid:
                received = received.where(DicomInstanceRow.series_uid == series_uid)
            if sop_uid:
                received = received.where(DicomInstanceRow.sop_uid == sop_uid)
            results = select(ImagingResultRow.path, ImagingResultRow.model).where(
                ImagingResultRow.kind.in_(RESULT_KINDS)
            )
            if study_uid:
                results = results.where(ImagingResultRow.study_uid == study_uid)
            if sop_uid:
                results = results.where(ImagingResultRow.uid == sop_uid)
            rows = [
                (self.dicom_root / path, self._model_of(pipeline))
                for path, pipeline in session.execute(received).all()
            ]
            # A result's own series differs from its source series: filtered on the header.
            rows += [(self.results_root / path, model) for path, model in session.execute(results).all()]
        return rows

    def _model_of(self, pipeline: str) -> str:
        spec = self.pipelines.get(pipeline) if pipeline else None
        return spec.model if spec is not None else ""

    def header(self, path: Path) -> pydicom.Dataset | None:
        """The file's header without pixel data (cached), or None when it is gone or unreadable."""
        try:
            key = (path, path.stat().st_mtime_ns)
        except OSError:
            return None
        with self._lock:
            cached = self._headers.get(key)
            if cached is not None:
                self._headers.move_to_end(key)
                return cached
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, ValueError, EOFError, pydicom.errors.InvalidDicomError):
            return None
        with self._lock:
            self._headers[key] = header
            while len(self._headers) > _CACHE_ENTRIES:
                self._headers.popitem(last=False)
        return header
