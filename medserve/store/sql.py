"""SQL helpers every store user shares, for SQLite and PostgreSQL alike: a write lock and a
value-free description of a database error."""

from __future__ import annotations

from sqlalchemy import Connection, text


def lock_for_write(connection: Connection, key: int) -> None:
    """Start a write transaction that excludes other writers holding the same ``key`` until it ends.

    SQLite: ``BEGIN IMMEDIATE`` (one writer per database). PostgreSQL: a transaction-scoped advisory
    lock on ``key``.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def describe_error(exc: BaseException) -> str:
    """A short, value-free description of a database error (driver class and first message line)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(orig).__name__}: {first[:200]}"
