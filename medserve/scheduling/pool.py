"""A pool of model instances, each run on its own worker thread off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from medserve.runtimes.base import Runtime

T = TypeVar("T")


class InstancePool:
    """Hands out free instances; engine work runs in a thread pool sized to the instance count."""

    def __init__(self, instances: Sequence[Runtime], name: str) -> None:
        if not instances:
            raise ValueError("an instance pool needs at least one instance")
        self.instances = list(instances)
        self._free: asyncio.Queue[Runtime] = asyncio.Queue()
        for instance in self.instances:
            self._free.put_nowait(instance)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self.instances), thread_name_prefix=f"medserve-{name}"
        )

    def __len__(self) -> int:
        return len(self.instances)

    def idle(self) -> int:
        return self._free.qsize()

    async def acquire(self) -> Runtime:
        return await self._free.get()

    def release(self, instance: Runtime) -> None:
        self._free.put_nowait(instance)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        for instance in self.instances:
            instance.unload()
