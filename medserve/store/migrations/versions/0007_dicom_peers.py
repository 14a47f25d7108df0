"""DICOM peers: calling AE titles allowed to associate with the Storage SCP, managed at run time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "dicom_peers",
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ae_title"),
    )


def downgrade() -> None:
    op.drop_table("dicom_peers")
