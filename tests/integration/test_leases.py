"""Leases on units of work, on SQLite and PostgreSQL: replicas claiming at once never share a key, a
dead holder's lease is taken over after its expiry with a new fencing token, and a holder that lost
its lease cannot commit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from medserve.store.database import Database
from medserve.store.lease_keeper import LeaseKeeper
from medserve.store.leases import LeaseBook, LeaseLost
from medserve.store.tables import ExportRow


def _exports(database: Database, count: int) -> None:
    now = datetime.now(UTC)
    with database.session() as session, session.begin():
        for index in range(count):
            session.add(
                ExportRow(
                    id=f"e{index:04d}",
                    result_id=f"r{index:04d}",
                    destination="pacs",
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    last_error="",
                    receipt="",
                    created_at=now,
                )
            )


def test_replicas_claiming_at_once_never_share_a_key(migrated_database: Database) -> None:
    _exports(migrated_database, 60)
    candidates = select(ExportRow.id).where(ExportRow.state == "pending").order_by(ExportRow.id)
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(3)

    def replica(name: str) -> None:
        book = LeaseBook(Database(migrated_database.url), name, ttl_s=30)
        barrier.wait()
        mine: list[str] = []
        while batch := book.claim("export", candidates, 7):
            mine += [lease.key for lease in batch]
        claimed[name] = mine

    threads = [threading.Thread(target=replica, args=(f"replica-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [key for keys in claimed.values() for key in keys]
    assert sorted(every) == [f"e{i:04d}" for i in range(60)]  # each once, none lost
    assert len(set(every)) == len(every)


def test_an_expired_lease_is_taken_over_with_a_new_token(migrated_database: Database) -> None:
    dead = LeaseBook(migrated_database, "replica-a", ttl_s=0.3)
    alive = LeaseBook(migrated_database, "replica-b", ttl_s=30)
    first = dead.acquire("job", "j1")
    assert first is not None and first.token == 1
    assert alive.acquire("job", "j1") is None  # live: not taken
    again = dead.acquire("job", "j1")  # the same holder keeps its lease and its token
    assert again is not None and again.token == 1 and again.expires_at >= first.expires_at
    time.sleep(0.4)
    second = alive.acquire("job", "j1")
    assert second is not None and second.holder == "replica-b" and second.token == 2
    assert alive.live_holder("job", "j1") == "replica-b"
    with migrated_database.engine.begin() as connection, pytest.raises(LeaseLost):
        dead.fence(connection, first)  # the old holder cannot commit
    with migrated_database.engine.begin() as connection:
        alive.fence(connection, second)


def test_the_heartbeat_keeps_a_lease_and_reports_one_lost(migrated_database: Database) -> None:
    book = LeaseBook(migrated_database, "replica-a", ttl_s=0.5)
    other = LeaseBook(migrated_database, "replica-b", ttl_s=30)
    keeper = LeaseKeeper(book, interval_s=0.1)
    lease = book.acquire("series", "1.2.3")
    assert lease is not None
    keeper.keep(lease)
    keeper.start()
    try:
        time.sleep(1.2)  # past two lifetimes: only the heartbeat keeps it
        assert other.acquire("series", "1.2.3") is None
        assert not keeper.lost("series", "1.2.3")
    finally:
        keeper.stop()
    assert other.acquire("series", "1.2.3") is not None  # stopping gave the lease up


def test_a_lease_taken_over_is_reported_lost(migrated_database: Database) -> None:
    book = LeaseBook(migrated_database, "replica-a", ttl_s=0.3)
    keeper = LeaseKeeper(book, interval_s=60)  # this replica stalls: no beat in time
    lease = book.acquire("series", "1.2.3")
    assert lease is not None
    keeper.keep(lease)
    time.sleep(0.4)
    assert LeaseBook(migrated_database, "replica-b").acquire("series", "1.2.3") is not None
    keeper.beat()
    assert keeper.lost("series", "1.2.3") and keeper.current("series", "1.2.3") is None


def test_release_frees_the_key_at_once(migrated_database: Database) -> None:
    book = LeaseBook(migrated_database, "replica-a", ttl_s=30)
    lease = book.acquire("alert", "a1")
    assert lease is not None
    book.release(lease)
    assert book.live_holder("alert", "a1") is None
    assert LeaseBook(migrated_database, "replica-b").acquire("alert", "a1") is not None
