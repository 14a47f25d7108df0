"""Searching the audit trail in the database: by time, principal, door, model, event, status and
patient or study pseudonym, newest first, a page at a time (``before_seq`` pages back)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from medserve.audit.record import AuditRecord, from_row
from medserve.store.database import Database
from medserve.store.sql import describe_error
from medserve.store.tables import AuditRecordRow
from medserve.values.errors import InvalidInput, StoreUnavailable

_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?Z?$")


@dataclass(frozen=True)
class AuditQuery:
    since: str = ""
    """ISO 8601 UTC (``2026-01-31T08:00``): records at or after it."""
    until: str = ""
    """ISO 8601 UTC: records before it."""
    principal: str = ""
    door: str = ""
    model: str = ""
    event: str = ""
    status: str = ""
    patient_refs: tuple[str, ...] = ()
    """Patient pseudonyms to match (any of them)."""
    study_ref: str = ""
    before_seq: int | None = None
    limit: int = 100


def _utc(value: str, what: str) -> str:
    """A time from a form (``2026-01-31T08:00``, seconds and ``Z`` optional) as the records write it."""
    text = value.strip()
    if not _TIME.match(text):
        raise InvalidInput(f"'{what}' must be a UTC date and time like 2026-01-31T08:00, not {value!r}")
    text = text.rstrip("Z")
    if "T" not in text:
        text += "T00:00"
    if text.count(":") == 1:
        text += ":00"
    return text


def search(database: Database, query: AuditQuery) -> list[AuditRecord]:
    """The records matching every given field of ``query``, newest first; ``StoreUnavailable`` when
    the database cannot be read."""
    if not 1 <= query.limit <= 1000:
        raise InvalidInput("an audit search returns 1 to 1000 records at a time")
    statement = select(AuditRecordRow)
    if query.since:
        statement = statement.where(AuditRecordRow.time >= _utc(query.since, "since"))
    if query.until:
        statement = statement.where(AuditRecordRow.time < _utc(query.until, "until"))
    for column, value in (
        (AuditRecordRow.principal, query.principal),
        (AuditRecordRow.door, query.door),
        (AuditRecordRow.model, query.model),
        (AuditRecordRow.event, query.event),
        (AuditRecordRow.status, query.status),
        (AuditRecordRow.study_ref, query.study_ref),
    ):
        if value:
            statement = statement.where(column == value)
    if query.patient_refs:
        statement = statement.where(AuditRecordRow.patient_ref.in_(query.patient_refs))
    if query.before_seq is not None:
        statement = statement.where(AuditRecordRow.seq < query.before_seq)
    statement = statement.order_by(AuditRecordRow.seq.desc()).limit(query.limit)
    try:
        with database.session() as session:
            return [from_row(row) for row in session.scalars(statement).all()]
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"audit records cannot be searched: {describe_error(exc)}") from exc
