"""SLO-aware scheduling policy (pure): urgency order, deadline-bounded batches, service-time estimates
and the admission estimate. The batcher holds the queue and the clock; here is only arithmetic.

Times are integers in nanoseconds on one monotonic clock (the batcher's ``time.perf_counter_ns``).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from medserve.scheduling.batching import BatchKey

#: Sorts after every real deadline: requests without one (e.g. class ``bulk``) go last in their class.
NO_DEADLINE = 1 << 62

Urgency = tuple[int, int, int]

#: Estimated execution time (ns) of a batch of the given size; None while nothing has been measured.
Estimate = Callable[[int], int | None]


def urgency(priority: int, deadline_ns: int | None, seq: int) -> Urgency:
    """The queue's sort key: strict precedence across classes (priority 1 first), earliest deadline
    first within a class, arrival order between equal deadlines and among requests without one."""
    return (priority, NO_DEADLINE if deadline_ns is None else deadline_ns, seq)


class Queued(Protocol):
    """What batch selection needs to know of a queued request."""

    @property
    def size(self) -> int: ...

    @property
    def key(self) -> BatchKey: ...

    @property
    def priority(self) -> int: ...

    @property
    def deadline_ns(self) -> int | None: ...


def _meetable(deadline_ns: int | None, now_ns: int, cost_ns: int | None) -> int | None:
    """``deadline_ns`` if a batch costing ``cost_ns`` started now meets it (or the cost is unknown)."""
    if deadline_ns is None or (cost_ns is not None and now_ns + cost_ns > deadline_ns):
        return None
    return deadline_ns


def select_urgent_batch(
    queue: Sequence[Queued], max_batch_size: int, now_ns: int, estimate: Estimate
) -> list[int]:
    """Indices into ``queue`` (sorted by :func:`urgency`) of the requests forming the next batch.

    The most urgent request always goes. Behind it, in urgency order, requests with the same batch key
    join while

    * the total batch size stays within ``max_batch_size`` (the first compatible request that does not
      fit ends the batch, so no request is overtaken twice by later ones of its kind);
    * they are not of a lower class than a skipped, incompatible request (a lower class never runs
      before a waiting higher one);
    * the estimated execution time of the grown batch still lets every member that could meet its
      deadline meet it (the first request that would make one miss ends the batch). A member that
      would miss its deadline even so does not bound the batch.
    """
    if not queue:
        return []
    head = queue[0]
    chosen = [0]
    total = head.size
    tightest = _meetable(head.deadline_ns, now_ns, estimate(total))
    floor: int | None = None
    for index in range(1, len(queue)):
        item = queue[index]
        if floor is not None and item.priority > floor:
            break
        if item.key != head.key:
            if floor is None:
                floor = item.priority
            continue
        if total + item.size > max_batch_size:
            break
        cost = estimate(total + item.size)
        if cost is not None and tightest is not None and now_ns + cost > tightest:
            break
        chosen.append(index)
        total += item.size
        own = _meetable(item.deadline_ns, now_ns, cost)
        if own is not None:
            tightest = own if tightest is None else min(tightest, own)
    return chosen


def latest_start_ns(deadlines: Iterable[int | None], cost_ns: int | None, now_ns: int) -> int | None:
    """The latest start of a batch costing ``cost_ns`` that still meets every member deadline that it
    can meet if started now; None when nothing bounds it (no deadlines, or the cost is unknown)."""
    if cost_ns is None:
        return None
    starts = [d - cost_ns for d in deadlines if d is not None and d - cost_ns >= now_ns]
    return min(starts) if starts else None


class ServiceTimes:
    """Exponentially weighted moving average of measured execution time, per batch size.

    A size not measured yet is estimated from its measured neighbours: linearly between two, the
    smallest measured time below them all, and linearly in the rows above them all (pessimistic for
    accelerators, whose time grows slower than the batch).
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._ns: dict[int, float] = {}
        self._sizes: list[int] = []

    def observe(self, batch_size: int, ns: int) -> None:
        if batch_size < 1 or ns < 0:
            return
        previous = self._ns.get(batch_size)
        if previous is None:
            bisect.insort(self._sizes, batch_size)
            self._ns[batch_size] = float(ns)
        else:
            self._ns[batch_size] = previous + self.alpha * (ns - previous)

    @property
    def measured(self) -> bool:
        return bool(self._sizes)

    def estimate_ns(self, batch_size: int) -> int | None:
        """Estimated execution time of a batch of ``batch_size``; None before any measurement."""
        if not self._sizes:
            return None
        exact = self._ns.get(batch_size)
        if exact is not None:
            return int(exact)
        at = bisect.bisect_left(self._sizes, batch_size)
        if at == 0:
            return int(self._ns[self._sizes[0]])
        lower = self._sizes[at - 1]
        if at == len(self._sizes):
            return int(self._ns[lower] * batch_size / lower)
        upper = self._sizes[at]
        low, high = self._ns[lower], self._ns[upper]
        return int(low + (high - low) * (batch_size - lower) / (upper - lower))

    def snapshot(self) -> dict[int, int]:
        return {size: int(self._ns[size]) for size in self._sizes}


def _chunked(rows: int, max_batch_size: int, estimate: Estimate) -> list[int] | None:
    """Execution times of ``rows`` rows formed into full batches and one partial last batch."""
    full, rest = divmod(rows, max_batch_size)
    sizes = [max_batch_size] * full + ([rest] if rest else [])
    times = [estimate(size) for size in sizes]
    return None if any(t is None for t in times) else [t for t in times if t is not None]


def estimate_completion_ns(
    ahead: Iterable[tuple[BatchKey, int]],
    own: tuple[BatchKey, int],
    *,
    batching: bool,
    max_batch_size: int,
    busy_ns: Sequence[int],
    instances: int,
    estimate: Estimate,
) -> int | None:
    """Estimated time from now until a request completes; None before any measurement.

    ``ahead`` (batch key and size of each queued request that runs before it) is formed into batches:
    per batch key, full batches of ``max_batch_size`` and a partial last one, with the request itself
    in the last batch of its key; one execution per request when not batching. The batches run on
    ``instances`` instances as they come free (the busy ones after ``busy_ns``, the estimated rest of
    their running batch), the request's own batch last.
    """
    durations: list[int] = []
    own_key, own_size = own
    if batching:
        rows: dict[BatchKey, int] = {}
        for key, size in ahead:
            rows[key] = rows.get(key, 0) + size
        own_rows = rows.pop(own_key, 0) + own_size
        for total in rows.values():
            chunks = _chunked(total, max_batch_size, estimate)
            if chunks is None:
                return None
            durations += chunks
        mine = _chunked(own_rows, max_batch_size, estimate)
        if not mine:
            return None
        durations += mine[:-1]
        own_ns = mine[-1]
    else:
        for _, size in ahead:
            cost = estimate(size)
            if cost is None:
                return None
            durations.append(cost)
        own_cost = estimate(own_size)
        if own_cost is None:
            return None
        own_ns = own_cost
    free = sorted([max(0, b) for b in busy_ns][:instances] + [0] * max(0, instances - len(busy_ns)))
    if len(free) <= 1:
        return (free[0] if free else 0) + sum(durations) + own_ns
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return heapq.heappop(free) + own_ns


def retry_after_s(completion_ns: int, budget_ns: int) -> float | None:
    """None when a request completing in ``completion_ns`` meets a deadline ``budget_ns`` away;
    otherwise how long the client should wait before retrying: the time the work ahead of it needs
    to shrink enough, at least one second."""
    if completion_ns <= budget_ns:
        return None
    return max(1.0, (completion_ns - budget_ns) / 1e9)
