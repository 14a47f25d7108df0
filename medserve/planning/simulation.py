"""A discrete-event simulation of one server: Poisson arrivals, each model's dynamic batcher, and the
executions its devices can run at once.

The batcher is medserve's (:mod:`medserve.scheduling.batcher`), simplified: requests queue per model
in priority order (strict precedence across classes, first come first served within one); when an
execution slot of the model's device is free, a batch goes at once if the queue holds the largest
preferred batch size (or the batch limit), else when the head request has waited
``max_queue_delay_s``. Across models sharing a device, the batch whose head is the most urgent (then
the oldest) goes first, as the device arbiter orders them. A batch's execution time is drawn from its
service curve (:mod:`medserve.planning.service_curve`); a request's latency is its wait plus its
batch's execution plus a fixed ``overhead_ms`` (decoding, encoding and transfer in the door).

Everything is seeded: the same inputs give the same result.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from medserve.planning.service_curve import ServiceCurve
from medserve.values.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Stream:
    """Requests of one demand arriving at one server."""

    name: str
    model: str
    rate_per_s: float
    priority: int = 3
    items: int = 1


@dataclass(frozen=True, slots=True)
class Batcher:
    """One model's batcher on the server, and the device its batches run on."""

    model: str
    device: str
    curve: ServiceCurve
    max_batch_size: int = 1
    max_queue_delay_s: float = 0.0
    preferred: tuple[int, ...] = ()

    @property
    def limit(self) -> int:
        return max(1, min(self.max_batch_size, self.curve.max_batch_size))

    @property
    def target(self) -> int:
        return min(max(self.preferred) if self.preferred else self.limit, self.limit)


@dataclass(frozen=True, slots=True)
class StreamStats:
    name: str
    requests: int
    """Requests measured (those arriving after the warm-up)."""
    p50_ms: float
    p99_ms: float
    mean_ms: float


@dataclass
class SimulationResult:
    streams: dict[str, StreamStats]
    utilisation: dict[str, float]
    """Busy share of each device's execution slots over the measured time."""
    mean_batch: dict[str, float]
    """Mean rows per execution of each model."""
    simulated_s: float
    saturated: bool = False
    """The queue grew past its bound: the server cannot keep up (latencies are then meaningless)."""
    notes: list[str] = field(default_factory=list)


_ARRIVAL, _DONE, _TIMER = 0, 1, 2


class _Queue:
    """One model's waiting requests: a FIFO per priority level."""

    def __init__(self) -> None:
        self.levels: dict[int, deque[tuple[float, int, int]]] = {}
        self.order: list[int] = []
        self.count = 0
        self.rows = 0

    def push(self, priority: int, arrival: float, rows: int, stream: int) -> None:
        queue = self.levels.get(priority)
        if queue is None:
            queue = self.levels[priority] = deque()
            self.order = sorted(self.levels)
        queue.append((arrival, rows, stream))
        self.count += 1
        self.rows += rows

    def head(self) -> tuple[int, float]:
        for priority in self.order:
            queue = self.levels[priority]
            if queue:
                return priority, queue[0][0]
        raise IndexError("empty queue")

    def take(self, limit: int) -> list[tuple[float, int, int]]:
        """The most urgent requests whose rows fit ``limit`` (the first one always goes)."""
        taken: list[tuple[float, int, int]] = []
        rows = 0
        for priority in self.order:
            queue = self.levels[priority]
            while queue and (not taken or rows + queue[0][1] <= limit):
                item = queue.popleft()
                taken.append(item)
                rows += item[1]
            if queue:
                break
        self.count -= len(taken)
        self.rows -= rows
        return taken


