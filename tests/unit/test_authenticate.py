"""The one authentication step: bearer tokens, client certificates, development mode, failure hook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medserve.security.authenticate import MISSING, Authenticator
from medserve.security.certificates import CertificateGrants
from medserve.security.tokens import TokenStore
from medserve.store.database import Database
from medserve.store.tables import Base
from medserve.values.access import DEVELOPMENT, Role
from medserve.values.errors import Unauthenticated


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'medserve.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


class Failures:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, door: str, peer: str, reason: str) -> None:
        self.seen.append((door, peer, reason))


def _setup(db: Database) -> tuple[Authenticator, Failures, str, TokenStore]:
    tokens, certs = TokenStore(db), CertificateGrants(db)
    certs.grant("ward-3", Role.VIEWER)
    token, _ = tokens.create(Role.SERVICE, ["ecg"], name="pump")
    failures = Failures()
    return Authenticator(tokens, certs, on_failure=failures), failures, token, tokens


def test_bearer_token(db: Database) -> None:
    auth, failures, token, _ = _setup(db)
    for header in (f"Bearer {token}", f"bearer {token}", f"BEARER   {token}  ", f"Bearer\t{token}"):
        principal = auth.authenticate(header, door="http", peer="10.0.0.1:5000")
        assert principal.name == "pump" and principal.role is Role.SERVICE
    assert failures.seen == []


def test_certificate(db: Database) -> None:
    auth, failures, _, _ = _setup(db)
    principal = auth.authenticate(None, "ward-3", door="grpc")
    assert principal.name == "ward-3" and principal.credential == "cert:ward-3"
    assert auth.authenticate("", "ward-3", door="grpc").role is Role.VIEWER  # empty header: absent
    assert failures.seen == []


def test_token_wins_over_certificate(db: Database) -> None:
    auth, failures, token, _ = _setup(db)
    assert auth.authenticate(f"Bearer {token}", "ward-3", door="http").name == "pump"
    # A bad token is refused even though the certificate would be accepted.
    with pytest.raises(Unauthenticated, match="malformed token"):
        auth.authenticate("Bearer nonsense", "ward-3", door="http", peer="p")
    assert failures.seen == [("http", "p", "malformed token")]


@pytest.mark.parametrize(
    ("authorization", "cn", "reason"),
    [
        (None, None, MISSING),
        ("   ", None, MISSING),
        ("Basic dXNlcjpwYXNz", None, "unsupported authorization scheme"),
        ("Bearer", None, "malformed token"),
        ("Bearer    ", None, "malformed token"),
        ("Bearer msv_AAAAAAAAAAAA_" + "B" * 43, None, "invalid token"),
        (None, "stranger", "client certificate 'stranger' is not registered"),
    ],
)
def test_failures_call_hook(db: Database, authorization: str | None, cn: str | None, reason: str) -> None:
    auth, failures, _, _ = _setup(db)
    with pytest.raises(Unauthenticated) as excinfo:
        auth.authenticate(authorization, cn, door="websocket", peer="1.2.3.4:9")
    assert str(excinfo.value).startswith(reason)
    assert failures.seen == [("websocket", "1.2.3.4:9", str(excinfo.value))]


def test_missing_credentials_message() -> None:
    auth = Authenticator(None, None)
    with pytest.raises(Unauthenticated) as excinfo:
        auth.authenticate(None, door="http")
    assert str(excinfo.value) == (
        "missing credentials: send 'Authorization: Bearer <token>' or a client certificate"
    )


def test_revoked_token_reason(db: Database) -> None:
    auth, failures, token, tokens = _setup(db)
    tokens.revoke(token[4:16])
    with pytest.raises(Unauthenticated, match="token revoked"):
        auth.authenticate(f"Bearer {token}", door="http")
    assert failures.seen[-1][2] == "token revoked"


def test_unconfigured_methods(db: Database) -> None:
    failures = Failures()
    auth = Authenticator(None, None, on_failure=failures)
    with pytest.raises(Unauthenticated, match="token authentication is not enabled"):
        auth.authenticate("Bearer x", door="http")
    with pytest.raises(Unauthenticated, match="client certificate authentication is not enabled"):
        auth.authenticate(None, "ward-3", door="http")
    assert len(failures.seen) == 2


def test_disabled_lets_everyone_in_as_development() -> None:
    failures = Failures()
    auth = Authenticator(None, None, disabled=True, on_failure=failures)
    assert auth.authenticate(None, door="http") is DEVELOPMENT
    assert auth.authenticate("Bearer garbage", door="grpc") is DEVELOPMENT
    assert failures.seen == []


def test_failing_hook_does_not_change_refusal(db: Database) -> None:
    def broken(door: str, peer: str, reason: str) -> None:
        raise RuntimeError("audit down")

    auth = Authenticator(TokenStore(db), None, on_failure=broken)
    with pytest.raises(Unauthenticated, match="malformed token"):
        auth.authenticate("Bearer x", door="http")
