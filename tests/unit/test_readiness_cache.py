"""The readiness check's cache: health probes arriving together cost one store check, the answer is
reused for ``ttl_s``, a store that hangs counts as unreachable after ``timeout_s``, and the reason is
logged once per ``log_every_s``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from medserve.core.readiness import Readiness
from medserve.values.errors import StoreUnavailable


class _Store:
    """Counts the checks; answers, refuses or hangs as told."""

    def __init__(self) -> None:
        self.checks = 0
        self.down = False
        self.hang = threading.Event()
        self.release = threading.Event()

    def ping(self) -> None:
        self.checks += 1
        if self.hang.is_set():
            self.release.wait(5)
        if self.down:
            raise StoreUnavailable("database unreachable: OperationalError: connection refused")


async def test_probes_together_cost_one_check_and_the_answer_is_kept_for_ttl() -> None:
    store = _Store()
    readiness = Readiness(ttl_s=0.3)
    readiness.watch_store(store.ping)
    assert not await readiness.check()  # not started: no store check at all
    assert store.checks == 0
    readiness.set(True)
    answers = await asyncio.gather(*(readiness.check() for _ in range(100)))
    assert all(answers) and store.checks == 1
    assert await readiness.check() and store.checks == 1  # within ttl_s
    store.down = True
    assert await readiness.check()  # still the cached answer
    await asyncio.sleep(0.35)
    assert not await readiness.check() and store.checks == 2
    assert not readiness.ready() and "connection refused" in readiness.reason
    store.down = False
    await asyncio.sleep(0.35)
    assert await readiness.check() and readiness.reason == ""
    readiness.close()


async def test_a_hanging_store_is_not_ready_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    store = _Store()
    readiness = Readiness(ttl_s=0.0, timeout_s=0.2, log_every_s=60)
    readiness.watch_store(store.ping)
    readiness.set(True)
    store.hang.set()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "medserve.readiness"):
        assert not await readiness.check()
        assert time.monotonic() - started < 1.0
        for _ in range(5):  # the same hanging check is awaited, no second one started
            assert not await readiness.check()
        assert store.checks == 1
    assert [r.getMessage() for r in caplog.records] == [
        "not ready: the store cannot be reached: the database did not answer within 0.2 s"
    ]
    store.hang.clear()
    store.release.set()
    await asyncio.sleep(0.1)
    assert await readiness.check()
    readiness.close()
