"""DICOM series, instances, imaging results and the export outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "dicom_instances",
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sop_uid"),
    )
    op.create_index(op.f("ix_dicom_instances_series_uid"), "dicom_instances", ["series_uid"], unique=False)
    op.create_table(
        "dicom_series",
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pipeline", sa.String(length=128), nullable=False),
        sa.Column("rule", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("patient_ref", sa.String(length=64), nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("series_uid"),
    )
    op.create_index(op.f("ix_dicom_series_state"), "dicom_series", ["state"], unique=False)
    op.create_index(op.f("ix_dicom_series_study_uid"), "dicom_series", ["study_uid"], unique=False)
    op.create_table(
        "exports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("result_id", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "destination", name="uq_exports_result_destination"),
    )
    op.create_index(op.f("ix_exports_result_id"), "exports", ["result_id"], unique=False)
    op.create_index(op.f("ix_exports_state"), "exports", ["state"], unique=False)
    op.create_table(
        "imaging_results",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_imaging_results_series_uid"), "imaging_results", ["series_uid"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_imaging_results_series_uid"), table_name="imaging_results")
    op.drop_table("imaging_results")
    op.drop_index(op.f("ix_exports_state"), table_name="exports")
    op.drop_index(op.f("ix_exports_result_id"), table_name="exports")
    op.drop_table("exports")
    op.drop_index(op.f("ix_dicom_series_study_uid"), table_name="dicom_series")
    op.drop_index(op.f("ix_dicom_series_state"), table_name="dicom_series")
    op.drop_table("dicom_series")
    op.drop_index(op.f("ix_dicom_instances_series_uid"), table_name="dicom_instances")
    op.drop_table("dicom_instances")
