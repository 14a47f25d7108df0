"""Version lineage: first-load records, immutability, signatures, validation records, pins."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medserve.repository.lineage import Lineage, VersionLineage
from medserve.security.signing import TrustedKeys, create_signing_key, sign_artifact
from medserve.store.database import Database
from medserve.store.tables import Base
from medserve.values.digest import sha256_file
from medserve.values.errors import InvalidConfig, InvalidInput, ModelLoadError, StoreUnavailable

VALIDATION = """\
- dataset: CheXpert validation split
  metric: AUROC
  value: 0.91
  date: 2025-01-31
  author: Dr. Example
  notes: frontal views only
- dataset: internal-2024
  metric: sensitivity
  value: 1
  date: "2025-02-03"
  author: QA team
"""


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/m.db")
    Base.metadata.create_all(database.engine)
    return database


def _version(root: Path, version: int, content: bytes = b"weights") -> Path:
    folder = root / "repo" / "cxr" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.onnx"
    artifact.write_bytes(content)
    return artifact


def _check(lineage: Lineage, version: int, artifact: Path) -> VersionLineage:
    return lineage.check("cxr", version, artifact, sha256_file(artifact))


def test_first_load_is_recorded(db: Database, tmp_path: Path) -> None:
    artifact = _version(tmp_path, 3)
    before = datetime.now(UTC).replace(microsecond=0)
    record = _check(Lineage(db), 3, artifact)
    assert record.digest == sha256_file(artifact)
    assert (record.model, record.version, record.artifact, record.signer) == ("cxr", 3, "model.onnx", "")
    assert record.validation == []
    loaded_at = datetime.fromisoformat(record.first_loaded_at)
    assert record.first_loaded_at.endswith("Z") and loaded_at >= before
    params = record.to_parameters()
    assert params == {
        "artifact_sha256": record.digest,
        "first_loaded_at": record.first_loaded_at,
        "signed_by": "",
        "validation": [],
    }
    json.dumps(params)


def test_same_digest_loads_again(db: Database, tmp_path: Path) -> None:
    artifact = _version(tmp_path, 1)
    first = _check(Lineage(db), 1, artifact)
    again = _check(Lineage(db), 1, artifact)
    assert again == first
    assert Lineage(db).versions("cxr") == [first]


def test_changed_artifact_is_refused(db: Database, tmp_path: Path) -> None:
    lineage = Lineage(db)
    artifact = _version(tmp_path, 3)
    first = _check(lineage, 3, artifact)
    artifact.write_bytes(b"retrained weights")
    with pytest.raises(ModelLoadError) as caught:
        _check(lineage, 3, artifact)
    message = str(caught.value)
    assert message.startswith("model 'cxr' version 3: artifact digest mismatch: ")
    assert f"recorded {first.digest} on {first.first_loaded_at}, found {sha256_file(artifact)}" in message
    assert "publish the change as a new version" in message
    assert lineage.get("cxr", 3) == first


def test_concurrent_first_loads(db: Database, tmp_path: Path) -> None:
    artifact = _version(tmp_path, 1)
    results: list[VersionLineage] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(_check(Lineage(db), 1, artifact))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.first_loaded_at for r in results}) == 1


def _keys(tmp_path: Path) -> tuple[Path, TrustedKeys, str]:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    fp = create_signing_key(private, public)
    return private, TrustedKeys.load([public]), fp


def test_signed_artifact(db: Database, tmp_path: Path) -> None:
    private, keys, fp = _keys(tmp_path)
    artifact = _version(tmp_path, 1)
    sign_artifact(artifact, private)
    record = _check(Lineage(db, keys, require_signatures=True), 1, artifact)
    assert record.signer == fp and record.to_parameters()["signed_by"] == fp


def test_missing_signature_refused_when_required(db: Database, tmp_path: Path) -> None:
    _, keys, _ = _keys(tmp_path)
    artifact = _version(tmp_path, 1)
    with pytest.raises(ModelLoadError, match=r"version 1: signature file .*model\.onnx\.sig is missing"):
        _check(Lineage(db, keys, require_signatures=True), 1, artifact)
    assert Lineage(db).get("cxr", 1) is None
    assert _check(Lineage(db, keys), 1, artifact).signer == ""


def test_bad_signature_refused(db: Database, tmp_path: Path) -> None:
    private, keys, _ = _keys(tmp_path)
    artifact = _version(tmp_path, 1)
    sig = sign_artifact(artifact, private)
    sig.write_text(sig.read_text().replace('"signature": "', '"signature": "AAAA'))
    with pytest.raises(ModelLoadError, match="model 'cxr' version 1: .*bad signature"):
        _check(Lineage(db, keys), 1, artifact)
    assert Lineage(db).get("cxr", 1) is None


def test_signature_without_trusted_keys_refused(db: Database, tmp_path: Path) -> None:
    private, _, _ = _keys(tmp_path)
    artifact = _version(tmp_path, 1)
    sign_artifact(artifact, private)
    with pytest.raises(ModelLoadError, match="unknown key .*none configured"):
        _check(Lineage(db), 1, artifact)


def test_signature_of_old_artifact_reports_changed_artifact(db: Database, tmp_path: Path) -> None:
    private, keys, _ = _keys(tmp_path)
    artifact = _version(tmp_path, 1)
    sign_artifact(artifact, private)
    _check(Lineage(db, keys), 1, artifact)
    artifact.write_bytes(b"changed")
    with pytest.raises(ModelLoadError, match="artifact digest mismatch"):
        _check(Lineage(db, keys), 1, artifact)


def test_validation_records(db: Database, tmp_path: Path) -> None:
    lineage = Lineage(db)
    artifact = _version(tmp_path, 2)
    assert _check(lineage, 2, artifact).validation == []
    (artifact.parent / "validation.yaml").write_text(VALIDATION)  # added after the first load
    record = _check(lineage, 2, artifact)
    assert record.validation == [
        {
            "dataset": "CheXpert validation split",
            "metric": "AUROC",
            "value": 0.91,
            "date": "2025-01-31",
            "author": "Dr. Example",
            "notes": "frontal views only",
        },
        {
            "dataset": "internal-2024",
            "metric": "sensitivity",
            "value": 1.0,
            "date": "2025-02-03",
            "author": "QA team",
        },
    ]
    assert lineage.versions("cxr")[0].validation == record.validation
    json.dumps(record.to_parameters())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (VALIDATION.replace("value: 0.91", 'value: "high"'), "record 1, field 'value'"),
        (VALIDATION.replace("date: 2025-01-31", "date: 31/01/2025"), "record 1, field 'date': .*ISO date"),
        (VALIDATION.replace("  author: QA team\n", ""), "record 2, field 'author': Field required"),
        (VALIDATION.replace("notes:", "note:"), "record 1, field 'note': Extra inputs"),
        ("dataset: x\n", "expected a list of validation records"),
        ("- [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_validation_file_refused(db: Database, tmp_path: Path, text: str, reason: str) -> None:
    artifact = _version(tmp_path, 1)
    (artifact.parent / "validation.yaml").write_text(text)
    with pytest.raises(InvalidConfig, match=reason) as caught:
        _check(Lineage(db), 1, artifact)
    assert "cxr/1/validation.yaml" in str(caught.value)
    assert Lineage(db).get("cxr", 1) is None


def test_pin_and_unpin(db: Database) -> None:
    lineage = Lineage(db)
    assert lineage.pinned("cxr") is None
    lineage.pin("cxr", 2, by="admin")
    assert lineage.pinned("cxr") == 2
    lineage.pin("cxr", 1, by="admin")
    assert lineage.pinned("cxr") == 1
    assert lineage.unpin("cxr") is True
    assert lineage.unpin("cxr") is False
    assert lineage.pinned("cxr") is None
    with pytest.raises(InvalidInput):
        lineage.pin("cxr", 0, by="admin")


def test_rollback_target(db: Database, tmp_path: Path) -> None:
    lineage = Lineage(db)
    for version in (1, 3, 4):
        _check(lineage, version, _version(tmp_path, version, f"v{version}".encode()))
    assert lineage.rollback_target("cxr", 4, [1, 2, 3, 4]) == 3
    assert lineage.rollback_target("cxr", 4, [1, 2, 4]) == 1  # 3 not on disk, 2 never served
    assert lineage.rollback_target("cxr", 3, [1, 2, 3, 4]) == 1
    with pytest.raises(InvalidInput, match="earlier versions \\[2\\] are available but none was served"):
        lineage.rollback_target("cxr", 4, [2, 4])
    with pytest.raises(InvalidInput, match="no earlier version is available"):
        lineage.rollback_target("cxr", 1, [1, 2, 3])
    assert [v.version for v in lineage.versions("cxr")] == [1, 3, 4]


def test_store_errors_are_store_unavailable(tmp_path: Path) -> None:
    empty = Database(f"sqlite:///{tmp_path}/empty.db")  # no tables
    with pytest.raises(StoreUnavailable, match="lineage store"):
        Lineage(empty).pinned("cxr")
