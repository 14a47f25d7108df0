"""The queue of one model version's batcher: requests sorted by urgency, counted per class, each with
a timer (on the batcher's clock) that drops it when its deadline passes while it waits.

A request leaves the queue without running for one of :data:`DROP_REASONS`: its deadline passed
(``deadline``), its caller went away (``client_gone``: the awaiting future was cancelled, as when an
HTTP client disconnects or a gRPC call is cancelled or passes its deadline), or a full queue shed it
for a more urgent request (``shed``, by the batcher). ``on_drop``, when set, hears each such drop
with its reason.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from medserve.scheduling.batching import BatchKey
from medserve.scheduling.clock import Clock, Timer
from medserve.scheduling.priority import PriorityClass
from medserve.scheduling.slo import Urgency
from medserve.values.errors import DeadlineExceeded, MedserveError

#: Why a queued request left the queue without running.
DROP_DEADLINE, DROP_CLIENT_GONE, DROP_SHED = "deadline", "client_gone", "shed"
DROP_REASONS = (DROP_DEADLINE, DROP_CLIENT_GONE, DROP_SHED)


@dataclass(slots=True, eq=False)
class Pending:
    """A queued request: its inputs, batch size, class, deadline, urgency and the future it awaits."""

    inputs: dict[str, np.ndarray]
    size: int
    key: BatchKey
    enqueued_ns: int
    future: asyncio.Future[Any] = field(repr=False)
    request_class: PriorityClass
    deadline_ns: int | None
    order: Urgency
    timer: Timer | None = field(default=None, repr=False)
    attempts: int = 0

    @property
    def priority(self) -> int:
        return self.request_class.priority


def _order(pending: Pending) -> Urgency:
    return pending.order


class UrgencyQueue(Sequence[Pending]):
    """Most urgent first; ``label`` names the model version in error messages. Deadlines are on
    ``clock``. ``on_empty``, when set, is called whenever a removal leaves the queue empty."""

    def __init__(self, label: str, clock: Clock) -> None:
        self.label = label
        self.on_empty: Callable[[], None] | None = None
        self.on_drop: Callable[[str], None] | None = None
        self._clock = clock
        self._items: list[Pending] = []
        self._by_class: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Pending: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Pending]: ...

    def __getitem__(self, index: int | slice) -> Pending | Sequence[Pending]:
        return self._items[index]

    def __iter__(self) -> Iterator[Pending]:
        return iter(self._items)

    def depth(self, class_name: str) -> int:
        return self._by_class.get(class_name, 0)

    def position(self, order: Urgency) -> int:
        """How many queued requests are more urgent than ``order``."""
        return bisect.bisect_left(self._items, order, key=_order)

    def insert(self, pending: Pending) -> None:
        """Queue ``pending`` in its place; with a deadline, arm its expiry timer."""
        bisect.insort(self._items, pending, key=_order)
        name = pending.request_class.name
        self._by_class[name] = self._by_class.get(name, 0) + 1
        if pending.deadline_ns is not None:
            pending.timer = self._clock.call_at(pending.deadline_ns, self._expire, pending)

    def remove(self, index: int) -> Pending:
        pending = self._items.pop(index)
        self._by_class[pending.request_class.name] -= 1
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if not self._items and self.on_empty is not None:
            self.on_empty()
        return pending

    def _index(self, pending: Pending) -> int | None:
        index = self.position(pending.order)
        if index < len(self._items) and self._items[index] is pending:
            return index
        return None

    def dropped(self, reason: str) -> None:
        """Count one request that left the queue without running, for ``reason``."""
        if self.on_drop is not None:
            self.on_drop(reason)

    def _expire(self, pending: Pending) -> None:
        """Timer: drop ``pending`` if it is still queued when its deadline passes."""
        pending.timer = None
        index = self._index(pending)
        if index is not None:
            self.remove(index)
            self._fail_expired(pending, index)

    def abandon(self, pending: Pending) -> None:
        """Drop ``pending`` now if it is still queued: its caller has gone (its future was cancelled)."""
        index = self._index(pending)
        if index is not None:
            self.remove(index)
            self.dropped(DROP_CLIENT_GONE)

    def _fail_expired(self, pending: Pending, ahead: int) -> None:
        if pending.future.done():
            self.dropped(DROP_CLIENT_GONE)
            return
        self.dropped(DROP_DEADLINE)
        waited_ms = (self._clock.now_ns() - pending.enqueued_ns) / 1e6
        pending.future.set_exception(
            DeadlineExceeded(
                f"{self.label}: the deadline of this '{pending.request_class.name}' request passed "
                f"after {waited_ms:.0f} ms in the queue ({ahead} more urgent request(s) still ahead); "
                "it was not run"
            )
        )

    def purge(self, now: int) -> None:
        """Drop requests whose caller has gone and those whose deadline has passed."""
        index = 0
        while index < len(self._items):
            pending = self._items[index]
            if pending.future.done():
                self.remove(index)
                self.dropped(DROP_CLIENT_GONE)
            elif pending.deadline_ns is not None and pending.deadline_ns <= now:
                self.remove(index)
                self._fail_expired(pending, index)
            else:
                index += 1

    def fail_all(self, error: MedserveError) -> None:
        """Empty the queue; every waiting request gets ``error``."""
        while self._items:
            pending = self.remove(len(self._items) - 1)
            if not pending.future.done():
                pending.future.set_exception(error)
