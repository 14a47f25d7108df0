"""Alembic migrations, run in process: ``upgrade(engine)`` brings a database to the newest revision.

The scripts live in ``medserve/store/migrations`` (shipped as packages); no ``alembic.ini`` is needed.
Concurrent upgrades (the server and a command at once) are serialised: SQLite by ``BEGIN IMMEDIATE``,
PostgreSQL by an advisory lock, and the whole upgrade is one transaction on both.

A new revision, for developers: ``command.revision(alembic_config(url), "message", autogenerate=True)``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from medserve.store.sql import describe_error, lock_for_write
from medserve.values.errors import StoreUnavailable

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"

#: The advisory lock key (PostgreSQL) that serialises migrations.
MIGRATION_LOCK_KEY = 0x6D656473_0001


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged scripts, on ``connection`` or ``url``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the packaged scripts know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreUnavailable("no migration scripts found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"database unreachable: {describe_error(exc)}") from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on ``engine`` in one locked transaction."""
    try:
        with engine.connect() as connection:
            lock_for_write(connection, MIGRATION_LOCK_KEY)
            command.upgrade(alembic_config(connection=connection), revision)
            connection.commit()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"database migration failed: {describe_error(exc)}") from exc
