"""Model monitoring for the whole fleet: each replica writes its monitoring state to the store every
``share_every_s`` seconds (a row per model version, :class:`MonitoringStateRow`), and a snapshot
(``GET /v2/models/{m}/monitoring``) merges this replica's live state with the other replicas' rows
written within the kept windows' span (``keep_windows`` × ``window_s``): every statistic merges
(:mod:`.statistics`), so the answer is what one process serving all the traffic would have recorded.

When the store cannot be read the snapshot is this replica's alone, and says so (``shared_error``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from medserve.monitoring.drift import ModelMonitor
from medserve.store.database import Database
from medserve.store.sql import describe_error
from medserve.store.tables import MonitoringStateRow
from medserve.values.errors import ModelNotFound, StoreUnavailable

log = logging.getLogger(__name__)


class FleetMonitor:
    """This replica's :class:`ModelMonitor`, shared through the store with the other replicas."""

    def __init__(
        self, monitor: ModelMonitor, database: Database, replica: str, *, share_every_s: float = 10.0
    ) -> None:
        self.monitor = monitor
        self.database = database
        self.replica = replica
        self.share_every_s = share_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def horizon_s(self) -> float:
        """Rows older than this hold only windows no longer kept."""
        return self.monitor.keep_windows * self.monitor.window_s

    def observe(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        now: float | None = None,
    ) -> None:
        self.monitor.observe(model, version, inputs, outputs, now)

    # -- sharing --------------------------------------------------------------------------------
    def publish(self) -> int:
        """Write this replica's state of every model version; returns how many rows were written."""
        states = self.monitor.states()
        if not states:
            return 0
        now = datetime.now(UTC)
        try:
            with self.database.engine.begin() as connection:
                dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
                for (model, version), state in states.items():
                    statement = dialect.insert(MonitoringStateRow.__table__).values(
                        replica=self.replica, model=model, version=version, state=state, updated_at=now
                    )
                    connection.execute(
                        statement.on_conflict_do_update(
                            index_elements=["replica", "model", "version"],
                            set_={"state": statement.excluded.state, "updated_at": now},
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"sharing monitoring state: {describe_error(exc)}") from exc
        return len(states)

    def start(self) -> None:
        if self.share_every_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._share, name="monitoring-share", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop sharing, after a last write (what this replica saw stays in the fleet's view)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.share_every_s + 10)
            self._publish_logged()

    def _share(self) -> None:
        while not self._stop.wait(self.share_every_s):
            self._publish_logged()

    def _publish_logged(self) -> None:
        try:
            self.publish()
        except StoreUnavailable as exc:  # the next write carries everything: nothing is lost but time
            log.warning("monitoring state not shared: %s", exc)

    # -- reading --------------------------------------------------------------------------------
    def others(self, model: str) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """The other replicas' recent states of ``model``: {(model, version): {replica: state}}."""
        since = datetime.now(UTC) - timedelta(seconds=self.horizon_s)
        query = select(MonitoringStateRow).where(
            MonitoringStateRow.model == model,
            MonitoringStateRow.replica != self.replica,
            MonitoringStateRow.updated_at >= since,
        )
        found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        try:
            with self.database.session() as session:
                for row in session.execute(query).scalars():
                    found.setdefault((row.model, row.version), {})[row.replica] = row.state
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"reading shared monitoring states: {describe_error(exc)}") from exc
        return found

    def snapshot(self, model: str, now: float | None = None) -> dict[str, Any]:
        """The fleet's view of ``model``: this replica's state merged with the other replicas'."""
        t = time.time() if now is None else now
        states: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
            key: {self.replica: state} for key, state in self.monitor.states(model).items()
        }
        error = ""
        try:
            for key, by_replica in self.others(model).items():
                for replica, state in by_replica.items():
                    if state.get("window_s") == self.monitor.window_s:  # else its windows cannot be added
                        states.setdefault(key, {})[replica] = state
        except StoreUnavailable as exc:
            log.warning("monitoring of %s answered for this replica alone: %s", model, exc)
            error = str(exc)
        if not states:
            raise ModelNotFound(f"no monitoring data for model '{model}': it has served no requests yet")
        trackers = {key: self.monitor.merged(list(by_replica.values())) for key, by_replica in states.items()}
        snapshot = self.monitor.snapshot_of(model, trackers, t)
        snapshot["replicas"] = sorted({replica for by_replica in states.values() for replica in by_replica})
        if error:
            snapshot["shared_error"] = error
        return snapshot
