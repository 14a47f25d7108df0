"""The server's durable store: SQLAlchemy 2 over SQLite (default) or PostgreSQL, migrated by Alembic."""
