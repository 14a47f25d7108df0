"""The audit trail writes on its writer thread: a journal lock held elsewhere never stalls the loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from medserve.audit.journal import Journal
from medserve.audit.trail import AuditTrail
from medserve.store.database import Database
from medserve.values.audit_event import INFERENCE, AuditEvent

GUARD_S = 20.0  # how long the lock holder waits for the test before letting go anyway


def event(index: int) -> AuditEvent:
    return AuditEvent(INFERENCE, principal="svc", door="http", model="simple", request_id=str(index))


async def test_a_held_journal_lock_does_not_stall_the_event_loop(
    migrated_database: Database, tmp_path: Path
) -> None:
    trail = AuditTrail(migrated_database, tmp_path / "audit", fsync=False, flush_interval_s=0.01)
    trail.open()
    other = Journal(tmp_path / "audit", fsync=False)  # another process appending to the same chain
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other._locked():
            locked.set()
            release.wait(GUARD_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, GUARD_S)
        recording = asyncio.ensure_future(asyncio.gather(*(trail.record(event(i)) for i in range(5))))
        ticks = 0
        for _ in range(200):  # the loop goes on running other work while the append waits
            await asyncio.sleep(0)
            ticks += 1
        pending_while_locked = not recording.done()
        release.set()
        await asyncio.wait_for(recording, GUARD_S)
        assert ticks == 200 and pending_while_locked
        assert trail.written_total == 5
        assert [r.request_id for r in Journal(tmp_path / "audit", fsync=False).read()] == list("01234")
    finally:
        release.set()
        holder.join(GUARD_S)
        other.close()
        trail.close()
