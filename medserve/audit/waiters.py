"""Who waits for an audit event to be written: an event loop's future or a thread's, and waking them."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError, StoreUnavailable

#: An event, its wall-clock time (ns), and who waits for it: an event loop's future or a thread's.
Waiter = tuple[
    AuditEvent, int, asyncio.AbstractEventLoop | None, asyncio.Future[None] | concurrent.futures.Future[None]
]


def resolve(batch: Sequence[Waiter], error: MedserveError | None) -> None:
    """Wake every waiter: one callback per event loop, results set directly for threads."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, _, loop, future in batch:
        if loop is None:
            if isinstance(future, concurrent.futures.Future) and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(StoreUnavailable(str(error)))
        elif isinstance(future, asyncio.Future):
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        message = str(error) if error is not None else None
        if _running_loop() is loop:
            _settle(futures, message)  # written on the loop itself: wake the callers directly
            continue
        try:
            loop.call_soon_threadsafe(_settle, futures, message)
        except RuntimeError:
            continue  # the loop is closed; nobody waits any more


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(StoreUnavailable(error))
