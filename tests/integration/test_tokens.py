"""API tokens and client-certificate grants against a real SQLite database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from medserve.security.certificates import CertificateGrants
from medserve.security.tokens import TokenStore, parse_duration
from medserve.store.database import Database
from medserve.store.tables import Base
from medserve.values.access import Action, Role
from medserve.values.errors import InvalidInput, Unauthenticated


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'medserve.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_create_and_authenticate(db: Database) -> None:
    store = TokenStore(db)
    token, info = store.create(Role.SERVICE, ["ecg", "cxr", "ecg"], name="ward-3 monitor")
    prefix, token_id, secret = token[:4], token[4:16], token[17:]
    assert prefix == "msv_" and token[16] == "_" and token_id == info.id
    assert token_id.isalnum() and len(secret) >= 43
    assert info.models == ("cxr", "ecg") and info.state() == "active"

    principal = store.authenticate(token)
    assert principal.name == "ward-3 monitor"
    assert principal.role is Role.SERVICE
    assert principal.models == frozenset({"ecg", "cxr"})
    assert principal.credential == f"token:{token_id}"
    assert principal.may(Action.INFER, "ecg") and not principal.may(Action.INFER, "other")
    assert not principal.may(Action.MANAGE)

    # A fresh store (another process) reads the same token from the database.
    assert TokenStore(db, cache_ttl=0).authenticate(token) == principal


def test_database_holds_no_plaintext_secret(db: Database) -> None:
    token, info = TokenStore(db).create(Role.ADMIN, name="ops")
    secret = token[17:]
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_tokens")).all()
    assert len(rows) == 1
    dumped = repr(tuple(rows[0]))
    assert secret not in dumped and token not in dumped
    assert secret[:16] not in dumped
    assert info.id in dumped  # the public part is kept
    db_path = Path(db.url.split("///", 1)[1])
    for path in db_path.parent.glob(db_path.name + "*"):  # the database file, its WAL and journal
        assert secret.encode() not in path.read_bytes()


def test_rejections_and_reasons(db: Database) -> None:
    store = TokenStore(db)
    token, _ = store.create(Role.VIEWER)
    for bad in (
        "",
        "Bearer x",
        "msv_short_x",
        token + "x",
        token.replace("msv_", "msx_"),
        "msv_" + "a" * 300,
    ):
        with pytest.raises(Unauthenticated, match="malformed token"):
            store.authenticate(bad)
    wrong_secret = token[:17] + ("A" if token[17] != "A" else "B") + token[18:]
    with pytest.raises(Unauthenticated, match="invalid token"):
        store.authenticate(wrong_secret)
    unknown_id = "msv_" + "Z" * 12 + token[16:]
    with pytest.raises(Unauthenticated, match="invalid token"):
        store.authenticate(unknown_id)
    assert store.authenticate(token).role is Role.VIEWER


def test_expiry(db: Database) -> None:
    clock = Clock()
    store = TokenStore(db, clock=clock)
    token, info = store.create(Role.SERVICE, expires_in=timedelta(hours=12))
    assert info.expires_at == clock.now + timedelta(hours=12)
    store.authenticate(token)
    clock.now += timedelta(hours=11, minutes=59)
    store.authenticate(token)  # cached, still valid
    clock.now += timedelta(minutes=1)
    with pytest.raises(Unauthenticated, match="token expired"):
        store.authenticate(token)  # expiry is checked on every call, cache or not
    assert store.list()[0].state(clock.now) == "expired"
    with pytest.raises(InvalidInput):
        store.create(Role.SERVICE, expires_in=timedelta(0))


def test_revocation_same_store_is_immediate(db: Database) -> None:
    store = TokenStore(db)
    token, info = store.create(Role.SERVICE)
    store.authenticate(token)
    assert store.revoke(info.id) is True
    assert store.revoke(info.id) is False
    assert store.revoke("nosuchtoken0") is False
    with pytest.raises(Unauthenticated, match="token revoked"):
        store.authenticate(token)
    [listed] = store.list()
    assert listed.state() == "revoked" and listed.revoked_at is not None


def test_revocation_elsewhere_takes_effect_within_ttl(db: Database) -> None:
    server = TokenStore(db, cache_ttl=0.2)
    cli = TokenStore(db)
    token, info = cli.create(Role.SERVICE)
    server.authenticate(token)
    assert cli.revoke(info.id)
    server.authenticate(token)  # still cached
    time.sleep(0.25)
    with pytest.raises(Unauthenticated, match="token revoked"):
        server.authenticate(token)


def test_cache_avoids_database(db: Database) -> None:
    store = TokenStore(db)
    token, _ = store.create(Role.SERVICE)
    store.authenticate(token)
    db.engine.dispose()
    queries: list[str] = []

    from sqlalchemy import event

    def count(*args: object) -> None:
        queries.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for _ in range(100):
            store.authenticate(token)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert queries == []


def test_list_has_no_secrets_and_validates_input(db: Database) -> None:
    store = TokenStore(db)
    store.create(Role.ADMIN, name="a")
    store.create("viewer", ["m1"], name="b")
    listed = store.list()
    assert [t.name for t in listed] == ["a", "b"]
    assert [t.role for t in listed] == [Role.ADMIN, Role.VIEWER]
    assert not any(hasattr(t, "secret") or hasattr(t, "secret_sha256") for t in listed)
    with pytest.raises(InvalidInput, match="unknown role"):
        store.create("root")
    with pytest.raises(InvalidInput, match="invalid model name"):
        store.create(Role.SERVICE, [""])
    with pytest.raises(InvalidInput):
        store.create(Role.SERVICE, name="x" * 200)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        (" 2W ", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "12 hours", "1y", "9999999d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_certificate_grants(db: Database) -> None:
    grants = CertificateGrants(db)
    with pytest.raises(Unauthenticated, match="not registered"):
        grants.principal_for("ward-3")
    info = grants.grant("ward-3", Role.SERVICE, ["ecg"])
    assert info.state() == "active"
    principal = grants.principal_for("ward-3")  # the negative lookup was not left cached
    assert principal.name == "ward-3" and principal.credential == "cert:ward-3"
    assert principal.models == frozenset({"ecg"}) and principal.role is Role.SERVICE

    grants.grant("ward-3", Role.VIEWER)  # replaces role and models
    assert grants.principal_for("ward-3").role is Role.VIEWER
    assert grants.principal_for("ward-3").models is None

    assert grants.revoke("ward-3") is True
    assert grants.revoke("ward-3") is False
    assert grants.revoke("nobody") is False
    with pytest.raises(Unauthenticated, match="revoked"):
        grants.principal_for("ward-3")
    assert [(c.subject_cn, c.state()) for c in grants.list()] == [("ward-3", "revoked")]

    grants.grant("ward-3", Role.SERVICE)  # re-granting lifts the revocation
    assert grants.principal_for("ward-3").role is Role.SERVICE
    with pytest.raises(InvalidInput):
        grants.grant("", Role.SERVICE)


def test_certificate_revocation_elsewhere_within_ttl(db: Database) -> None:
    server = CertificateGrants(db, cache_ttl=0.2)
    cli = CertificateGrants(db)
    cli.grant("lab", Role.SERVICE)
    server.principal_for("lab")
    cli.revoke("lab")
    server.principal_for("lab")  # cached
    time.sleep(0.25)
    with pytest.raises(Unauthenticated, match="revoked"):
        server.principal_for("lab")
