"""The replica registry: every replica writes its id, address, version, loaded models and readiness
into ``replicas`` and renews ``heartbeat_at`` every ``heartbeat_s``; ``medserve cluster status`` and
``GET /v2/cluster`` read it back.

A replica is *up* while its heartbeat is younger than ``stale_after_s``, *stopped* once it recorded a
clean stop, and *lost* when its heartbeat went stale without one (killed, or cut off). Readiness is
the replica's own: it can serve (models loaded, store reachable, not shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from medserve.store.database import Database
from medserve.store.sql import describe_error
from medserve.store.tables import ReplicaRow
from medserve.values.errors import InvalidConfig, MedserveError, StoreUnavailable
from medserve.values.times import as_utc

log = logging.getLogger("medserve.cluster")

UP, STOPPED, LOST = "up", "stopped", "lost"


@dataclass(frozen=True)
class ReplicaStatus:
    id: str
    address: str
    version: str
    models: list[str]
    ready: bool
    state: str  # up, stopped, lost
    started_at: datetime
    heartbeat_at: datetime
    age_s: float  # since the last heartbeat

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "version": self.version,
            "models": self.models,
            "ready": self.ready,
            "state": self.state,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "heartbeat_at": self.heartbeat_at.isoformat().replace("+00:00", "Z"),
            "heartbeat_age_s": round(self.age_s, 1),
        }


def list_replicas(database: Database, stale_after_s: float = 15.0) -> list[ReplicaStatus]:
    """Every replica the database knows, newest start first."""
    now = datetime.now(UTC)
    try:
        with database.session() as session:
            rows = session.scalars(select(ReplicaRow).order_by(ReplicaRow.started_at.desc())).all()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"replicas cannot be read: {describe_error(exc)}") from exc
    replicas = []
    for row in rows:
        beat = as_utc(row.heartbeat_at) or now
        age = (now - beat).total_seconds()
        state = STOPPED if row.stopped_at is not None else UP if age <= stale_after_s else LOST
        replicas.append(
            ReplicaStatus(
                row.id,
                row.address,
                row.version,
                list(row.models or []),
                bool(row.ready) and state == UP,
                state,
                as_utc(row.started_at) or now,
                beat,
                max(0.0, age),
            )
        )
    return replicas


class ReplicaRegistry:
    """This replica's row: registered at start, renewed by a heartbeat task, marked stopped at stop."""

    def __init__(
        self,
        database: Database,
        replica_id: str,
        address: str,
        version: str,
        *,
        models: Callable[[], list[str]],
        ready: Callable[[], bool],
        heartbeat_s: float = 5.0,
    ) -> None:
        if heartbeat_s <= 0:
            raise InvalidConfig("the replica heartbeat must be positive")
        self.database = database
        self.replica_id = replica_id
        self.address = address
        self.version = version
        self._models = models
        self._ready = ready
        self.heartbeat_s = heartbeat_s
        self._task: asyncio.Task[None] | None = None
        self._healthy = True

    def beat(self, *, stopping: bool = False) -> None:
        """Write this replica's row now (insert or update)."""
        now = datetime.now(UTC)
        with self.database.session() as session, session.begin():
            row = session.get(ReplicaRow, self.replica_id, with_for_update=True)
            if row is None:
                row = ReplicaRow(id=self.replica_id, started_at=now)
                session.add(row)
            elif self._task is None and not stopping:
                row.started_at = now  # registering again: a new start
            row.address = self.address
            row.version = self.version
            row.models = sorted(self._models())
            row.ready = False if stopping else self._ready()
            row.heartbeat_at = now
            row.stopped_at = now if stopping else None

    async def start(self) -> None:
        await asyncio.to_thread(self.beat)
        self._task = asyncio.create_task(self._loop(), name="replica-heartbeat")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self.beat)
                if not self._healthy:
                    log.info("replica heartbeat written again")
                self._healthy = True
            except (MedserveError, SQLAlchemyError) as exc:
                if self._healthy:
                    log.warning("replica heartbeat not written: %s", exc)
                self._healthy = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self.beat, stopping=True)
        except (MedserveError, SQLAlchemyError) as exc:
            log.warning("replica stop not recorded: %s", exc)
        self._task = None
