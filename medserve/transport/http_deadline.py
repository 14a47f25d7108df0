"""The HTTP door's view of a client's deadline and presence.

- ``Request-Timeout`` (request header): how many seconds the client waits for the answer, a positive
  decimal number (``2``, ``0.25``), counted from when the door had the request's headers. It becomes
  the request's ``deadline_ns``; the scheduler keeps the earliest of it, the OIP ``timeout``
  parameter and the priority class's deadline. A value that is not such a number is answered 400,
  naming the header.
- A client that disconnects while its request waits is heard (the ASGI ``http.disconnect`` message):
  the request is cancelled, so the batcher drops it from its queue before it runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from medserve.protocol.validation import clipped
from medserve.values.errors import InvalidInput

T = TypeVar("T")

#: The request header naming the client's timeout, in seconds.
REQUEST_TIMEOUT = "Request-Timeout"

#: The longest timeout the header may give (a day); a larger one is a client error, not "no deadline".
MAX_REQUEST_TIMEOUT_S = 86_400.0


#: The ASGI scope key the door sets to when it had the request's headers (``time.perf_counter_ns``).
RECEIVED_NS = "medserve.received_ns"


def timeout_seconds(raw: str) -> float:
    """The seconds a ``Request-Timeout`` value gives; ``InvalidInput`` names the header otherwise."""
    text = raw.strip()
    try:
        seconds = float(text) if text and text.replace(".", "", 1).isdigit() else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_REQUEST_TIMEOUT_S:
        raise InvalidInput(
            f"header {REQUEST_TIMEOUT} must be a number of seconds greater than 0 and at most "
            f"{MAX_REQUEST_TIMEOUT_S:.0f} (e.g. '2.5'), got '{clipped(raw)}'"
        )
    return seconds


def client_deadline_ns(headers: Headers, arrived_ns: int) -> int | None:
    """The absolute deadline (on the clock of ``arrived_ns``, ``time.perf_counter_ns``) the
    ``Request-Timeout`` header gives, or None without the header; ``InvalidInput`` names a bad value."""
    raw = headers.get(REQUEST_TIMEOUT)
    if raw is None:
        return None
    return arrived_ns + round(timeout_seconds(raw) * 1e9)


WATCH_AFTER_S = 0.005
"""How long after the work starts :func:`unless_disconnected` begins watching for a disconnect."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task, cancelling it if the client disconnects first (then raise
    ``ClientDisconnect``). Call it once the body has been read: the next ASGI message is then the
    disconnect. The watch starts :data:`WATCH_AFTER_S` after the work: most answers come sooner, and
    spare themselves a task of its own."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside a task under an ASGI server
        return await work
    state = {"gone": False, "finished": False}
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not state["finished"]:
            state["gone"] = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        if not state["finished"]:
            watcher = loop.create_task(watch())

    handle = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"] and task.uncancel() == 0:
            raise ClientDisconnect() from None
        raise
    finally:
        state["finished"] = True
        handle.cancel()
        if watcher is not None:
            watcher.cancel()
