"""Monitoring states: each replica's mergeable model monitoring windows, merged by the monitoring endpoint.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "monitoring_states",
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replica", "model", "version"),
    )
    op.create_index("ix_monitoring_states_updated_at", "monitoring_states", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_monitoring_states_updated_at", table_name="monitoring_states")
    op.drop_table("monitoring_states")
