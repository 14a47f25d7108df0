"""The scheduler's clock: integer nanoseconds on one monotonic clock, and timers on it.

Everything in :mod:`medserve.scheduling` that reads the time or waits for it does so through a
:class:`Clock`, so tests can drive the batcher, the queue and the arbiter with a clock they advance by
hand and assert exact times. Serving uses :data:`SYSTEM_CLOCK`: ``time.perf_counter_ns`` (the clock
request deadlines are given on) bound directly, and timers on the running event loop, so the
indirection costs nothing per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timer", "Wakeup"]


class Timer(Protocol):
    """A callback due at a time; ``cancel`` keeps it from running."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time in nanoseconds, and callbacks at given times of it (on the running event loop)."""

    def now_ns(self) -> int:
        """The time now."""
        ...

    def call_at(self, when_ns: int, callback: Callable[..., object], *args: Any) -> Timer:
        """Run ``callback(*args)`` on the event loop once the time is ``when_ns`` (at once if past)."""
        ...


class SystemClock:
    """``time.perf_counter_ns`` and the event loop's timers."""

    __slots__ = ("now_ns",)

    def __init__(self) -> None:
        self.now_ns: Callable[[], int] = time.perf_counter_ns  # bound directly: no wrapper per call

    def call_at(self, when_ns: int, callback: Callable[..., object], *args: Any) -> Timer:
        delay = (when_ns - self.now_ns()) / 1e9
        return asyncio.get_running_loop().call_later(delay, callback, *args)


SYSTEM_CLOCK: Clock = SystemClock()


class Wakeup:
    """Wakes every task waiting on it; a wait may instead end at a time on ``clock``.

    Unlike :class:`asyncio.Event` it keeps no state: a :meth:`notify` wakes the tasks waiting at that
    moment only, and a wait with a deadline costs one timer, not a task (``asyncio.wait_for``).
    """

    __slots__ = ("_clock", "_waiters")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._waiters: list[asyncio.Future[bool]] = []

    def notify(self) -> None:
        """Wake the tasks waiting now."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(True)

    async def wait(self, until_ns: int | None = None) -> bool:
        """Wait for :meth:`notify` (True) or, with ``until_ns``, for that time to come (False)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        timer = None if until_ns is None else self._clock.call_at(until_ns, _time_up, future)
        notified = False
        try:
            notified = await future
            return notified
        finally:
            if timer is not None:
                timer.cancel()
            if not notified:  # timed out or cancelled: no longer waiting
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)


def _time_up(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
