"""Retrying a failed export needs ``manage`` on the model that made the exported result: an admin token
limited to other models neither sees the export nor can requeue it (before, any admin could)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from medserve.imaging.outbox import FAILED, PENDING, Outbox
from medserve.store.database import Database
from medserve.store.migrate import upgrade
from medserve.store.tables import ExportRow, ImagingResultRow
from medserve.values.access import Principal, Role
from medserve.values.errors import PermissionDenied


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    database = Database(f"sqlite:///{tmp_path / 'medserve.db'}")
    upgrade(database.engine)
    now = datetime.now(UTC)
    with database.session() as session, session.begin():
        session.add(
            ImagingResultRow(
                id="r1",
                series_uid="1.2.3",
                study_uid="1.2",
                kind="sr",
                uid="1.2.3.4",
                path="sr.dcm",
                model="ct_lesion_segmentation",
                model_version="1",
                created_at=now,
            )
        )
        session.add(
            ExportRow(
                id="e1",
                result_id="r1",
                destination="pacs",
                state=FAILED,
                attempts=3,
                next_attempt_at=now,
                last_error="refused",
                created_at=now,
            )
        )
    yield Outbox(database, tmp_path / "results", [])
    database.dispose()


def _state(outbox: Outbox) -> str:
    with outbox.database.session() as session:
        return str(session.scalar(select(ExportRow.state).where(ExportRow.id == "e1")))


def _principal(role: Role, models: set[str] | None) -> Principal:
    return Principal("operator", role, frozenset(models) if models is not None else None, "token:test")


def test_an_admin_limited_to_other_models_cannot_retry_it(outbox: Outbox) -> None:
    assert not outbox.retry("e1", _principal(Role.ADMIN, {"simple"}))  # as if it did not exist
    assert _state(outbox) == FAILED


def test_a_service_token_granted_the_model_lacks_the_role(outbox: Outbox) -> None:
    with pytest.raises(PermissionDenied, match="may not manage"):
        outbox.retry("e1", _principal(Role.SERVICE, {"ct_lesion_segmentation"}))
    assert _state(outbox) == FAILED


@pytest.mark.parametrize("models", [None, {"ct_lesion_segmentation"}])
def test_an_admin_granted_the_model_requeues_it(outbox: Outbox, models: set[str] | None) -> None:
    assert not outbox.retry("absent", _principal(Role.ADMIN, models))
    assert outbox.retry("e1", _principal(Role.ADMIN, models))
    assert _state(outbox) == PENDING
