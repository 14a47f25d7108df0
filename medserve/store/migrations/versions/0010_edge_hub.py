"""Edge and hub: releases published per edge group, pins, the edges seen, uplinks received (deduplicated
by idempotency key), each edge's audit chain heads; on an edge, its uplink outbox and sync state.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "hub_releases",
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("group", "model", "version"),
    )
    op.create_table(
        "hub_pins",
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pinned_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("group", "model"),
    )
    op.create_table(
        "hub_edges",
        sa.Column("edge", sa.String(length=128), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("edge"),
    )
    op.create_table(
        "hub_uplinks",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("edge", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("edge", "key"),
    )
    op.create_index("ix_hub_uplinks_kind", "hub_uplinks", ["kind"])
    op.create_table(
        "hub_audit_heads",
        sa.Column("edge", sa.String(length=128), nullable=False),
        sa.Column("chain", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("edge", "chain"),
    )
    op.create_table(
        "edge_uplinks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", name="uq_edge_uplinks_key"),
    )
    op.create_index("ix_edge_uplinks_state", "edge_uplinks", ["state"])
    op.create_table(
        "edge_state",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("edge_state")
    op.drop_index("ix_edge_uplinks_state", table_name="edge_uplinks")
    op.drop_table("edge_uplinks")
    op.drop_table("hub_audit_heads")
    op.drop_index("ix_hub_uplinks_kind", table_name="hub_uplinks")
    op.drop_table("hub_uplinks")
    op.drop_table("hub_edges")
    op.drop_table("hub_pins")
    op.drop_table("hub_releases")
