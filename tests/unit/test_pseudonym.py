"""Keyed pseudonyms: references for audit records, replacement UIDs, and the key file."""

from __future__ import annotations

import re
import stat
import threading
import uuid
from pathlib import Path

import pytest
from pydicom.uid import UID

from medserve.security.pseudonym import Pseudonymizer, load_or_create_key
from medserve.values.errors import InvalidConfig

KEY = bytes(range(32))
UID_PATTERN = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def test_ref_is_stable_hex_and_keyed() -> None:
    a, b = Pseudonymizer(KEY), Pseudonymizer(KEY)
    ref = a.ref("patient", "MRN-0012345")
    assert re.fullmatch(r"[0-9a-f]{32}", ref)
    assert ref == b.ref("patient", "MRN-0012345")
    assert ref != a.ref("study", "MRN-0012345")
    assert ref != a.ref("patient", "MRN-0012346")
    assert ref != Pseudonymizer(bytes(32)).ref("patient", "MRN-0012345")
    assert a.ref("patient", "") == ""


def test_ref_separates_kind_from_value() -> None:
    p = Pseudonymizer(KEY)
    assert p.ref("ab", "c") != p.ref("a", "bc")


def test_uid_is_a_valid_consistent_dicom_uid() -> None:
    p = Pseudonymizer(KEY)
    original = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    new = p.uid(original)
    assert UID_PATTERN.fullmatch(new)
    assert len(new) <= 64
    assert UID(new).is_valid
    assert new == Pseudonymizer(KEY).uid(original)
    assert new == p.uid(original + "\x00")  # UI padding is not part of the UID
    assert new != p.uid(original + "1")
    assert new != Pseudonymizer(bytes(32)).uid(original)
    as_uuid = uuid.UUID(int=int(new.removeprefix("2.25.")))
    assert as_uuid.version == 8 and as_uuid.variant == uuid.RFC_4122
    assert p.uid("") == ""


def test_uid_differs_from_patient_ref_of_same_value() -> None:
    p = Pseudonymizer(KEY)
    value = "1.2.3"
    assert p.ref("patient", value) not in p.uid(value)


def test_short_key_refused() -> None:
    with pytest.raises(InvalidConfig):
        Pseudonymizer(b"short")


def test_repr_hides_key() -> None:
    assert KEY.hex() not in repr(Pseudonymizer(KEY))


def test_load_or_create_key_creates_0600_and_reuses(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "pseudonym.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no staging file left


def test_load_or_create_key_refuses_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(b"too short")
    with pytest.raises(InvalidConfig, match="32 bytes"):
        load_or_create_key(path)


def test_concurrent_creation_gives_one_key(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    keys: list[bytes] = []
    lock = threading.Lock()

    def create() -> None:
        key = load_or_create_key(path)
        with lock:
            keys.append(key)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert path.read_bytes() == keys[0]
