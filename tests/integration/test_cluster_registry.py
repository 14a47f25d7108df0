"""The replica registry (SQLite and PostgreSQL): a replica is up while it beats, stopped after a clean
stop, lost when its heartbeat goes stale without one; its id is kept across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from medserve.cluster.registry import LOST, STOPPED, UP, ReplicaRegistry, list_replicas
from medserve.store.database import Database
from medserve.store.identity import replica_id
from medserve.values.errors import InvalidConfig


async def test_up_stopped_and_lost(migrated_database: Database) -> None:
    models = ["simple"]
    alive = ReplicaRegistry(
        migrated_database,
        "replica-a",
        "host-a:8000",
        "0.1.0",
        models=lambda: models,
        ready=lambda: True,
        heartbeat_s=0.05,
    )
    killed = ReplicaRegistry(
        migrated_database,
        "replica-b",
        "host-b:8000",
        "0.1.0",
        models=list,
        ready=lambda: True,
        heartbeat_s=60,
    )
    await alive.start()
    await killed.start()
    models.append("densenet")
    await asyncio.sleep(0.4)  # replica-b never beats again: killed -9
    found = {r.id: r for r in list_replicas(migrated_database, stale_after_s=0.3)}
    assert found["replica-a"].state == UP and found["replica-a"].ready
    assert found["replica-a"].models == ["densenet", "simple"]  # the heartbeat carries what is loaded
    assert found["replica-b"].state == LOST and not found["replica-b"].ready
    await alive.stop()
    stopped = {r.id: r for r in list_replicas(migrated_database, stale_after_s=30)}["replica-a"]
    assert stopped.state == STOPPED and not stopped.ready
    assert stopped.document()["address"] == "host-a:8000"
    if killed._task is not None:
        killed._task.cancel()


def test_the_replica_id_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = replica_id("", tmp_path / "data")
    assert first == replica_id("", tmp_path / "data") != replica_id("", tmp_path / "other")
    assert replica_id("medserve-0", tmp_path / "data") == "medserve-0"
    with pytest.raises(InvalidConfig, match="replica id 'a b' is not usable"):
        replica_id("a b", tmp_path)
