"""The rows of a leased outbox (exports of imaging results, deliveries of ward alerts): one item to
one destination, retried with exponential back-off until it is sent or fails for good. Every change
to a row is fenced by the lease it was claimed under, so a replica that lost the row changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from medserve.store.database import Database
from medserve.store.leases import Lease, LeaseBook

PENDING, SENT, FAILED = "pending", "sent", "failed"
_TEXT_LIMIT = 2000


def backoff_s(attempts: int, base_s: float, max_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before try ``attempts + 1``: ``base_s`` doubling per attempt up to ``max_s``, but never
    sooner than the receiver's ``Retry-After`` (itself capped at ``max_s``)."""
    delay: float = min(max_s, base_s * 2.0 ** min(attempts - 1, 20))
    return max(delay, min(retry_after_s or 0.0, max_s))


def retry_later(
    database: Database,
    leases: LeaseBook,
    lease: Lease | None,
    table: Any,
    row_id: str,
    attempts: int,
    error: str,
    delay_s: float,
) -> None:
    """Record a failed try of row ``row_id`` of ``table`` and when to try again."""
    with database.session() as session, session.begin():
        if lease is not None:
            leases.fence(session.connection(), lease)
        session.execute(
            update(table)
            .where(table.id == row_id)
            .values(
                attempts=attempts,
                last_error=error[:_TEXT_LIMIT],
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay_s),
            )
        )


def finish(
    database: Database,
    leases: LeaseBook,
    lease: Lease | None,
    table: Any,
    row_id: str,
    state: str,
    error: str,
    attempts: int = 0,
    receipt: str = "",
) -> None:
    """Set row ``row_id`` of ``table`` to ``state`` (``SENT`` or ``FAILED``), with the error or receipt."""
    values: dict[str, object] = {
        "state": state,
        "last_error": error[:_TEXT_LIMIT],
        "receipt": receipt[:_TEXT_LIMIT],
    }
    if attempts:
        values["attempts"] = attempts
    if state == SENT:
        values["sent_at"] = datetime.now(UTC)
    with database.session() as session, session.begin():
        if lease is not None:
            leases.fence(session.connection(), lease)
        session.execute(update(table).where(table.id == row_id).values(**values))
