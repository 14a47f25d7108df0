"""Readiness: *this replica can serve*. The server says when it has started and when it begins to stop;
the store (the database every replica shares) must also answer.

Health endpoints are hit often (every balancer, every probe), so the store is asked at most once per
``ttl_s``: callers within it get the last answer, and callers while a check is under way wait for that
same check, never start another. A check that takes longer than ``timeout_s`` counts as an
unreachable store (a balancer must not wait for a connect timeout). Why the store is unreachable is
logged when it goes away, then at most once per ``log_every_s`` while it stays away, and once when it
comes back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("medserve.readiness")


class Readiness:
    """The server's own readiness and, once :meth:`watch_store` is called, the store's reachability."""

    def __init__(self, *, ttl_s: float = 1.0, timeout_s: float = 2.0, log_every_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.log_every_s = log_every_s
        self._started = False
        self._ping: Callable[[], None] | None = None
        self._store_ok = True
        self._reason = ""
        self._checked_at = -float("inf")
        self._logged_at = -float("inf")
        self._pending: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def set(self, started: bool) -> None:
        """Started and serving (True), or starting / stopping (False)."""
        self._started = started

    def watch_store(self, ping: Callable[[], None]) -> None:
        """Count the store in: ``ping`` raises when the store cannot be reached."""
        self._ping = ping
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-check")

    @property
    def reason(self) -> str:
        """Why the store was last found unreachable ("" while it answers)."""
        return self._reason

    def ready(self) -> bool:
        """Ready as last checked; never waits (for the registry's heartbeat and the console)."""
        return self._started and self._store_ok

    async def check(self) -> bool:
        """Ready now: the store asked again if its last answer is older than ``ttl_s``."""
        if not self._started:
            return False
        if self._ping is None or time.monotonic() - self._checked_at < self.ttl_s:
            return self.ready()
        with self._lock:
            if self._pending is None or self._pending.done():
                assert self._executor is not None
                self._pending = self._executor.submit(self._probe)
            pending = self._pending
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending)), self.timeout_s)
        except TimeoutError:
            self._store_down(f"the database did not answer within {self.timeout_s:g} s")
            self._checked_at = time.monotonic()  # the next callers within ttl_s do not wait again
        return self.ready()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _probe(self) -> None:
        assert self._ping is not None
        try:
            self._ping()
        except Exception as exc:  # any failure to answer means this replica cannot serve
            self._store_down(str(exc) or type(exc).__name__)
        else:
            if not self._store_ok:
                log.warning("the store answers again: ready to serve")
            self._store_ok, self._reason = True, ""
        self._checked_at = time.monotonic()

    def _store_down(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            went_away = self._store_ok
            self._store_ok, self._reason = False, reason
            if not went_away and now - self._logged_at < self.log_every_s:
                return
            self._logged_at = now
        what = "not ready" if went_away else "still not ready"
        log.warning("%s: the store cannot be reached: %s", what, reason)
