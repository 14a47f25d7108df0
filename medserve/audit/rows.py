"""Audit records in the database: a chain's head, fast batch inserts, and paged reading by seq.

Every function works on one chain (``chain``: the writing replica's id, ``""`` for a single server's
one chain); :func:`chains` lists them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from medserve.audit.record import (
    GENESIS,
    RECORD_FIELDS,
    AuditRecord,
    RecordValues,
    check_values,
    record_tuple,
)
from medserve.store.database import Database
from medserve.store.sql import describe_error
from medserve.store.tables import AuditRecordRow
from medserve.values.errors import InvalidInput, StoreUnavailable

#: The advisory lock key (PostgreSQL) that serialises processes flushing audit records.
AUDIT_LOCK_KEY: Final = 0x6D656473_0002

_COLUMNS: Final = ", ".join(RECORD_FIELDS)
_SQLITE_INSERT: Final = (
    f"INSERT INTO audit_records (chain, {_COLUMNS}) VALUES ({', '.join('?' * (len(RECORD_FIELDS) + 1))})"
)
_POSTGRES_COPY: Final = f"COPY audit_records (chain, {_COLUMNS}) FROM STDIN"


class MalformedRecord(InvalidInput):
    """A stored audit row that is not a record (a wrong type, e.g. after a manual edit)."""

    def __init__(self, seq: object, reason: str) -> None:
        super().__init__(f"audit record seq {seq} is malformed: {reason}")
        self.seq = seq
        self.reason = reason


_SELECT_COLUMNS: Final = tuple(getattr(AuditRecordRow, name) for name in RECORD_FIELDS)


def database_head(connection: Connection, chain: str = "") -> tuple[int, str]:
    """The chain's newest record's seq and hash; ``(0, GENESIS)`` for a chain with no record."""
    row = connection.execute(
        select(AuditRecordRow.seq, AuditRecordRow.hash)
        .where(AuditRecordRow.chain == chain)
        .order_by(AuditRecordRow.seq.desc())
        .limit(1)
    ).first()
    return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)


def record_at(connection: Connection, seq: int, chain: str = "") -> AuditRecord | None:
    """The chain's record at ``seq``; None if there is none. :class:`MalformedRecord` if it is not a
    record."""
    row = connection.execute(
        select(*_SELECT_COLUMNS).where(AuditRecordRow.chain == chain, AuditRecordRow.seq == seq)
    ).first()
    return _to_record(row) if row is not None else None


def _to_record(row: Sequence[object]) -> AuditRecord:
    try:
        values = check_values(dict(zip(RECORD_FIELDS, row)))
    except InvalidInput as exc:
        raise MalformedRecord(row[0], str(exc)) from exc
    return AuditRecord(**values)  # type: ignore[arg-type]


def insert_records(connection: Connection, records: Sequence[RecordValues], chain: str = "") -> None:
    """Insert ``records`` of ``chain`` in the connection's open transaction (the driver's bulk path
    where known).

    A seq or hash already present raises :class:`sqlalchemy.exc.IntegrityError`.
    """
    if not records:
        return
    dialect = connection.dialect
    if dialect.name == "sqlite" or (dialect.name == "postgresql" and dialect.driver == "psycopg"):
        dbapi = dialect.loaded_dbapi
        rows = [(chain, *record_tuple(values)) for values in records]
        driver = connection.connection.driver_connection
        if driver is None:
            raise StoreUnavailable("audit records: the database connection is closed")
        try:
            if dialect.name == "sqlite":
                driver.executemany(_SQLITE_INSERT, rows)
            else:
                with driver.cursor() as cursor, cursor.copy(_POSTGRES_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)
        except dbapi.Error as exc:
            raise DBAPIError.instance(
                None, None, exc, dbapi.Error, hide_parameters=True, dialect=dialect
            ) from exc
        return
    connection.execute(insert(AuditRecordRow), [{"chain": chain, **values} for values in records])


def chains(database: Database) -> list[str]:
    """The chains the database holds, by name (``""``, a single server's, first)."""
    try:
        with database.engine.connect() as connection:
            found = connection.execute(select(AuditRecordRow.chain).distinct()).scalars().all()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"audit records cannot be read: {describe_error(exc)}") from exc
    return sorted(str(chain) for chain in found)


def iter_records(
    database: Database, *, chain: str = "", after_seq: int = 0, page: int = 1000
) -> Iterator[AuditRecord]:
    """Every record of ``chain`` with seq above ``after_seq`` in seq order, read in pages of ``page``.

    Raises :class:`MalformedRecord` at a row that is not a record, :class:`StoreUnavailable` if the
    database cannot be read.
    """
    while True:
        try:
            with database.engine.connect() as connection:
                rows = connection.execute(
                    select(*_SELECT_COLUMNS)
                    .where(AuditRecordRow.chain == chain, AuditRecordRow.seq > after_seq)
                    .order_by(AuditRecordRow.seq)
                    .limit(page)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit records cannot be read: {describe_error(exc)}") from exc
        if not rows:
            return
        for row in rows:
            yield _to_record(row)
        after_seq = int(rows[-1][0])
