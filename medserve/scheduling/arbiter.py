"""Precedence across the models that share a device.

Each model version's batcher orders its own queue (strict precedence across classes, earliest
deadline first within one), but models on one device share its cores or its GPU: model A's routine
batch, started while a STAT request waits for model B, slows B's STAT execution down, or makes it
wait for the cores. The arbiter, one per registry, closes that gap: a batch headed by a request of
class *c* does not start on a device while another model has a more urgent request queued for that
device or executing on it. The most urgent work never waits, so there is no cycle; a waiting batch
is re-examined whenever a request arrives or an execution ends anywhere, and the wait is capped
(``max_wait_s`` per batch) so that sustained urgent load on one model slows the others down without
stopping them.

Queued requests count for every device of the model's pool (a request is given an instance only
when it is dispatched); an executing batch counts for the device it runs on, at the class of its
most urgent member.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from medserve.scheduling.clock import SYSTEM_CLOCK, Clock, Wakeup

__all__ = ["DEFAULT_MAX_WAIT_S", "DeviceArbiter", "Member"]

DEFAULT_MAX_WAIT_S = 0.5
"""How long at most a batch waits for other models' more urgent work before it starts anyway."""


class Member(Protocol):
    """A batcher, as the arbiter sees it."""

    def devices(self) -> list[str]:
        """The devices its instances are on."""
        ...

    def most_urgent_queued(self) -> int | None:
        """The priority level (1 = most urgent) of its most urgent queued request; None when empty."""
        ...


class DeviceArbiter:
    """Keeps less urgent batches of one model from starting while another model on the same device
    has more urgent work queued or executing."""

    def __init__(self, max_wait_s: float = DEFAULT_MAX_WAIT_S, clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_wait_s = max_wait_s
        self.max_wait_ns = round(max_wait_s * 1e9)
        self._members: list[Member] = []
        self._running: Counter[tuple[int, str, int]] = Counter()  # (member id, device, priority)
        self._changed = Wakeup(clock)
        self.waits_total = 0
        """Batches that waited for another model's more urgent work (the tests read it)."""

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members)

    def join(self, member: Member) -> None:
        self._members.append(member)

    def leave(self, member: Member) -> None:
        self._members = [m for m in self._members if m is not member]
        for key in [k for k in self._running if k[0] == id(member)]:
            del self._running[key]
        self.notify()

    def notify(self) -> None:
        """Something changed (a request arrived, an execution ended): waiting batches look again."""
        self._changed.notify()

    def started(self, member: Member, device: str, priority: int) -> None:
        self._running[(id(member), device, priority)] += 1

    def finished(self, member: Member, device: str, priority: int) -> None:
        key = (id(member), device, priority)
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self.notify()

    def outranked(self, member: Member, device: str, priority: int) -> bool:
        """Whether another model has work more urgent than ``priority`` queued for or executing on
        ``device``."""
        for (owner, where, level), count in self._running.items():
            if count > 0 and owner != id(member) and where == device and level < priority:
                return True
        for other in self._members:
            if other is member:
                continue
            queued = other.most_urgent_queued()
            if queued is not None and queued < priority and device in other.devices():
                return True
        return False

    async def wait_turn(self, member: Member, device: str, priority: int, now_ns: int, until_ns: int) -> bool:
        """Wait until a change anywhere, at most until ``until_ns`` (on the arbiter's clock; ``now_ns``
        is the time now), if ``member``'s batch of ``priority`` is outranked on ``device``; returns
        whether it was (the caller then looks at its queue again)."""
        if until_ns <= now_ns or not self.outranked(member, device, priority):
            return False
        await self._changed.wait(until_ns)
        return True
