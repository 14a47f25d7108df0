"""Moving a model version's instances off a failed device: the batcher's ``DeviceFaults``.

When an instance's engine raises an error that ``is_fault`` recognises (a CUDA error, out of memory, a
lost device), every instance on that device is retired from the pool at once, ``replan`` gives the
next-best plan without that device (automatic placement's failover, or the CPU for a model placed by
``config.yaml``), the groups of that plan on devices not yet serving are loaded on a worker thread and
join the pool, and ``on_moved`` logs and counts the event. The batcher puts the failed requests back
in its queue for one retry; instances still serving on other devices take them at once, otherwise
the new ones when they are ready. A replacement that fails to load counts as a failure of its device
in turn, so placement moves on to the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from medserve.runtimes.base import Runtime
from medserve.scheduling.plan import InstanceGroup, InstancePlan
from medserve.scheduling.pool import InstancePool, Slot

log = logging.getLogger(__name__)

#: The plan without a failed device: (current plan, failed device, reason) → new plan, None: nowhere.
Replan = Callable[[InstancePlan, str, str], InstancePlan | None]
#: Blocking: load and warm up a group's instances.
Build = Callable[[InstanceGroup], list[Runtime]]
#: Log and count a move: (from device, to devices (empty: nowhere), reason).
Moved = Callable[[str, list[str], str], None]


def fault_reason(error: BaseException) -> str:
    """The first line of an engine error, short enough for a log line and a metric's story."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def slot_for(instance: Runtime, group: InstanceGroup) -> Slot:
    """A pool slot for one of ``group``'s instances: its weight is its share of the group's share."""
    return Slot(
        instance,
        group.device,
        group.runtime,
        group.max_batch_size,
        max(group.share / group.count, 1e-6),
    )


class Failover:
    """Replaces a model version's instances on a failed device (see the module)."""

    def __init__(
        self,
        pool: InstancePool,
        plan: InstancePlan,
        *,
        is_fault: Callable[[BaseException], bool],
        replan: Replan,
        build: Build,
        on_moved: Moved,
        label: str = "model",
    ) -> None:
        self.pool = pool
        self.plan = plan
        self.failed: dict[str, str] = {}
        self._is_fault = is_fault
        self._replan = replan
        self._build = build
        self._on_moved = on_moved
        self._label = label
        self._loading: set[asyncio.Task[None]] = set()
        self._closed = False

    def is_fault(self, error: BaseException) -> bool:
        return self._is_fault(error)

    def moved(self, slot: Slot, error: BaseException) -> bool:
        """Retire ``slot``'s device and start its replacement; True when the work may be retried."""
        if slot.device not in self.failed:
            self._fail(slot.device, fault_reason(error))
        return len(self.pool) > 0 or bool(self._loading)

    def unavailable(self) -> str | None:
        """Why nothing can serve: every instance retired and none coming; None while some can."""
        if len(self.pool) or self._loading:
            return None
        failed = "; ".join(f"{device}: {reason}" for device, reason in self.failed.items())
        return f"no instance left to run it: its device(s) failed ({failed}); reload the model"

    def _fail(self, device: str, reason: str) -> None:
        self.failed[device] = reason
        retired = self.pool.retire(device)
        plan = self._replan(self.plan, device, reason)
        if plan is None or not plan.groups:
            self._on_moved(device, [], reason)
            log.error(
                "%s: device %s failed and no other device can take its %d instance(s)",
                self._label,
                device,
                retired,
            )
            return
        self.plan = plan
        serving = set(self.pool.devices())
        missing = [g for g in plan.groups if g.device not in serving and g.device not in self.failed]
        self._on_moved(device, plan.devices, reason)
        for group in missing:
            task = asyncio.get_running_loop().create_task(self._bring_up(group))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)

    async def _bring_up(self, group: InstanceGroup) -> None:
        try:
            instances = await self.pool.call(lambda: self._build(group))
        except Exception as exc:  # the replacement's engine failed: its device fails in turn
            log.error("%s: replacement instances on %s failed to load: %s", self._label, group.device, exc)
            if group.device not in self.failed and not self._closed:
                self._fail(group.device, f"replacement failed to load: {fault_reason(exc)}")
            return
        if self._closed:
            for instance in instances:
                instance.unload()
            return
        for instance in instances:
            self.pool.add(slot_for(instance, group))
        log.info(
            "%s: %d instance(s) of %s now serve on %s",
            self._label,
            len(instances),
            group.runtime,
            group.device,
        )

    async def wait(self) -> None:
        """Until the replacements under way are in service (tests, shutdown)."""
        while self._loading:
            await asyncio.gather(*self._loading, return_exceptions=True)

    async def close(self) -> None:
        """Stop: replacements still loading are unloaded when they finish."""
        self._closed = True
        await self.wait()
