"""ImagingService: DICOM instances in, results out, through the one inference core.

Doors (DIMSE C-STORE, DICOMweb STOW-RS) hand it whole Part-10 files with their caller; it stores
each durably before the door acknowledges, watches series until they have been quiet for
``quiet_time_s``, routes them, runs each through its pipeline (``series_runner``: one audited
inference, the model loaded first when it is not, the models called through the core's batchers),
writes SEG / SR / FHIR results and queues their exports in one transaction.

Everything is in the database, so a restart picks up where the last run stopped: series still
receiving are watched again, series routed or being processed are processed (again), exports still
pending are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import exists, select, update

from medserve.clinical.dicom import uid_redaction
from medserve.clinical.dicom.results import ImagingResult
from medserve.clinical.dicom.routing import RoutingRule, load_rules, route, series_attributes
from medserve.clinical.dicom.series_to_volume import SeriesRejected
from medserve.clinical.fhir_report import PSEUDONYM_SYSTEM
from medserve.core.service import InferenceService
from medserve.imaging import instance_store as states
from medserve.imaging import uploaders
from medserve.imaging.config import ImagingConfig
from medserve.imaging.destinations import Destination
from medserve.imaging.instance_store import InstanceStore, StoredInstance, parse_instance
from medserve.imaging.outbox import Outbox
from medserve.imaging.pipelines import OutsideIntendedUse, PipelineSpec, intended_use_failure
from medserve.imaging.results_writer import patient_id_of, write_results
from medserve.imaging.series_runner import run_series
from medserve.store.database import Database
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import LeaseBook
from medserve.store.tables import DicomSeriesRow, ExportRow, ImagingResultRow, LeaseRow
from medserve.values.access import Action, Caller, Principal
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import InvalidInput, MedserveError, PermissionDenied

log = logging.getLogger(__name__)

SERIES_LEASE = "series"


class StudyMismatch(InvalidInput):
    """An instance sent to one study belongs to another; ``header`` is its (pixel-less) header."""

    def __init__(self, message: str, header: pydicom.Dataset) -> None:
        super().__init__(message)
        self.header = header


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class ImagingService:
    def __init__(
        self,
        service: InferenceService,
        database: Database,
        data_dir: Path,
        config: ImagingConfig,
        destinations: Sequence[Destination],
        *,
        quiet_time_s: float = 5.0,
        workers: int = 1,
        leases: LeaseBook | None = None,
    ) -> None:
        uid_redaction.install()  # highdicom's and pydicom's log lines carry no UID either
        self.service = service
        self.database = database
        self.store = InstanceStore(database, data_dir / "dicom")
        self.results_root = data_dir / "results"
        self.results_root.mkdir(parents=True, exist_ok=True)
        self.pipelines: dict[str, PipelineSpec] = config.pipeline_specs()
        self.rules: list[RoutingRule] = load_rules(config.routes)
        self.fhir_subject, self.patient_identifier_system = (
            config.fhir_subject,
            config.patient_identifier_system,
        )
        self.quiet_time_s = quiet_time_s
        # replicas sharing the database process a series under a series lease (see process())
        self.leases = leases or LeaseBook(database, f"process-{uuid.uuid4().hex[:12]}", ttl_s=30.0)
        self._keeper = LeaseKeeper(self.leases)
        self.outbox = Outbox(
            database, self.results_root, destinations, audit=self._audit_export, leases=self.leases
        )
        self._workers = max(1, workers)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._keeper.start()
        requeue = await asyncio.to_thread(self._recover)
        for series_uid in requeue:
            self._enqueue(series_uid)
        self._tasks = [asyncio.create_task(self._watch(), name="dicom-series-watch")]
        self._tasks += [
            asyncio.create_task(self._work(), name=f"imaging-worker-{k}") for k in range(self._workers)
        ]
        self.outbox.start()

    async def stop(self) -> None:
        await self.outbox.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._keeper.stop)

    def _recover(self) -> list[str]:
        """Series interrupted while processing (nobody holds their series lease: the replica that
        processed them died or restarted) are processed again; routed ones are queued. Runs at start
        and on every pass of the series watch, so any replica takes over a dead one's series."""
        live = exists().where(
            LeaseRow.kind == SERIES_LEASE,
            LeaseRow.key == DicomSeriesRow.series_uid,
            LeaseRow.expires_at > _now(),
        )
        with self.database.session() as session, session.begin():
            session.execute(
                update(DicomSeriesRow)
                .where(DicomSeriesRow.state == states.PROCESSING, ~live)
                .values(state=states.COMPLETE, reason="interrupted by a restart; processing again")
                .execution_options(synchronize_session=False)
            )
            return list(
                session.scalars(
                    select(DicomSeriesRow.series_uid).where(DicomSeriesRow.state == states.COMPLETE)
                ).all()
            )

    # -- ingestion --------------------------------------------------------------------------
    async def ingest(
        self, data: bytes, caller: Caller, *, study_instance_uid: str | None = None
    ) -> StoredInstance:
        """Store one instance durably (then the door may acknowledge it); audited as ``ingestion``.

        ``study_instance_uid``: the study the door was asked to store into (STOW-RS
        ``/studies/{study}``); an instance of another study raises ``StudyMismatch`` unstored.
        """
        caller.principal.require(Action.INFER)
        try:
            ds = await asyncio.to_thread(parse_instance, data)
            if study_instance_uid and str(ds.get("StudyInstanceUID", "")) != study_instance_uid:
                raise StudyMismatch("StudyInstanceUID differs from the one in the URL", ds)
            await asyncio.to_thread(self._require_grant, caller, ds)
        except (InvalidInput, PermissionDenied) as exc:
            await self.service.refuse(caller, "", exc)
            raise
        facts: dict[str, str] = {}

        async def work() -> StoredInstance:
            return await asyncio.to_thread(self.store.store, data, ds, uploaders.record_of(caller))

        stored = await self.service.call(
            caller,
            "",
            work,
            event="ingestion",
            input_digest=hashlib.sha256(data).hexdigest(),
            patient=str(ds.get("PatientID", "") or ""),
            study=str(ds.get("StudyInstanceUID", "") or ""),
            facts=facts,
        )
        return stored

    def _require_grant(self, caller: Caller, ds: pydicom.Dataset) -> None:
        """Refuse an instance whose series the routing would give a model its sender is not granted."""
        with self.database.session() as session:
            row = session.get(DicomSeriesRow, str(ds.get("SeriesInstanceUID", "")))
            count = (row.instances if row is not None else 0) + 1
        decision = route(self.rules, series_attributes(ds), count)
        spec = self.pipelines.get(decision.pipeline or "")
        if spec is not None and not caller.principal.may(Action.INFER, spec.model):
            raise PermissionDenied(
                f"the instance would be routed to pipeline '{spec.name}', and '{caller.principal.name}' "
                f"has no grant for its model '{spec.model}'"
            )

    # -- series watch and routing -------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, max(0.05, self.quiet_time_s / 4)))
            try:
                routed = await asyncio.to_thread(self._route_quiet_series)
                routed += await asyncio.to_thread(self._recover)
            except Exception:  # a database hiccup must not end the watch; series stay receiving
                log.exception("series watch pass failed; retrying")
                continue
            for series_uid in routed:
                self._enqueue(series_uid)

    def _route_quiet_series(self) -> list[str]:
        cutoff = _now() - timedelta(seconds=self.quiet_time_s)
        routed: list[str] = []
        with self.database.session() as session, session.begin():
            rows = session.scalars(
                select(DicomSeriesRow).where(
                    DicomSeriesRow.state == states.RECEIVING, DicomSeriesRow.last_received_at <= cutoff
                )
            ).all()
            for row in rows:
                if _utc(row.last_received_at) > cutoff:
                    continue
                decision = route(self.rules, row.attributes, row.instances)
                row.updated_at = _now()
                if decision.pipeline is None:
                    row.state, row.pipeline, row.rule, row.reason = states.UNMATCHED, "", "", decision.reason
                    log.info("series %s matched no routing rule", _ref(row.series_uid))
                    continue
                if decision.pipeline not in self.pipelines:
                    row.state, row.reason = states.FAILED, f"pipeline '{decision.pipeline}' is not configured"
                    continue
                outside = intended_use_failure(
                    self.pipelines[decision.pipeline], None, row.attributes, row.instances
                )
                if outside is not None:
                    row.state, row.pipeline, row.rule = (
                        states.UNMATCHED,
                        decision.pipeline,
                        decision.rule or "",
                    )
                    row.reason = f"rule '{decision.rule}' matched, but the series is {outside}"
                    log.info("series %s is outside its pipeline's intended use", _ref(row.series_uid))
                    continue
                spec = self.pipelines[decision.pipeline]
                ungranted = uploaders.grant_failure(row.attributes, spec.model, spec.name)
                if ungranted is not None:
                    row.state, row.pipeline, row.rule = states.UNMATCHED, "", decision.rule or ""
                    row.reason = ungranted
                    log.info("series %s left unrouted: its uploader has no grant", _ref(row.series_uid))
                    continue
                row.state, row.pipeline, row.rule = states.COMPLETE, decision.pipeline, decision.rule or ""
                row.reason = ""
                routed.append(row.series_uid)
        return routed

    def _enqueue(self, series_uid: str) -> None:
        if series_uid not in self._queued:
            self._queued.add(series_uid)
            self._queue.put_nowait(series_uid)

    # -- processing ---------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            series_uid = await self._queue.get()
            self._queued.discard(series_uid)
            try:
                await self.process(series_uid)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("processing series %s failed unexpectedly", _ref(series_uid))

    async def process(self, series_uid: str) -> None:
        """Process a routed series under its series lease (no-op when another replica holds it)."""
        lease = await asyncio.to_thread(self.leases.acquire, SERIES_LEASE, series_uid)
        if lease is None:
            return
        self._keeper.keep(lease)
        try:
            await self._process(series_uid)
        finally:
            await asyncio.to_thread(self._keeper.release, SERIES_LEASE, series_uid)

    async def _process(self, series_uid: str) -> None:
        row = await asyncio.to_thread(self._claim, series_uid)
        if row is None:
            return
        spec = self.pipelines[row.pipeline]
        uploader = uploaders.uploader_caller(row.attributes, uuid.uuid4().hex)
        caller = (uploader or Caller.system("dicom")).for_pipeline(spec.name)
        paths = await asyncio.to_thread(self.store.instance_paths, series_uid)
        patient_id = await asyncio.to_thread(_patient_id, paths)
        try:
            result = await run_series(
                self.service, caller, spec, paths, patient=patient_id, study=row.study_uid
            )
        except OutsideIntendedUse as exc:
            await asyncio.to_thread(self._set_state, series_uid, states.UNMATCHED, str(exc))
            log.info("series %s is outside its model's intended use", _ref(series_uid))
            return
        except SeriesRejected as exc:
            await asyncio.to_thread(self._set_state, series_uid, states.REJECTED, str(exc))
            log.info("series %s rejected: %s", _ref(series_uid), uid_redaction.redact(str(exc)))
            return
        except MedserveError as exc:
            await asyncio.to_thread(self._set_state, series_uid, states.FAILED, str(exc))
            log.warning("series %s failed: %s", _ref(series_uid), type(exc).__name__)
            return
        except Exception as exc:
            await asyncio.to_thread(
                self._set_state, series_uid, states.FAILED, f"internal error: {type(exc).__name__}"
            )
            raise
        try:
            await asyncio.to_thread(self._store_results, result)
        except Exception as exc:  # left processing, the series would be recovered and run again forever
            reason = f"writing the results failed: {type(exc).__name__}: {exc}"
            await asyncio.to_thread(self._set_state, series_uid, states.FAILED, reason)
            log.error("series %s: writing its results failed (%s)", _ref(series_uid), type(exc).__name__)
            return
        self.outbox.wake()

    def _claim(self, series_uid: str) -> DicomSeriesRow | None:
        with self.database.session() as session, session.begin():
            row = session.get(DicomSeriesRow, series_uid)
            if row is None or row.state != states.COMPLETE:
                return None
            row.state, row.updated_at = states.PROCESSING, _now()
            return row

    def _set_state(self, series_uid: str, state: str, reason: str) -> None:
        with self.database.session() as session, session.begin():
            session.execute(
                update(DicomSeriesRow)
                .where(DicomSeriesRow.series_uid == series_uid, DicomSeriesRow.state == states.PROCESSING)
                .values(state=state, reason=reason[:4000], updated_at=_now())
            )

    def _subject_of(self, result: ImagingResult) -> tuple[str, str] | None:
        """The FHIR report's subject identifier per ``fhir_subject``; None without a PatientID."""
        patient_id = patient_id_of(result)
        if not patient_id or self.fhir_subject == "none":
            return None
        if self.fhir_subject == "pseudonym":
            pseudonym = self.service.pseudonym("patient", patient_id)
            return (PSEUDONYM_SYSTEM, pseudonym) if pseudonym else None
        return self.patient_identifier_system, patient_id

    def _store_results(self, result: ImagingResult) -> None:
        folder = self.results_root / result.study_instance_uid / result.series_instance_uid
        written = write_results(result, folder, patient_identifier=self._subject_of(result))
        now = _now()
        with self.database.session() as session, session.begin():
            row = session.get(DicomSeriesRow, result.series_instance_uid)
            if row is None or row.state != states.PROCESSING:
                return  # a new instance arrived meanwhile: the series is processed again
            for kind, uid, path in written:
                result_row = ImagingResultRow(
                    id=uuid.uuid4().hex,
                    series_uid=result.series_instance_uid,
                    study_uid=result.study_instance_uid,
                    kind=kind,
                    uid=uid,
                    path=str(path.relative_to(self.results_root)),
                    model=result.algorithm.name,
                    model_version=result.algorithm.version,
                    created_at=now,
                )
                session.add(result_row)
                session.add_all(self.outbox.rows_for(result_row))
            row.state, row.reason, row.updated_at = states.DONE, result.summary, now

    async def _audit_export(self, export: ExportRow, result: ImagingResultRow, status: str) -> None:
        await self.service.record(
            AuditEvent(
                event="export",
                principal="medserve",
                door=f"export:{export.destination}",
                model=result.model,
                model_version=result.model_version,
                request_id=export.id,
                status="ok" if status == "ok" else "ExportFailed",
                study_ref=self.service.pseudonym("study", result.study_uid),
                detail=f"{result.kind} to {export.destination}"
                + ("" if status == "ok" else f": {status[:300]}"),
            )
        )

    # -- status -----------------------------------------------------------------------------
    def result_file(self, result_id: str) -> tuple[str, Path, str] | None:
        """``(kind, file, series UID)`` of the stored result ``result_id``; None when there is none."""
        with self.database.session() as session:
            row = session.get(ImagingResultRow, result_id)
            if row is None:
                return None
            return row.kind, self.results_root / row.path, row.series_uid

    def visible_studies(
        self, principal: Principal, study_uid: str | None = None, series_uid: str | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`studies` cut to the series ``principal`` may see (:func:`uploaders.visible_studies`):
        what every door that lists studies, series or results shows."""

        def model_of(pipeline: str) -> str | None:
            spec = self.pipelines.get(pipeline)
            return spec.model if spec is not None else None

        return uploaders.visible_studies(self.studies(study_uid, series_uid), principal, model_of)

    def studies(self, study_uid: str | None = None, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Received studies with their series, routing, results and exports (for the status API)."""
        with self.database.session() as session:
            query = select(DicomSeriesRow).order_by(DicomSeriesRow.first_received_at)
            if study_uid:
                query = query.where(DicomSeriesRow.study_uid == study_uid)
            if series_uid:
                query = query.where(DicomSeriesRow.series_uid == series_uid)
            series_rows = session.scalars(query).all()
            uids = [s.series_uid for s in series_rows]
            results = session.scalars(
                select(ImagingResultRow).where(ImagingResultRow.series_uid.in_(uids))
            ).all()
            exports = session.scalars(
                select(ExportRow).where(ExportRow.result_id.in_([r.id for r in results]))
            ).all()
        by_result: dict[str, list[dict[str, Any]]] = {}
        for e in exports:
            by_result.setdefault(e.result_id, []).append(
                {
                    "id": e.id,
                    "destination": e.destination,
                    "state": e.state,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                    "next_attempt_at": _iso(e.next_attempt_at) if e.state == "pending" else None,
                    "sent_at": _iso(e.sent_at) if e.sent_at else None,
                }
            )
        by_series: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            by_series.setdefault(r.series_uid, []).append(
                {
                    "id": r.id,
                    "kind": r.kind,
                    "uid": r.uid,
                    "model": r.model,
                    "model_version": r.model_version,
                    "created_at": _iso(r.created_at),
                    "exports": by_result.get(r.id, []),
                }
            )
        studies: dict[str, dict[str, Any]] = {}
        for s in series_rows:
            study = studies.setdefault(s.study_uid, {"study_instance_uid": s.study_uid, "series": []})
            study["series"].append(
                {
                    "series_instance_uid": s.series_uid,
                    "modality": s.modality,
                    "attributes": uploaders.without_uploaders(s.attributes),
                    "uploaded_by": uploaders.uploader_names(s.attributes),
                    "instances": s.instances,
                    "state": s.state,
                    "pipeline": s.pipeline,
                    "rule": s.rule,
                    "reason": s.reason,
                    "first_received_at": _iso(s.first_received_at),
                    "last_received_at": _iso(s.last_received_at),
                    "results": by_series.get(s.series_uid, []),
                }
            )
        return list(studies.values())


def _iso(value: datetime | None) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z") if value else ""


def _ref(uid: str) -> str:
    """A short, non-identifying handle for logs (no UIDs, no PHI in logs)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def _patient_id(paths: Sequence[Path]) -> str:
    for path in paths[:1]:
        with contextlib.suppress(OSError, ValueError, EOFError):
            return str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientID", "") or "")
    return ""