def simulate(
    streams: Sequence[Stream],
    batchers: Sequence[Batcher],
    slots: dict[str, int],
    *,
    horizon_s: float,
    seed: int = 0,
    overhead_ms: float = 0.0,
    warmup_fraction: float = 0.1,
    max_queued: int = 50_000,
) -> SimulationResult:
    """Run ``streams`` through ``batchers`` on devices with ``slots`` executions each for
    ``horizon_s`` simulated seconds (the first ``warmup_fraction`` is not measured)."""
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise InvalidInput("the simulated time must be a positive number of seconds")
    by_model = {b.model: i for i, b in enumerate(batchers)}
    for stream in streams:
        if stream.model not in by_model:
            raise InvalidInput(f"stream '{stream.name}': no batcher for model '{stream.model}'")
    for batcher in batchers:
        if slots.get(batcher.device, 0) < 1:
            raise InvalidInput(f"model '{batcher.model}': device '{batcher.device}' has no execution slot")
    rng = np.random.default_rng(seed)
    warmup = horizon_s * warmup_fraction
    times: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for index, stream in enumerate(streams):
        count = int(rng.poisson(stream.rate_per_s * horizon_s)) if stream.rate_per_s > 0 else 0
        times.append(rng.uniform(0.0, horizon_s, count))
        owners.append(np.full(count, index, dtype=np.int64))
    all_times = np.concatenate(times) if times else np.empty(0)
    all_owners = np.concatenate(owners) if owners else np.empty(0, dtype=np.int64)
    order = np.argsort(all_times, kind="stable")
    arrivals, arrival_owner = all_times[order].tolist(), all_owners[order].tolist()

    queues = [_Queue() for _ in batchers]
    limits = [b.limit for b in batchers]
    targets = [b.target for b in batchers]
    delays = [b.max_queue_delay_s - 1e-12 for b in batchers]
    device_of = [b.device for b in batchers]
    params = [b.curve.sampler(limit) for b, limit in zip(batchers, limits)]
    on_device: dict[str, list[int]] = {}
    for i, b in enumerate(batchers):
        on_device.setdefault(b.device, []).append(i)
    free = dict(slots)
    busy = dict.fromkeys(slots, 0.0)
    executions = [0] * len(batchers)
    rows_run = [0] * len(batchers)
    latencies: list[list[float]] = [[] for _ in streams]
    normals = rng.standard_normal(max(1024, len(arrivals) + 16)).tolist()
    drawn = 0
    events: list[tuple[float, int, int, object]] = []
    sequence = 0
    queued = 0
    timer_at = dict.fromkeys(slots, math.inf)
    overhead_s = overhead_ms / 1000.0

    def execution_s(index: int, rows: int) -> float:
        nonlocal drawn, normals
        if drawn >= len(normals):
            normals = rng.standard_normal(len(normals)).tolist()
            drawn = 0
        z = normals[drawn]
        drawn += 1
        limit = limits[index]
        mu, sigma = params[index][min(rows, limit)]
        scale = rows / limit if rows > limit else 1.0  # one request larger than any batch: in pieces
        return math.exp(mu + sigma * z) * scale / 1000.0

    def dispatch(device: str, now: float) -> None:
        nonlocal sequence, queued
        while free[device] > 0:
            best, best_key, wake = -1, (0, 0.0), math.inf
            for index in on_device[device]:
                queue = queues[index]
                if not queue.count:
                    continue
                priority, head = queue.head()
                if queue.rows >= targets[index] or now >= head + delays[index]:
                    if best < 0 or (priority, head) < best_key:
                        best, best_key = index, (priority, head)
                elif head + delays[index] < wake:
                    wake = head + delays[index] + 1e-12
            if best < 0:
                if wake < timer_at[device]:
                    timer_at[device] = wake
                    sequence += 1
                    heapq.heappush(events, (wake, sequence, _TIMER, device))
                return
            members = queues[best].take(limits[best])
            queued -= len(members)
            rows = sum(m[1] for m in members)
            took = execution_s(best, rows)
            free[device] -= 1
            start, end = max(now, warmup), min(now + took, horizon_s)
            if end > start:
                busy[device] += end - start
            if now >= warmup:
                executions[best] += 1
                rows_run[best] += rows
            sequence += 1
            heapq.heappush(events, (now + took, sequence, _DONE, (device, members)))

    position, saturated = 0, False
    while position < len(arrivals) or events:
        if position < len(arrivals) and (not events or arrivals[position] <= events[0][0]):
            now, owner = arrivals[position], arrival_owner[position]
            position += 1
            stream = streams[owner]
            index = by_model[stream.model]
            queues[index].push(stream.priority, now, stream.items, owner)
            queued += 1
            if queued > max_queued:
                saturated = True
                break
            dispatch(device_of[index], now)
            continue
        now, _, kind, payload = heapq.heappop(events)
        if kind == _DONE:
            done = cast(tuple[str, list[tuple[float, int, int]]], payload)
            device = done[0]
            for arrival, _rows, owner in done[1]:
                if arrival >= warmup:
                    latencies[owner].append(now - arrival + overhead_s)
            free[device] += 1
            dispatch(device, now)
        else:
            device = str(payload)
            if timer_at[device] <= now:
                timer_at[device] = math.inf
            dispatch(device, now)

    measured_s = horizon_s - warmup
    result = SimulationResult(
        streams={},
        utilisation={d: busy[d] / (measured_s * slots[d]) for d in slots},
        mean_batch={
            b.model: rows_run[i] / executions[i] if executions[i] else 0.0 for i, b in enumerate(batchers)
        },
        simulated_s=horizon_s,
        saturated=saturated,
    )
    for stream, values in zip(streams, latencies):
        if values and not saturated:
            array = np.asarray(values) * 1000.0
            p50, p99 = np.percentile(array, [50, 99])
            result.streams[stream.name] = StreamStats(
                stream.name, len(values), float(p50), float(p99), float(array.mean())
            )
        else:
            result.streams[stream.name] = StreamStats(stream.name, len(values), math.inf, math.inf, math.inf)
    return result
