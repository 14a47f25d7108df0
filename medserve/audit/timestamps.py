"""The time of an audit record: ISO 8601 UTC with microseconds and ``Z``."""

from __future__ import annotations

import time


class UtcTimestamps:
    """Formats ``time.time_ns()`` values; the date-time prefix is cached per second (not thread-safe:
    one per appender, used under its lock)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, time_ns: int) -> str:
        micros = time_ns // 1000
        second, micro = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micro:06d}Z"
