"""Leases: a unit of work (a job, an export, a series, an alert delivery) held by one replica at a time.

A lease is a row of ``leases`` keyed by ``(kind, key)``: its ``holder`` (a replica id), an ``expires_at``
the holder pushes forward with a heartbeat (:meth:`LeaseBook.renew`), and a ``token`` that grows by one
at every change of holder (a fencing token). A replica that dies stops renewing; once its leases have
expired any other replica takes the work over. Work done under a lease is committed with
:meth:`LeaseBook.fence` in the same transaction, so a holder that lost its lease (paused past the
expiry, cut off from the database) cannot commit over its successor.

Claiming picks candidate rows of the work table that no live lease covers. On PostgreSQL the candidates
are read ``FOR UPDATE SKIP LOCKED``, so replicas claiming at once take different rows instead of waiting
on each other; on SQLite (one process, the default) the claim runs under ``BEGIN IMMEDIATE``. Either way
the lease is written by an upsert that only replaces an expired lease or one of the same holder, so no
two holders ever hold one key.

Times are the replicas' UTC clocks: a lease's bound is its ``ttl_s`` plus the clock skew between
replicas (keep them on NTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, case, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from medserve.store.database import Database
from medserve.store.sql import describe_error, lock_for_write
from medserve.store.tables import LeaseRow
from medserve.values.errors import InvalidConfig, StoreUnavailable
from medserve.values.times import as_utc

#: The advisory lock key (PostgreSQL) a claim would use if it could not skip locked rows; SQLite's
#: ``BEGIN IMMEDIATE`` serialises claims instead.
LEASE_LOCK_KEY = 0x6D656473_0003


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Lease:
    """A lease held: what, by whom, with which fencing token, until when."""

    kind: str
    key: str
    holder: str
    token: int
    expires_at: datetime


class LeaseLost(StoreUnavailable):
    """This replica no longer holds a lease it worked under (it expired and another replica took it)."""


class LeaseBook:
    """The leases of one holder (a replica) with one time to live."""

    def __init__(self, database: Database, holder: str, ttl_s: float = 30.0) -> None:
        if ttl_s <= 0:
            raise InvalidConfig("lease ttl_s must be positive")
        if not holder:
            raise InvalidConfig("a lease holder needs a name")
        self.database = database
        self.holder = holder
        self.ttl_s = ttl_s
        #: Leases of this holder acquired before this moment belong to an earlier incarnation.
        self.started_at = utcnow()

    # -- taking ---------------------------------------------------------------------------------
    def acquire(self, kind: str, key: str) -> Lease | None:
        """Take (or keep) the lease on ``(kind, key)``; None while another holder's lease is live."""
        try:
            with self.database.engine.connect() as connection:
                if connection.dialect.name == "sqlite":
                    lock_for_write(connection, LEASE_LOCK_KEY)
                lease = self._upsert(connection, kind, key, utcnow())
                connection.commit()
                return lease
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"lease on {kind} {key}: {describe_error(exc)}") from exc

    def claim(self, kind: str, candidates: Select[Any], limit: int) -> list[Lease]:
        """Lease up to ``limit`` keys from ``candidates`` (a select of one key column of a work table,
        in the order work should be done) that no live lease covers (this holder's own included: work
        in hand is not claimed twice)."""
        if limit <= 0:
            return []
        key_column = candidates.selected_columns[0]
        now = utcnow()
        live = exists().where(
            LeaseRow.kind == kind,
            LeaseRow.key == key_column,
            LeaseRow.expires_at > now,
        )
        query = candidates.where(~live).limit(limit)
        try:
            with self.database.engine.connect() as connection:
                if connection.dialect.name == "postgresql":
                    table = key_column.table
                    query = query.with_for_update(skip_locked=True, of=table)
                else:
                    lock_for_write(connection, LEASE_LOCK_KEY)
                keys = [str(k) for k in connection.execute(query).scalars()]
                leases = [lease for k in keys if (lease := self._upsert(connection, kind, k, now))]
                connection.commit()
                return leases
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"claiming {kind} work: {describe_error(exc)}") from exc

    def _upsert(self, connection: Connection, kind: str, key: str, now: datetime) -> Lease | None:
        expires = now + timedelta(seconds=self.ttl_s)
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        table = LeaseRow.__table__
        statement = dialect.insert(table).values(
            kind=kind, key=key, holder=self.holder, token=1, acquired_at=now, expires_at=expires
        )
        excluded = statement.excluded
        same_holder = table.c.holder == excluded.holder
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.kind, table.c.key],
            set_={
                "holder": excluded.holder,
                "expires_at": excluded.expires_at,
                # a new holder gets a new fencing token; the same holder keeps its own
                "token": case((same_holder, table.c.token), else_=table.c.token + 1),
                "acquired_at": excluded.acquired_at,
            },
            where=or_(table.c.expires_at <= now, same_holder),
        ).returning(table.c.token, table.c.expires_at, table.c.holder)
        row = connection.execute(statement).first()
        if row is None or row.holder != self.holder:
            return None
        return Lease(kind, key, self.holder, int(row.token), as_utc(row.expires_at))

    # -- keeping --------------------------------------------------------------------------------
    def renew(self, leases: list[Lease]) -> tuple[list[Lease], list[Lease]]:
        """Push every lease's expiry forward (the heartbeat); returns (renewed, lost)."""
        renewed: list[Lease] = []
        lost: list[Lease] = []
        if not leases:
            return renewed, lost
        now = utcnow()
        expires = now + timedelta(seconds=self.ttl_s)
        try:
            with self.database.engine.begin() as connection:
                for lease in leases:
                    done = connection.execute(
                        update(LeaseRow)
                        .where(_is(lease), LeaseRow.expires_at > now)
                        .values(expires_at=expires)
                    )
                    if done.rowcount == 1:
                        renewed.append(Lease(lease.kind, lease.key, lease.holder, lease.token, expires))
                    else:
                        lost.append(lease)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"renewing leases: {describe_error(exc)}") from exc
        return renewed, lost

    def fence(self, connection: Connection, lease: Lease) -> None:
        """In the caller's transaction: raise :class:`LeaseLost` unless ``lease`` is still held.

        The check updates the lease row, so on PostgreSQL it also holds the row's lock until the
        transaction ends: nobody can take the lease over between the check and the commit.
        """
        done = connection.execute(
            update(LeaseRow).where(_is(lease), LeaseRow.expires_at > utcnow()).values(holder=lease.holder)
        )
        if done.rowcount != 1:
            raise LeaseLost(f"the lease on {lease.kind} {lease.key} was lost to another replica")

    def release(self, lease: Lease) -> None:
        """Give the lease up (the work is done or handed back)."""
        try:
            with self.database.engine.begin() as connection:
                connection.execute(delete(LeaseRow).where(_is(lease)))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"releasing lease on {lease.kind}: {describe_error(exc)}") from exc

    def release_all(self) -> int:
        """Give up every lease this holder took before this process started: a replica starting again
        under its old id holds nothing of its predecessor's, so that work is free at once instead of
        after the expiry. Leases this process already took (a component that started first) stay."""
        try:
            with self.database.engine.begin() as connection:
                done = connection.execute(
                    delete(LeaseRow).where(
                        LeaseRow.holder == self.holder, LeaseRow.acquired_at < self.started_at
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"releasing leases: {describe_error(exc)}") from exc
        return int(done.rowcount)

    # -- reading --------------------------------------------------------------------------------
    def live_holder(self, kind: str, key: str) -> str | None:
        """Who holds a live lease on ``(kind, key)``; None when nobody does."""
        query = select(LeaseRow.holder).where(
            LeaseRow.kind == kind, LeaseRow.key == key, LeaseRow.expires_at > utcnow()
        )
        try:
            with self.database.engine.connect() as connection:
                holder = connection.execute(query).scalar()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"reading lease on {kind}: {describe_error(exc)}") from exc
        return None if holder is None else str(holder)


def _is(lease: Lease) -> Any:
    return and_(
        LeaseRow.kind == lease.kind,
        LeaseRow.key == lease.key,
        LeaseRow.holder == lease.holder,
        LeaseRow.token == lease.token,
    )
