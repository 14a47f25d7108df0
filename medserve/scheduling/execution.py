"""One engine execution on a worker thread (merge, run, split), and what the batcher reports of it.

Requests may share an execution when batching is on. A failing batch is retried request by request,
so one bad request fails alone, except when the error is a device fault: then every request of the
batch gets it and the batcher moves the work to another device (see ``DeviceFaults``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medserve.scheduling.batching import merge, split
from medserve.scheduling.pool import Slot
from medserve.values.errors import InferenceFailed, MedserveError


@dataclass(slots=True)
class ExecutionTimes:
    """One engine execution: its batch size, where its time went (nanoseconds), the device and runtime
    of the instance that ran it, and the energy attributed to it (None: not metered)."""

    batch_size: int
    input_ns: int
    infer_ns: int
    output_ns: int
    device: str = ""
    runtime: str = ""
    joules: float | None = None
    energy_source: str = ""
    #: what the engine said of this run, for the audit records of its requests ('' for nothing)
    note: str = ""

    @property
    def total_ns(self) -> int:
        return self.input_ns + self.infer_ns + self.output_ns


ExecutionListener = Callable[[ExecutionTimes], None]


class Metered(Protocol):
    """Energy attributed to one engine run; final once its context has exited."""

    @property
    def joules(self) -> float: ...

    @property
    def source(self) -> str: ...


#: Wraps one engine run on an instance: ``with meter(slot) as energy: instance.run(...)``.
Meter = Callable[[Slot], AbstractContextManager[Metered]]


class DeviceFaults(Protocol):
    """What the batcher needs to move work off a failing device."""

    def is_fault(self, error: BaseException) -> bool:
        """Whether an engine error means the device is in trouble (not the request)."""
        ...

    def moved(self, slot: Slot, error: BaseException) -> bool:
        """On the event loop, after ``slot``'s instance raised the fault ``error``: take its device out
        of service and start replacing it. True when the failed work may be retried (instances remain
        or are coming)."""
        ...

    def unavailable(self) -> str | None:
        """Why no instance can serve any more (every device failed), or None."""
        ...


#: A request's result: its outputs and the execution that produced them, or its error.
Outcome = tuple[dict[str, np.ndarray], ExecutionTimes] | MedserveError


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How the batcher runs its batches: output names, batching, energy meter, device-fault test, and
    the clock that times the parts of an execution (the batcher's)."""

    output_names: list[str]
    batching: bool
    meter: Meter | None = None
    is_fault: Callable[[BaseException], bool] | None = None
    now_ns: Callable[[], int] = time.perf_counter_ns


def run_batch(
    slot: Slot,
    items: Sequence[tuple[dict[str, np.ndarray], int]],
    options: RunOptions,
    executions: list[ExecutionTimes],
) -> list[Outcome]:
    """Worker thread: the results of ``items`` (inputs, batch size) run together on ``slot``'s instance;
    each execution is appended to ``executions``."""
    try:
        return list(_run_once(slot, items, options, executions))
    except MedserveError as exc:
        if len(items) == 1 or (options.is_fault is not None and options.is_fault(exc)):
            return [exc] * len(items)
    results: list[Outcome] = []
    for item in items:
        try:
            results.extend(_run_once(slot, [item], options, executions))
        except MedserveError as exc:
            results.append(exc)
    return results


def _run_once(
    slot: Slot,
    items: Sequence[tuple[dict[str, np.ndarray], int]],
    options: RunOptions,
    executions: list[ExecutionTimes],
) -> list[tuple[dict[str, np.ndarray], ExecutionTimes]]:
    instance = slot.instance
    now_ns = options.now_ns
    t0 = now_ns()
    merged = merge([inputs for inputs, _ in items])
    t1 = now_ns()
    joules: float | None = None
    source = ""
    if options.meter is None:
        outputs = instance.run(merged, options.output_names)
    else:
        with options.meter(slot) as energy:
            outputs = instance.run(merged, options.output_names)
        joules, source = energy.joules, energy.source
    t2 = now_ns()
    sizes = [size for _, size in items]
    try:
        parts = split(outputs, sizes) if options.batching else [outputs]
    except ValueError as exc:
        raise InferenceFailed(str(exc)) from None
    t3 = now_ns()
    execution = ExecutionTimes(
        sum(sizes), t1 - t0, t2 - t1, t3 - t2, slot.device, slot.runtime, joules, source, instance.take_note()
    )
    executions.append(execution)
    return [(part, execution) for part in parts]
