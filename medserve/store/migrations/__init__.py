"""Alembic scripts of the store (a package so that setuptools ships them)."""
