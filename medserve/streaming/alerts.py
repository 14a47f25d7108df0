"""The alert hub: keeps the monitor's alerts, persists them, and pushes them to live subscribers.

Alerts are kept in memory (the newest ``max_kept``) and, when a ``path`` is given, appended to a
JSON-lines journal, each line flushed and ``fsync``'d before ``publish`` returns, so a restart loses
none. The journal holds two kinds of line: an alert (``Alert.to_json()``) and an acknowledgement
(``{"ack": id, "by": ..., "at": ...}``); a new hub replays both in order. A journal much longer than
what is kept is rewritten (atomically) when the hub opens it.

A ``deliver`` hook receives each published alert after it is persisted (the alert destinations'
outbox, :mod:`.alert_delivery`). Subscribers each get a bounded queue: a slow one loses its oldest
undelivered alerts (counted in ``AlertSubscription.dropped`` and ``AlertHub.dropped``) and never slows
a publisher. The hub is meant to be used from one event loop; ``publish`` from another thread is safe
too (pushes are handed to each subscriber's loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO

from medserve.streaming.messages import Alert, SequenceId
from medserve.values.errors import InvalidInput, MedserveError

log = logging.getLogger(__name__)

#: A journal with more than this many lines per kept alert is compacted on open.
_COMPACT_RATIO = 2


class AlertNotFound(MedserveError):
    """No alert with that id is kept (never raised, or evicted as older than the newest kept)."""


class AlertSubscription(AsyncIterator[Alert]):
    """One subscriber's live feed: an async iterator of alerts, registered from construction on.

    Ends when ``aclose()`` is called or the hub closes; ``dropped`` counts alerts lost because the
    subscriber fell more than ``maxsize`` alerts behind.
    """

    def __init__(self, hub: AlertHub, maxsize: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Alert | None] = asyncio.Queue(maxsize)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self.dropped = 0

    def __aiter__(self) -> AlertSubscription:
        return self

    async def __anext__(self) -> Alert:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._closed = True
            self._hub._unsubscribe(self)
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._closed = True
        self._hub._unsubscribe(self)

    def _offer(self, alert: Alert | None) -> None:
        """Queue without blocking, dropping the oldest on overflow; runs on the subscriber's loop."""
        while True:
            try:
                self._queue.put_nowait(alert)
                return
            except asyncio.QueueFull:
                try:
                    self._queue.get_nowait()
                except asyncio.QueueEmpty:  # pragma: no cover - emptied between the two calls
                    continue
                self.dropped += 1
                self._hub._count_drop()

    def _push(self, alert: Alert | None) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._offer(alert)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._offer, alert)


