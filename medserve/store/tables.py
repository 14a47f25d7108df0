"""The store's tables, one class each (SQLAlchemy 2 declarative). Alembic migrations create them.

Times are UTC. SQLite hands ``DateTime`` values back naive; readers treat naive values as UTC.
Audit values that enter the hash chain are strings and integers only, so every database returns
exactly what was hashed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AuditRecordRow(Base):
    """One audit record; ``prev_hash`` is the previous record's ``hash`` (the chain)."""

    __tablename__ = "audit_records"

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
