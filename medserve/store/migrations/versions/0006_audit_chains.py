"""Audit chains per replica: ``audit_records.chain`` (the writing replica's id, "" for the one chain of
a single server) and the key ``(chain, seq)``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records", recreate="auto") as batch:
        batch.add_column(sa.Column("chain", sa.String(length=128), server_default="", nullable=False))
        batch.drop_constraint("pk_audit_records", type_="primary")
        batch.create_primary_key("pk_audit_records", ["chain", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_records", recreate="auto") as batch:
        batch.drop_constraint("pk_audit_records", type_="primary")
        batch.create_primary_key("pk_audit_records", ["seq"])
        batch.drop_column("chain")
