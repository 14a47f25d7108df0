"""SLO-aware scheduling policy (pure): urgency order, deadline-bounded batches, service-time estimates
and the admission estimate. The batcher holds the queue and the clock; here is only arithmetic.

Times are integers in nanoseconds on one monotonic clock (the batcher's, see
:mod:`medserve.scheduling.clock`).
"""

from __future__ import annotations

import bisect
import collections
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    queue: Sequence[Queued],
    max_batch_size: int,
    now_ns: int,
    estimate: Estimate,
    max_cost_ns: int | None = None,
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
      would miss its deadline even so does not bound the batch;
    * the estimated execution time stays within ``max_cost_ns`` when given (the batcher's reserve for
      more urgent requests that may arrive while it runs, see :meth:`ArrivalRates.urgent_budget_ns`);
    * a request of a lower class than the head joins only if the head keeps the time of one more lone
      execution as slack before its deadline (execution times vary; the head must not miss its
      deadline for the sake of a less urgent request).
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
        if cost is not None and max_cost_ns is not None and cost > max_cost_ns:
            break
        if item.priority > head.priority and _crowds(head, now_ns, cost, estimate):
            break
        chosen.append(index)
        total += item.size
        own = _meetable(item.deadline_ns, now_ns, cost)
        if own is not None:
            tightest = own if tightest is None else min(tightest, own)
    return chosen


def _crowds(head: Queued, now_ns: int, cost_ns: int | None, estimate: Estimate) -> bool:
    """Whether a batch costing ``cost_ns`` leaves ``head`` less than one lone execution of slack."""
    lone = estimate(head.size)
    if head.deadline_ns is None or cost_ns is None or lone is None:
        return False
    return now_ns + cost_ns + lone > head.deadline_ns


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

    def seed(self, estimates_ns: Mapping[int, int]) -> None:
        """Start from ``estimates_ns`` (execution time per batch size, e.g. a stored profile's p50s) for
        the sizes not measured yet; live executions then move them as usual."""
        for batch_size, ns in estimates_ns.items():
            if batch_size >= 1 and ns >= 0 and batch_size not in self._ns:
                bisect.insort(self._sizes, batch_size)
                self._ns[batch_size] = float(ns)

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


class ArrivalRates:
    """Recent arrivals per priority level over the last ``window_ns`` (a sliding window): their rate,
    and the time budget (deadline minus arrival) of the latest request with a deadline."""

    def __init__(self, window_ns: int = 10_000_000_000) -> None:
        if window_ns <= 0:
            raise ValueError("window_ns must be > 0")
        self.window_ns = window_ns
        self._times: dict[int, collections.deque[int]] = {}
        self._budgets: dict[int, tuple[int, int]] = {}  # level -> (arrival ns, budget ns)

    def note(self, priority: int, now_ns: int, size: int = 1, budget_ns: int | None = None) -> None:
        """``size`` batch items of level ``priority`` arrived at ``now_ns``, due ``budget_ns`` later."""
        times = self._times.setdefault(priority, collections.deque())
        times.extend([now_ns] * max(size, 1))
        self._prune(times, now_ns)
        if budget_ns is not None:
            self._budgets[priority] = (now_ns, budget_ns)

    def urgent_budget_ns(self, priority: int, now_ns: int) -> int | None:
        """The smallest budget of the levels more urgent than ``priority`` seen within the window: a
        batch of ``priority`` that runs longer than that (less the urgent request's own execution)
        would make such a request, arriving just after it started, miss its deadline. None when no
        more urgent request with a deadline came lately."""
        recent = [
            budget
            for level, (seen, budget) in self._budgets.items()
            if level < priority and seen > now_ns - self.window_ns
        ]
        return min(recent) if recent else None

    def _prune(self, times: collections.deque[int], now_ns: int) -> None:
        while times and times[0] <= now_ns - self.window_ns:
            times.popleft()

    def above(self, priority: int, now_ns: int) -> float:
        """Batch items per second of the levels more urgent than ``priority``."""
        count = 0
        for level, times in self._times.items():
            if level < priority:
                self._prune(times, now_ns)
                count += len(times)
        return count / (self.window_ns / 1e9)


def stretched_ns(completion_ns: int, urgent_per_s: float, item_ns: int | None, cap: float = 0.9) -> int:
    """``completion_ns`` of queued work, stretched by more urgent work that will arrive meanwhile and go
    first: at ``urgent_per_s`` items a second of ``item_ns`` each, the instance spends a share
    ``rho = urgent_per_s × item_ns`` (at most ``cap``) on it, so the rest takes ``1 / (1 - rho)`` as long."""
    if item_ns is None or urgent_per_s <= 0:
        return completion_ns
    rho = min(cap, urgent_per_s * item_ns / 1e9)
    return int(completion_ns / (1 - rho))


def retry_after_s(completion_ns: int, budget_ns: int) -> float | None:
    """None when a request completing in ``completion_ns`` meets a deadline ``budget_ns`` away;
    otherwise how long the client should wait before retrying: the time the work ahead of it needs
    to shrink enough, at least one second."""
    if completion_ns <= budget_ns:
        return None
    return max(1.0, (completion_ns - budget_ns) / 1e9)
