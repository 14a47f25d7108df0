"""The database: one SQLAlchemy engine, sessions, and Alembic migrations to the newest schema.

SQLite (the default, in the data directory) runs in WAL mode with a busy timeout so the server and
the command line can use it at once; PostgreSQL is chosen by URL (``postgresql+psycopg://...``).
SQL errors never carry bound parameters (``hide_parameters``), so logging one leaks no values.

SQLite keeps the driver's own transaction handling: ``BEGIN`` is sent before the first write, not
before reads. Code that must read and write atomically starts ``BEGIN IMMEDIATE`` itself
(see :func:`lock_for_write`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from medserve.store.migrate import upgrade
from medserve.store.sql import describe_error
from medserve.values.errors import InvalidConfig, StoreUnavailable


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'medserve.db').resolve()}"


class Database:
    """One database by URL; ``busy_timeout_s`` (SQLite) and ``connect_timeout_s`` (PostgreSQL) bound waits."""

    def __init__(self, url: str, *, busy_timeout_s: float = 10.0, connect_timeout_s: float = 10.0) -> None:
        if busy_timeout_s < 0 or connect_timeout_s <= 0:
            raise InvalidConfig("database timeouts must be positive")
        self.url = url
        connect_args: dict[str, Any] = {}
        try:
            parsed = make_url(url)
            backend = parsed.get_backend_name()
            if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            elif backend == "postgresql":
                connect_args["connect_timeout"] = max(1, round(connect_timeout_s))
            self.engine: Engine = create_engine(
                parsed, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args
            )
        except (SQLAlchemyError, ValueError) as exc:
            raise InvalidConfig(f"database URL is not usable: {type(exc).__name__}") from exc
        if self.engine.dialect.name == "sqlite":
            busy_ms = round(busy_timeout_s * 1000)

            def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                    _wal_mode(cursor, busy_timeout_s)
                    cursor.execute("PRAGMA synchronous=NORMAL")
                    cursor.execute("PRAGMA foreign_keys=ON")
                finally:
                    cursor.close()

            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def session(self) -> Session:
        """A new session; use ``with db.session() as s, s.begin(): ...``."""
        return self._sessions()

    @contextmanager
    def transaction(self, what: str) -> Iterator[Session]:
        """A session in a transaction, committed on leaving; a store that cannot be reached raises
        :class:`StoreUnavailable` naming ``what`` (e.g. ``lineage store``)."""
        try:
            with self.session() as session, session.begin():
                yield session
        except OperationalError as exc:
            raise StoreUnavailable(f"{what}: {exc.orig or exc}") from None

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (serialised between processes)."""
        upgrade(self.engine)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers ``SELECT 1``."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unreachable: {describe_error(exc)}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _wal_mode(cursor: Any, busy_timeout_s: float) -> None:
    """Switch a SQLite database to WAL (persistent; a no-op once done).

    The switch needs the database to itself and SQLite may refuse it at once, without waiting, when
    another connection is opening the same new database; so retry for up to the busy timeout.
    """
    deadline = time.monotonic() + max(busy_timeout_s, 0.05)
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            mode = ""
        if mode in ("wal", "memory") or time.monotonic() > deadline:
            return  # an in-memory database has no WAL
        time.sleep(0.01)
