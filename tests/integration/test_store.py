"""Migrations: a fresh database gets the schema of ``tables.py``; migrating again changes nothing."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from medserve.store.database import Database
from medserve.store.migrate import SCRIPT_LOCATION, current_revision, head_revision
from medserve.store.tables import Base

TABLES = {"audit_records", "api_tokens", "client_certificates", "model_versions", "model_pins"}


def differences(database: Database, metadata: MetaData) -> list[object]:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrate_creates_the_schema(database: Database) -> None:
    assert current_revision(database.engine) is None
    database.migrate()
    assert current_revision(database.engine) == head_revision()
    inspector = inspect(database.engine)
    assert set(inspector.get_table_names()) >= TABLES
    indexes = {index["name"] for index in inspector.get_indexes("audit_records")}
    assert {"ix_audit_records_event", "ix_audit_records_model"} <= indexes
    assert inspector.get_unique_constraints("audit_records") == []  # seq is the key; no index on hash


def test_migrate_twice_is_a_no_op(database: Database) -> None:
    database.migrate()
    before = inspect(database.engine).get_table_names()
    database.migrate()
    assert current_revision(database.engine) == head_revision()
    assert inspect(database.engine).get_table_names() == before


def test_migrated_schema_matches_the_tables(database: Database) -> None:
    database.migrate()
    assert differences(database, Base.metadata) == []


def test_the_comparison_would_see_a_difference(database: Database) -> None:
    database.migrate()
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["model_pins"].append_column(Column("extra", Integer, nullable=True))
    assert differences(database, changed)


def test_concurrent_migrations_serialise(database_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        db = Database(database_url)
        try:
            db.migrate()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    db = Database(database_url)
    assert current_revision(db.engine) == head_revision()
    db.dispose()


def test_migration_scripts_ship_as_packages() -> None:
    assert (SCRIPT_LOCATION / "__init__.py").is_file()
    assert (SCRIPT_LOCATION / "versions" / "__init__.py").is_file()
    assert (SCRIPT_LOCATION / "env.py").is_file()
