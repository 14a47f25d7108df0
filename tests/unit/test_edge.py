"""Edge and hub logic without servers: the signed manifest (what an edge refuses), the hub's
publications, pins and rollbacks, its uplink receiver (each key once, audit ranges checked for
continuity and hashes) and the edge's backlog policy when full."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medserve.audit.record import GENESIS, seal, to_dict
from medserve.edge.client import HubClient, HubLink
from medserve.edge.hub import Hub, HubSettings
from medserve.edge.manifest import sign_manifest, verify_manifest
from medserve.edge.receiver import parse_items, receive
from medserve.edge.uplink import UplinkOutbox
from medserve.repository.repository import ModelRepository
from medserve.security.signing import TrustedKeys, create_signing_key, fingerprint, sign_artifact
from medserve.store.database import Database
from medserve.store.leases import LeaseBook
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import Conflict, InvalidInput, ModelLoadError, PermissionDenied

DIGEST = "ab" * 32


def _release(version: int = 1, artifact: str = "model.onnx") -> dict[str, object]:
    return {
        "model": "simple",
        "version": version,
        "artifact": artifact,
        "digest": DIGEST,
        "signature": {"algorithm": "ed25519"},
        "config": "runtime: onnxruntime\n",
        "published_at": "2026-12-07T00:00:00Z",
        "published_by": "admin",
    }


def _signed(key: Ed25519PrivateKey, group: str = "ward", **release: object) -> dict[str, object]:
    return sign_manifest({"group": group, "issued_at": "x", "releases": [{**_release(), **release}]}, key)


def test_a_manifest_verifies_only_unchanged_from_a_trusted_key_for_its_group() -> None:
    hub_key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = TrustedKeys({fingerprint(hub_key.public_key()): hub_key.public_key()})
    document = _signed(hub_key)
    assert [(r.model, r.version, r.digest) for r in verify_manifest(document, keys, "ward")] == [
        ("simple", 1, DIGEST)
    ]
    changed = copy.deepcopy(document)
    changed["manifest"]["releases"][0]["digest"] = "cd" * 32  # type: ignore[index]
    with pytest.raises(ModelLoadError, match="bad signature"):
        verify_manifest(changed, keys, "ward")
    with pytest.raises(ModelLoadError, match="unknown key"):
        verify_manifest(_signed(other), keys, "ward")
    with pytest.raises(ModelLoadError, match="for group 'icu', not 'ward'"):
        verify_manifest(_signed(hub_key, group="icu"), keys, "ward")
    with pytest.raises(ModelLoadError, match="not a plain file name"):
        verify_manifest(_signed(hub_key, artifact="../../etc/passwd"), keys, "ward")
    with pytest.raises(ModelLoadError, match="not a signed manifest"):
        verify_manifest({"releases": []}, keys, "ward")


@pytest.fixture()
def hub_parts(tmp_path: Path, database: Database) -> tuple[Hub, Path, Path, TrustedKeys]:
    database.migrate()
    create_signing_key(tmp_path / "publisher.key", tmp_path / "publisher.pub")
    create_signing_key(tmp_path / "hub.key", tmp_path / "hub.pub")
    repository = tmp_path / "repository"
    for version in (1, 2, 3):
        folder = repository / "simple" / str(version)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(f"weights {version}".encode())
    (repository / "simple" / "config.yaml").write_text("runtime: onnxruntime\n", encoding="utf-8")
    for version in (1, 2):
        sign_artifact(repository / "simple" / str(version) / "model.onnx", tmp_path / "publisher.key")
    keys = TrustedKeys.load([tmp_path / "publisher.pub"])
    from medserve.security.signing import load_private_key

    settings = HubSettings(load_private_key(tmp_path / "hub.key"), {"edge-1": "ward"})
    hub = Hub(database, ModelRepository(repository), keys, settings)
    return hub, repository, tmp_path, TrustedKeys.load([tmp_path / "publisher.pub", tmp_path / "hub.pub"])


def test_the_hub_publishes_signed_versions_pins_and_rolls_back_per_group(
    hub_parts: tuple[Hub, Path, Path, TrustedKeys],
) -> None:
    hub, repository, tmp_path, edge_keys = hub_parts
    with pytest.raises(InvalidInput, match="model.onnx.sig is missing"):
        hub.publish("ward", "simple", 3, "admin")
    hub.publish("ward", "simple", 1, "admin")
    hub.publish("ward", "simple", 2, "admin")
    hub.publish("ward", "simple", 2, "admin")  # the same bytes again: nothing changes
    assert [(r.version) for r in verify_manifest(hub.manifest("ward"), edge_keys, "ward")] == [2]
    assert verify_manifest(hub.manifest("icu"), edge_keys, "icu") == []  # another group: nothing
    assert hub.rollback("ward", "simple", "admin")["serving"] == 1
    assert [r.version for r in hub.releases("ward")] == [1]
    with pytest.raises(InvalidInput, match="no published version before 1"):
        hub.rollback("ward", "simple", "admin")
    with pytest.raises(InvalidInput, match="version 3 is not published"):
        hub.pin("ward", "simple", 3, "admin")
    hub.pin("ward", "simple", None, "admin")
    assert [r.version for r in hub.releases("ward")] == [2]
    (repository / "simple" / "2" / "model.onnx").write_bytes(b"changed")
    with pytest.raises(InvalidInput, match="changed after it was signed"):
        hub.publish("ward", "simple", 2, "admin")
    sign_artifact(repository / "simple" / "2" / "model.onnx", tmp_path / "publisher.key")
    with pytest.raises(Conflict, match="publish a new version"):
        hub.publish("ward", "simple", 2, "admin")
    assert hub.group_of("edge-1") == "ward"
    with pytest.raises(PermissionDenied, match="not an edge"):
        hub.group_of("admin")


def test_the_hub_refuses_a_version_signed_by_an_untrusted_key(
    hub_parts: tuple[Hub, Path, Path, TrustedKeys],
) -> None:
    hub, repository, tmp_path, _ = hub_parts
    create_signing_key(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    sign_artifact(repository / "simple" / "3" / "model.onnx", tmp_path / "stranger.key")
    with pytest.raises(InvalidInput, match="unknown key"):
        hub.publish("ward", "simple", 3, "admin")


def _chain(count: int) -> list[dict[str, object]]:
    records, previous = [], GENESIS
    for seq in range(1, count + 1):
        record = seal(AuditEvent(event="inference", model="simple"), seq=seq, time="t", prev_hash=previous)
        records.append(dict(to_dict(record)))
        previous = record.hash
    return records


def test_the_receiver_keeps_each_item_once_and_audit_ranges_only_in_an_unbroken_chain(
    database: Database,
) -> None:
    database.migrate()
    records = _chain(5)

    def item(key: str, recs: list[dict[str, object]]) -> dict[str, object]:
        return {"key": key, "kind": "audit", "payload": {"chain": "", "records": recs}}

    first = parse_items({"items": [item("a1", records[:3]), {"key": "s1", "kind": "sketch", "payload": {}}]})
    assert receive(database, "edge-1", first).accepted == ["a1", "s1"]
    again = receive(database, "edge-1", first)
    assert again.accepted == [] and again.duplicates == ["a1", "s1"]
    gap = receive(database, "edge-1", parse_items({"items": [item("a3", records[4:])]}))
    assert "starts at seq 5, the hub expects 4" in gap.refused["a3"]
    altered = [dict(r) for r in records[3:]]
    altered[0]["model"] = "other"
    broken = receive(
        database, "edge-1", parse_items({"items": [item("a2", altered), item("a3", records[4:])]})
    )
    assert "record 4" in broken.refused["a2"] and broken.accepted == []  # the rest of the batch waits
    good = receive(database, "edge-1", parse_items({"items": [item("a2", records[3:])]}))
    assert good.accepted == ["a2"]
    # another edge's chain is its own
    assert receive(database, "edge-2", parse_items({"items": [item("a1", records[:3])]})).accepted == ["a1"]
    with pytest.raises(InvalidInput, match="'kind' must be one of"):
        parse_items({"items": [{"key": "x", "kind": "video", "payload": {}}]})
    with pytest.raises(InvalidInput, match="'items' list"):
        parse_items([])


def test_a_full_backlog_sheds_sketches_oldest_first_and_never_drops_audit_or_alerts(
    database: Database,
) -> None:
    database.migrate()
    client = HubClient(HubLink("http://127.0.0.1:9"))
    outbox = UplinkOutbox(
        database, client, LeaseBook(database, "edge"), chain="", max_backlog=3, interval_s=1.0
    )
    for n in range(3):
        assert outbox.enqueue("sketch", f"sketch:{n}", {"n": n})
    assert outbox.enqueue("job", "job:1", {})  # sheds sketch:0, the oldest
    assert outbox.enqueue("audit", "audit:1", {})  # over the bound: audit is never dropped
    assert outbox.enqueue("alert", "alert:1", {})
    assert not outbox.enqueue("alert", "alert:1", {})  # its key again: queued once
    backlog = outbox.backlog()
    assert backlog["pending"] == {"sketch": 2, "job": 1, "audit": 1, "alert": 1}
    assert backlog["dropped"] == {"sketch": 1}
    assert outbox.enqueue("sketch", "sketch:3", {})  # sheds sketch:1
    assert outbox.enqueue("sketch", "sketch:4", {})  # sheds sketch:2
    assert outbox.enqueue("job", "job:2", {})  # sheds sketch:3
    assert outbox.enqueue("job", "job:3", {})  # sheds sketch:4
    assert not outbox.enqueue("job", "job:4", {})  # no sketch left to shed: the new item is dropped
    backlog = outbox.backlog()
    assert backlog["pending"] == {"job": 3, "audit": 1, "alert": 1}
    assert backlog["dropped"] == {"sketch": 5, "job": 1}


def test_ward_alerts_of_the_last_hour_go_up_once(database: Database) -> None:
    database.migrate()
    outbox = UplinkOutbox(
        database,
        HubClient(HubLink("http://127.0.0.1:9")),
        LeaseBook(database, "edge"),
        chain="",
        max_backlog=1,
        interval_s=1.0,
    )
    now = time.time()
    kept = [
        {"id": "a2", "created_at": now - 5, "severity": "high"},
        {"id": "a1", "created_at": now - 7200, "severity": "low"},  # older than an hour when first seen
    ]
    outbox.alert_source = lambda: kept
    assert outbox.collect() == 1
    assert outbox.collect() == 0  # the same alert again: queued once
    kept.insert(0, {"id": "a3", "created_at": now, "severity": "high"})
    assert outbox.collect() == 1
    assert outbox.backlog()["pending"] == {"alert": 2}  # past max_backlog: alerts are never dropped
