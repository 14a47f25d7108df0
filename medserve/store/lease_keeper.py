"""The heartbeat of a replica's leases: a thread that renews every lease held, a third of the time to
live apart, so a lease outlives a missed beat or two and expires within ``ttl_s`` of the replica's death.

Work asks :meth:`LeaseKeeper.lost` before each step (a job's next chunk, an export's send) and stops
when its lease was lost; :meth:`LeaseBook.fence` guards the commit itself.
"""

from __future__ import annotations

import logging
import threading

from medserve.store.leases import Lease, LeaseBook
from medserve.values.errors import MedserveError

log = logging.getLogger("medserve.leases")


class LeaseKeeper:
    """Renews the leases handed to it until they are released or lost."""

    def __init__(self, book: LeaseBook, interval_s: float | None = None) -> None:
        self.book = book
        self.interval_s = interval_s if interval_s is not None else book.ttl_s / 3
        self._held: dict[tuple[str, str], Lease] = {}
        self._lost: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give up every lease still held (their work was stopped with it)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.interval_s + 5)
        with self._lock:
            held = list(self._held)
        for kind, key in held:
            self.release(kind, key)

    def keep(self, lease: Lease) -> None:
        with self._lock:
            self._held[(lease.kind, lease.key)] = lease
            self._lost.discard((lease.kind, lease.key))

    def current(self, kind: str, key: str) -> Lease | None:
        with self._lock:
            return self._held.get((kind, key))

    def lost(self, kind: str, key: str) -> bool:
        with self._lock:
            return (kind, key) in self._lost

    def release(self, kind: str, key: str) -> None:
        """Stop renewing and give the lease up."""
        with self._lock:
            lease = self._held.pop((kind, key), None)
            self._lost.discard((kind, key))
        if lease is not None:
            try:
                self.book.release(lease)
            except MedserveError as exc:  # it expires by itself within ttl_s
                log.warning("lease on %s %s not released: %s", kind, key, exc)

    def beat(self) -> None:
        """One renewal of every lease held (the thread's step; callable directly in tests)."""
        with self._lock:
            leases = list(self._held.values())
        if not leases:
            return
        try:
            renewed, lost = self.book.renew(leases)
        except MedserveError as exc:  # the database is away: try again next beat, before the expiry
            log.warning("lease heartbeat failed: %s", exc)
            return
        with self._lock:
            for lease in renewed:
                if (lease.kind, lease.key) in self._held:
                    self._held[(lease.kind, lease.key)] = lease
            for lease in lost:
                log.warning("lease on %s %s lost to another replica", lease.kind, lease.key)
                self._held.pop((lease.kind, lease.key), None)
                self._lost.add((lease.kind, lease.key))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()