class AlertHub:
    """Stores, persists and fans out alerts; see the module docstring."""

    def __init__(
        self,
        path: Path | None = None,
        max_kept: int = 10000,
        subscriber_queue: int = 256,
        deliver: Callable[[Alert], None] | None = None,
    ) -> None:
        if max_kept < 1 or subscriber_queue < 1:
            raise ValueError("max_kept and subscriber_queue must be at least 1")
        self._path = path
        self._deliver = deliver  # hands each published alert to the alert destinations' outbox
        self._max_kept = max_kept
        self._subscriber_queue = subscriber_queue
        self._alerts: dict[str, Alert] = {}  # insertion order = publication order
        self._subscribers: set[AlertSubscription] = set()
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._closed = False
        self.dropped = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = self._replay(path) if path.exists() else 0
            if lines > _COMPACT_RATIO * max_kept:
                self._compact(path)
            self._file = path.open("a", encoding="utf-8")

    # -- persistence -------------------------------------------------------------------------

    def _replay(self, path: Path) -> int:
        count = 0
        with path.open(encoding="utf-8") as journal:
            for number, line in enumerate(journal, 1):
                if not line.strip():
                    continue
                count += 1
                try:
                    doc = json.loads(line)
                    if "ack" in doc:
                        alert = self._alerts.get(str(doc["ack"]))
                        if alert is not None and alert.acknowledged_at is None:
                            alert.acknowledged_by = str(doc["by"])
                            alert.acknowledged_at = float(doc["at"])
                    else:
                        self._keep(Alert.from_json(doc))
                except (ValueError, KeyError, TypeError) as exc:  # a torn last line after a crash
                    log.warning("alert journal %s line %d is unreadable, skipped: %s", path, number, exc)
        return count

    def _compact(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for alert in self._alerts.values():
                out.write(json.dumps(alert.to_json()) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            if self._path is not None:
                # Name the alert only: the record carries the patient's stream id (no patient data in logs).
                log.warning(
                    "alert journal %s is closed; alert %s kept in memory only", self._path, record.get("id")
                )
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def end_subscriptions(self) -> None:
        """End every subscription (alert streams close) while the journal stays open: the first
        step of an ordered shutdown, so that open event streams do not hold the HTTP server."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber._push(None)

    def close(self) -> None:
        """Close the journal and end every subscription (the last step of an ordered shutdown)."""
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
        self.end_subscriptions()

    # -- alerts ------------------------------------------------------------------------------

    def _keep(self, alert: Alert) -> None:
        self._alerts.pop(alert.id, None)
        self._alerts[alert.id] = alert
        while len(self._alerts) > self._max_kept:
            del self._alerts[next(iter(self._alerts))]

    def publish(self, alert: Alert) -> None:
        """Keep, persist and push ``alert``; an alert with a known id replaces the kept one."""
        with self._lock:
            self._append(alert.to_json())
            self._keep(alert)
            subscribers = list(self._subscribers)
        if self._deliver is not None:
            self._deliver(alert)
        for subscriber in subscribers:
            subscriber._push(alert)

    def acknowledge(self, alert_id: str, by: str, now: float) -> Alert:
        """Mark the alert acknowledged by ``by`` at ``now``; a second acknowledgement keeps the first."""
        if not by:
            raise InvalidInput("an acknowledgement must say who acknowledges ('by')")
        with self._lock:
            alert = self._alerts.get(alert_id)
            if alert is None:
                raise AlertNotFound(f"no alert with id '{alert_id}'")
            if alert.acknowledged_at is not None:
                return alert
            self._append({"ack": alert_id, "by": by, "at": now})
            alert.acknowledged_by = by
            alert.acknowledged_at = now
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber._push(alert)
        return alert

    def get(self, alert_id: str) -> Alert:
        with self._lock:
            alert = self._alerts.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"no alert with id '{alert_id}'")
        return alert

    def list(
        self,
        *,
        sequence_id: SequenceId | None = None,
        unacknowledged_only: bool = False,
        limit: int = 100,
    ) -> list[Alert]:
        """Kept alerts, newest first. ``sequence_id`` matches by text, so 7 and "7" are the same."""
        if limit < 0:
            raise InvalidInput(f"limit must not be negative, got {limit}")
        wanted = None if sequence_id is None else str(sequence_id)
        found: list[Alert] = []
        with self._lock:
            for alert in reversed(self._alerts.values()):
                if len(found) >= limit:
                    break
                if wanted is not None and str(alert.sequence_id) != wanted:
                    continue
                if unacknowledged_only and alert.acknowledged_at is not None:
                    continue
                found.append(alert)
        return found

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self) -> AlertSubscription:
        """A live feed of alerts published or acknowledged from now on; call on the event loop.

        Use as ``async for alert in hub.subscribe()``; ``await sub.aclose()`` unsubscribes.
        """
        subscription = AlertSubscription(self, self._subscriber_queue)
        with self._lock:
            if self._closed:
                subscription._push(None)  # the hub is closed: an empty feed
            else:
                self._subscribers.add(subscription)
        return subscription

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _unsubscribe(self, subscription: AlertSubscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def _count_drop(self) -> None:
        self.dropped += 1
