"""Live traffic keeps stored profiles current: engine latencies of served batches, written back in bulk.

The batcher of a model placed from a profile reports each execution (runtime, device, batch size and
engine time, the same span the profiler measures). :class:`LiveProfiles` keeps them in memory, at
most ``max_samples`` per point, and every ``interval_s`` writes them on a background thread with
:meth:`ProfileStore.update_live` (one transaction per point), so the next placement and
``medserve placement`` read current figures. Only batch sizes that were profiled are updated. A store
that is unavailable costs the pending samples (logged), never a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from medserve.hardware.profile_store import ProfileStore
from medserve.scheduling.plan import ProfileKey
from medserve.values.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: (profile, runtime, device, batch size)
_Point = tuple[ProfileKey, str, str, int]


class LiveProfiles:
    """Buffers live latencies per profile point and writes them to ``store`` periodically."""

    def __init__(
        self,
        store: ProfileStore,
        *,
        interval_s: float = 30.0,
        max_samples: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < 0 or max_samples < 1:
            raise ValueError("interval_s must be >= 0 and max_samples >= 1")
        self.store = store
        self.interval_s = interval_s
        self.max_samples = max_samples
        self._clock = clock
        self._pending: dict[_Point, list[float]] = {}
        self._lock = threading.Lock()
        self._last_flush = clock()
        self._writer: ThreadPoolExecutor | None = None
        self._running: Future[int] | None = None
        #: points written since start, and samples dropped because the store was unavailable
        self.written = 0
        self.dropped = 0

    def record(self, key: ProfileKey, runtime: str, device: str, batch_size: int, latency_ms: float) -> None:
        """One execution; starts a background write when ``interval_s`` has passed since the last."""
        with self._lock:
            samples = self._pending.setdefault((key, runtime, device, batch_size), [])
            samples.append(latency_ms)
            if len(samples) > self.max_samples:
                del samples[: len(samples) - self.max_samples]
            due = self._clock() - self._last_flush >= self.interval_s
            busy = self._running is not None and not self._running.done()
            if not due or busy:
                return
            self._last_flush = self._clock()
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medserve-live-profiles")
            self._running = self._writer.submit(self.flush)

    def flush(self) -> int:
        """Blocking: write every pending sample now; returns the number of points updated."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = self._clock()
        updated = 0
        for (key, runtime, device, batch_size), samples in pending.items():
            try:
                point = self.store.update_live(
                    key.model,
                    runtime,
                    device,
                    batch_size,
                    samples,
                    digest=key.digest,
                    fingerprint=key.fingerprint,
                )
            except StoreUnavailable as exc:
                self.dropped += len(samples)
                log.warning(
                    "live profile of %s not stored (%d samples dropped): %s", key.model, len(samples), exc
                )
                continue
            updated += point is not None
        self.written += updated
        return updated

    def close(self) -> None:
        """Wait for a write under way, write what is left, stop the writer thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
        self.flush()
