"""A pool of model instances, each run on a worker thread off the event loop.

Instances may sit on different devices, with different batch limits (see
:mod:`medserve.scheduling.plan`). Each has a *weight*, its share of the traffic (placement gives the
measured capacity of its device). When several are free, the one furthest behind its share (batch
items dispatched to it divided by its weight) takes the next batch, so at light load traffic splits
by weight; under load every instance takes the next batch as soon as it is free, so the split follows
the devices' actual speed.

An instance whose device failed is *retired*: a free one leaves the pool at once, a busy one when it is
released; both are unloaded on a worker thread. New instances (a failover's replacements) are added
while the pool serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from medserve.runtimes.base import Runtime

T = TypeVar("T")
log = logging.getLogger(__name__)

#: worker threads are started on demand, one per instance running at once, up to this many
_MAX_WORKERS = 64


@dataclass(slots=True)
class Slot:
    """One instance in the pool: where it runs, the largest batch it takes (0: the batcher's limit)
    and its weight."""

    instance: Runtime
    device: str
    runtime: str
    max_batch_size: int = 0
    weight: float = 1.0
    dispatched: float = 0.0
    retired: bool = False

    @property
    def lag(self) -> float:
        """Batch items dispatched per unit of weight: the smallest goes next."""
        return self.dispatched / self.weight


class InstancePool:
    """Hands out free instances; engine work runs in a thread pool (or on ``executor``, e.g. a test's
    that runs it in simulated time)."""

    def __init__(
        self,
        instances: Sequence[Runtime],
        name: str,
        slots: Sequence[Slot] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if slots is None:
            slots = [Slot(i, i.device(), i.name or type(i).__name__) for i in instances]
        elif [s.instance for s in slots] != list(instances):
            raise ValueError("slots must describe the instances, in order")
        if not slots:
            raise ValueError("an instance pool needs at least one instance")
        for slot in slots:
            if not slot.weight > 0:
                raise ValueError(f"instance weight must be > 0, not {slot.weight}")
        self.name = name
        self._slots: list[Slot] = list(slots)
        self._free: list[Slot] = list(slots)
        self._freed = asyncio.Event()
        #: Whether engine work runs on the pool's own worker threads; a given executor (e.g. a test's
        #: simulated time) is used for every run, so no batch runs inline on the event loop.
        self.own_threads = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=max(_MAX_WORKERS, len(slots)), thread_name_prefix=f"medserve-{name}"
        )

    @property
    def instances(self) -> list[Runtime]:
        """The instances in service (not retired)."""
        return [s.instance for s in self._slots if not s.retired]

    @property
    def slots(self) -> list[Slot]:
        return [s for s in self._slots if not s.retired]

    def __len__(self) -> int:
        return sum(1 for s in self._slots if not s.retired)

    def idle(self) -> int:
        return len(self._free)

    def devices(self) -> list[str]:
        """Devices with instances in service, in the order they were added."""
        return list(dict.fromkeys(s.device for s in self._slots if not s.retired))

    def best(self) -> Slot | None:
        """The free instance that should take the next batch, or None when all are busy."""
        return min(self._free, key=lambda s: s.lag) if self._free else None

    async def wait_free(self) -> None:
        """Wait until an instance is free."""
        while not self._free:
            self._freed.clear()
            await self._freed.wait()

    def take(self, slot: Slot, items: int = 1) -> Runtime:
        """Hand out ``slot`` (free) for a batch of ``items``."""
        self._free.remove(slot)
        slot.dispatched += items
        return slot.instance

    async def acquire(self) -> Runtime:
        """Wait for a free instance and take the best one."""
        await self.wait_free()
        slot = self.best()
        if slot is None:  # pragma: no cover - wait_free returned with a free one on this loop
            raise RuntimeError("no free instance")
        return self.take(slot)

    def slot(self, instance: Runtime) -> Slot:
        for slot in self._slots:
            if slot.instance is instance:
                return slot
        raise KeyError(f"instance {instance!r} is not in pool {self.name}")

    def release(self, instance: Runtime) -> None:
        """Return an instance after its batch; a retired one is unloaded instead."""
        slot = self.slot(instance)
        if slot.retired:
            self._slots.remove(slot)
            self._unload(slot)
            return
        self._free.append(slot)
        self._freed.set()

    def add(self, slot: Slot) -> None:
        """Put a new instance in service. It starts level with the instance furthest behind, so it
        does not take all traffic until it has caught up with the others' history."""
        if not slot.weight > 0:
            raise ValueError(f"instance weight must be > 0, not {slot.weight}")
        active = [s for s in self._slots if not s.retired]
        slot.dispatched = min((s.lag for s in active), default=0.0) * slot.weight
        self._slots.append(slot)
        self._free.append(slot)
        self._freed.set()

    def retire(self, device: str) -> int:
        """Take every instance on ``device`` out of service; returns how many were in service."""
        count = 0
        for slot in list(self._slots):
            if slot.device != device or slot.retired:
                continue
            slot.retired = True
            count += 1
            if slot in self._free:
                self._free.remove(slot)
                self._slots.remove(slot)
                self._unload(slot)
        return count

    def _unload(self, slot: Slot) -> None:
        def unload() -> None:
            try:
                slot.instance.unload()
            except Exception as exc:  # a faulty device may fail to release too; the pool goes on
                log.warning("unloading an instance on %s failed: %s", slot.device, exc)

        self._executor.submit(unload)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        for slot in self._slots:
            slot.instance.unload()
        self._slots = []
        self._free = []
