"""The store's tables, one class each (SQLAlchemy 2 declarative). Alembic migrations create them.

Times are UTC. SQLite hands ``DateTime`` values back naive; readers treat naive values as UTC.
Audit values that enter the hash chain are strings and integers only, so every database returns
exactly what was hashed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AuditRecordRow(Base):
    """One audit record; ``prev_hash`` is the previous record's ``hash`` in its chain.

    ``chain`` names the chain: the replica that wrote the record (``""`` for the one chain of a server
    with no ``replica_id``). Each chain is numbered and hash-linked on its own.
    """

    __tablename__ = "audit_records"

    chain: Mapped[str] = mapped_column(String(128), primary_key=True, default="", server_default="")
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(32))  # ISO 8601 UTC, microseconds, "Z"
    event: Mapped[str] = mapped_column(String(32), index=True)
    principal: Mapped[str] = mapped_column(String(128), default="")
    door: Mapped[str] = mapped_column(String(32), default="")
    model: Mapped[str] = mapped_column(String(256), default="", index=True)
    model_version: Mapped[str] = mapped_column(String(32), default="")
    model_digest: Mapped[str] = mapped_column(String(64), default="")
    device: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(128), default="")
    input_digest: Mapped[str] = mapped_column(String(64), default="")
    output_digest: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(64), default="")
    latency_us: Mapped[int] = mapped_column(BigInteger, default=0)
    study_ref: Mapped[str] = mapped_column(String(64), default="")
    patient_ref: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))  # not indexed: seq is the key, the chain checks it


class ApiTokenRow(Base):
    """An API token: only the SHA-256 of its secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the token
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ClientCertificateRow(Base):
    """A client certificate identity (mTLS): its subject common name, role and grants."""

    __tablename__ = "client_certificates"

    subject_cn: Mapped[str] = mapped_column(String(256), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ModelVersionRow(Base):
    """Lineage: a model version's artifact digest, recorded on first load, then immutable."""

    __tablename__ = "model_versions"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    artifact: Mapped[str] = mapped_column(String(512))  # file name inside the version folder
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the artifact
    first_loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signer: Mapped[str] = mapped_column(String(128), default="")  # key fingerprint, "" if unsigned
    validation: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class ModelPinRow(Base):
    """A rollback: the model serves ``version`` instead of what its version policy selects."""

    __tablename__ = "model_pins"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    pinned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pinned_by: Mapped[str] = mapped_column(String(128), default="")


class DicomSeriesRow(Base):
    """A DICOM series received by the server: its routing and processing state.

    ``state``: receiving → complete → processing → done, or unmatched / rejected / failed with
    ``reason``. ``attributes`` are the series-level attributes routing looks at (no patient data).
    """

    __tablename__ = "dicom_series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), index=True)
    pipeline: Mapped[str] = mapped_column(String(128), default="")
    rule: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    patient_ref: Mapped[str] = mapped_column(String(64), default="")
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DicomInstanceRow(Base):
    """A stored DICOM instance: where its file is (relative to the DICOM store folder)."""

    __tablename__ = "dicom_instances"

    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ImagingResultRow(Base):
    """A result object written for a series: a DICOM SEG or SR, or a FHIR bundle."""

    __tablename__ = "imaging_results"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "seg", "sr", "fhir"
    uid: Mapped[str] = mapped_column(String(64))  # SOP Instance UID, or the FHIR bundle id
    path: Mapped[str] = mapped_column(String(512))  # relative to the results folder
    model: Mapped[str] = mapped_column(String(256), default="")
    model_version: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExportRow(Base):
    """The outbox: one result to one destination, retried with backoff until sent.

    ``state``: pending → sent, or failed (not retryable, or out of attempts) with ``last_error``.
    """

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("result_id", "destination", name="uq_exports_result_destination"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    result_id: Mapped[str] = mapped_column(String(32), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    receipt: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ModelProfileRow(Base):
    """One point of a model's performance profile: a runtime on a device at a batch size.

    Rows of one ``medserve profile`` run share ``run_id`` and ``measured_at``; a profile is valid for
    its ``artifact_digest`` and hardware ``fingerprint`` only. ``source`` is ``profiler`` for measured
    rows and ``live`` for the estimates live traffic keeps current (one per point, updated in place).
    ``status`` ``unusable`` rows carry the ``error`` and no numbers.
    """

    __tablename__ = "model_profiles"
    __table_args__ = (Index("ix_model_profiles_lookup", "model", "artifact_digest", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer)
    artifact: Mapped[str] = mapped_column(String(512), default="")  # file name in the version folder
    artifact_digest: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    throughput: Mapped[float | None] = mapped_column(Float, nullable=True)  # inferences per second
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    joules_per_inference: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_source: Mapped[str] = mapped_column(String(16), default="")  # nvml, rapl, estimated
    samples: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # ok, unusable
    error: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16))  # profiler, live
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    """An offline inference job (``medserve job``): its spec, state and progress counters.

    ``state``: queued, running, paused (the sink's disk is full; retried), succeeded, failed,
    cancelled. ``cancel_requested`` is how any process asks the job's runner to stop; ``runner``
    names the process running it (``server:<pid>@<host>`` or ``standalone:<pid>@<host>``).
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_digest: Mapped[str] = mapped_column(String(64), index=True)
    workload: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16), index=True)
    submitted_by: Mapped[str] = mapped_column(String(128), default="")
    runner: Mapped[str] = mapped_column(String(128), default="")
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    items_done: Mapped[int] = mapped_column(BigInteger, default=0)  # scored and committed
    items_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    items_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # once known
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    busy_s: Mapped[float] = mapped_column(Float, default=0.0)  # time spent running, all attempts
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobChunkRow(Base):
    """A committed chunk: items ``[chunk * chunk_size, (chunk + 1) * chunk_size)`` of the source.

    Written in the same transaction as the chunk's failures and the job's counters, after the chunk's
    part file is in place; a chunk without a row is (re)done on resume.
    """

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    items: Mapped[int] = mapped_column(Integer)  # items of the source in this chunk, failures included
    scored: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)  # result rows in the part file
    part: Mapped[str] = mapped_column(String(256))  # file name in the job's parts folder
    committed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobFailureRow(Base):
    """An item that could not be read, featurised or scored, with where it is and why."""

    __tablename__ = "job_failures"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    locator: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)


class LeaseRow(Base):
    """A lease on a unit of work (see :mod:`medserve.store.leases`): who holds it, until when.

    ``kind`` names the work (``job``, ``export``, ``series``, ``alert``), ``key`` its id; ``token`` grows
    at every change of holder (fencing).
    """

    __tablename__ = "leases"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ReplicaRow(Base):
    """A medserve replica sharing this database: where it answers, what it runs, when it was last seen."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(256), default="")  # host:port of its HTTP door
    version: Mapped[str] = mapped_column(String(64), default="")  # medserve's version
    models: Mapped[list[str]] = mapped_column(JSON, default=list)  # names of the models it has loaded
    ready: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class MonitoringStateRow(Base):
    """A replica's model monitoring state of one model version (windows of mergeable statistics and
    sketches, :mod:`medserve.monitoring.state`), rewritten every few seconds; the monitoring endpoint
    merges every replica's recent rows."""

    __tablename__ = "monitoring_states"

    replica: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AlertDeliveryRow(Base):
    """One ward alert to one alert destination (a webhook), delivered under an ``alert`` lease.

    ``state``: pending → sent, or failed (refused in a way a resend cannot fix) with ``last_error``.
    ``payload`` is the alert as published (``Alert.to_json()``).
    """

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("alert_id", "destination", name="uq_alert_deliveries_alert_destination"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(64), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    receipt: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DicomPeerRow(Base):
    """A calling AE title allowed to associate with the DICOM Storage SCP, and the models it may feed."""

    __tablename__ = "dicom_peers"

    ae_title: Mapped[str] = mapped_column(String(16), primary_key=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every model
    name: Mapped[str] = mapped_column(String(128), default="")  # who or what sends as this title
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HubReleaseRow(Base):
    """A model version a hub published to an edge group: the artifact's digest, its publisher's
    signature document (``<artifact>.sig``) and the model's config.yaml, as edges will receive them."""

    __tablename__ = "hub_releases"

    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    artifact: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    config: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_by: Mapped[str] = mapped_column(String(128))


class HubPinRow(Base):
    """The version an edge group serves of a model instead of its newest release (a rollback)."""

    __tablename__ = "hub_pins"

    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    pinned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pinned_by: Mapped[str] = mapped_column(String(128))


class HubEdgeRow(Base):
    """An edge as its last sync described it (versions serving, backlog, refusals)."""

    __tablename__ = "hub_edges"

    edge: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str] = mapped_column(String(64))
    last_sync_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[dict[str, Any]] = mapped_column(JSON)


class HubUplinkRow(Base):
    """One uplink item a hub received from an edge, once: ``key`` is the edge's idempotency key."""

    __tablename__ = "hub_uplinks"

    edge: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HubAuditHeadRow(Base):
    """The last verified record of an edge's audit chain at the hub: the next range must follow it."""

    __tablename__ = "hub_audit_heads"

    edge: Mapped[str] = mapped_column(String(128), primary_key=True)
    chain: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class EdgeUplinkRow(Base):
    """An edge's outbox row: one item for its hub (audit range, sketch, job metadata, alert)."""

    __tablename__ = "edge_uplinks"
    __table_args__ = (UniqueConstraint("key", name="uq_edge_uplinks_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    receipt: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EdgeStateRow(Base):
    """An edge's small named facts: its last sync, audit cursors, counts of shed uplinks."""

    __tablename__ = "edge_state"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
