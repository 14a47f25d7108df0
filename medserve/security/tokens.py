"""API tokens: ``msv_<id>_<secret>``, kept in the database as id plus SHA-256 of the secret.

The id (12 letters and digits) is public and names the token in lists, logs and revocation; the
secret (32 random bytes, url-safe base64) is shown once, at creation. Checking a token compares
the secret's digest in constant time.

Lookups are cached in-process for ``cache_ttl`` seconds (default :data:`DEFAULT_CACHE_TTL`), so the
hot path does not query the database on every request. Expiry is checked against the clock on
every call; a revocation made by another process (the command line) takes effect within the TTL,
one made through the same store at once.

With replicas sharing one database this is the revocation bound of the fleet: a token revoked on one
replica (or by the command line) keeps working on the others for at most ``cache_ttl`` seconds after
the revocation commits (docs/SCALING.md); an expiry needs no cache flush and holds everywhere at once.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from medserve.store.database import Database
from medserve.store.tables import ApiTokenRow
from medserve.values.access import Principal, Role
from medserve.values.errors import InvalidInput, StoreUnavailable, Unauthenticated
from medserve.values.times import as_utc, utcnow

PREFIX = "msv_"
ID_LENGTH = 12
SECRET_BYTES = 32
DEFAULT_CACHE_TTL = 5.0
_ID_ALPHABET = string.ascii_letters + string.digits
_TOKEN = re.compile(rf"{PREFIX}([A-Za-z0-9]{{{ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})")
_MAX_TOKEN_LENGTH = 256
_MAX_NAME = 128
_MAX_MODEL_NAME = 256
_DURATION = re.compile(r"([1-9][0-9]{0,6})\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MAX_DURATION = timedelta(days=36525)


def parse_duration(text: str) -> timedelta:
    """``"90m"``, ``"12h"``, ``"30d"`` (also ``s`` seconds and ``w`` weeks) as a ``timedelta``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(
            f"invalid duration {text!r}: use a positive whole number and a unit, e.g. 90m, 12h, 30d "
            "(units: s, m, h, d, w)"
        )
    duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if duration > _MAX_DURATION:
        raise InvalidInput(f"duration {text!r} is longer than 100 years")
    return duration


def normalise_grants(role: Role | str, models: Iterable[str] | None) -> tuple[Role, list[str] | None]:
    """A valid role and a sorted, de-duplicated model list (``None``: every model)."""
    try:
        checked_role = Role(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}") from None
    if models is None:
        return checked_role, None
    if isinstance(models, str):
        raise InvalidInput("models must be a list of model names")
    names = sorted(set(models))
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_MODEL_NAME:
            raise InvalidInput(f"invalid model name {name!r}")
    return checked_role, names


K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded, thread-safe map whose entries are forgotten ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        if ttl < 0 or max_entries < 1:
            raise InvalidInput("cache ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` for a fresh entry, else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] >= self.ttl:
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl == 0:
            return
        now = time.monotonic()
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.max_entries:
                for stale in [k for k, (t, _) in self._entries.items() if now - t >= self.ttl]:
                    del self._entries[stale]
                if len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = (now, value)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's public description (never its secret)."""

    id: str
    name: str
    role: Role
    models: tuple[str, ...] | None  # None: every model
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """``"revoked"``, ``"expired"`` or ``"active"``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def principal(self) -> Principal:
        models = frozenset(self.models) if self.models is not None else None
        return Principal(self.name or f"token:{self.id}", self.role, models, f"token:{self.id}")


@dataclass(frozen=True, slots=True)
class _Cached:
    secret_sha256: str
    info: TokenInfo


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _info(row: ApiTokenRow) -> TokenInfo:
    created = as_utc(row.created_at)
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        models=tuple(row.models) if row.models is not None else None,
        created_at=created if created is not None else utcnow(),
        expires_at=as_utc(row.expires_at),
        revoked_at=as_utc(row.revoked_at),
    )


class TokenStore:
    """Creates, lists, revokes and checks API tokens.

    A principal from a token is named after the token's name (``token:<id>`` when it has none) and
    carries ``credential="token:<id>"``.
    """

    def __init__(
        self,
        database: Database,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._clock = clock
        self._cache: TtlCache[str, _Cached | None] = TtlCache(cache_ttl)

    def create(
        self,
        role: Role | str,
        models: builtins.list[str] | None = None,
        name: str = "",
        expires_in: timedelta | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token: the token string (shown only now) and its description."""
        checked_role, grants = normalise_grants(role, models)
        name = name.strip()
        if len(name) > _MAX_NAME or any(not c.isprintable() for c in name):
            raise InvalidInput(f"token name must be at most {_MAX_NAME} printable characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInput("a token's lifetime must be positive")
        if expires_in is not None and expires_in > _MAX_DURATION:
            raise InvalidInput("a token's lifetime must be at most 100 years")
        token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = self._clock()
        row = ApiTokenRow(
            id=token_id,
            name=name,
            secret_sha256=_digest(secret),
            role=checked_role.value,
            models=grants,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            revoked_at=None,
        )
        try:
            with self._db.session() as session, session.begin():
                session.add(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not store the token: {exc}") from exc
        self._cache.discard(token_id)
        return f"{PREFIX}{token_id}_{secret}", _info(row)

    def revoke(self, token_id: str) -> bool:
        """Revoke a token; ``False`` when there is no such token or it was already revoked."""
        try:
            with self._db.session() as session, session.begin():
                result = session.execute(
                    update(ApiTokenRow)
                    .where(ApiTokenRow.id == token_id, ApiTokenRow.revoked_at.is_(None))
                    .values(revoked_at=self._clock())
                )
                changed = bool(getattr(result, "rowcount", 0))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not revoke the token: {exc}") from exc
        self._cache.discard(token_id)
        return changed

    def list(self) -> builtins.list[TokenInfo]:
        """Every token, oldest first, without secrets."""
        try:
            with self._db.session() as session, session.begin():
                rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.id))
                return [_info(row) for row in rows]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not read tokens: {exc}") from exc

    def authenticate(self, token: str) -> Principal:
        """The principal of a valid token; ``Unauthenticated`` says why a token is refused."""
        match = _TOKEN.fullmatch(token) if len(token) <= _MAX_TOKEN_LENGTH else None
        if match is None:
            raise Unauthenticated("malformed token")
        token_id, secret = match.group(1), match.group(2)
        found, cached = self._cache.get(token_id)
        if not found:
            cached = self._load(token_id)
            self._cache.put(token_id, cached)
        if cached is None or not hmac.compare_digest(_digest(secret), cached.secret_sha256):
            raise Unauthenticated("invalid token")
        info = cached.info
        if info.revoked_at is not None:
            raise Unauthenticated("token revoked")
        if info.expires_at is not None and info.expires_at <= self._clock():
            raise Unauthenticated("token expired")
        return info.principal()

    def clear_cache(self) -> None:
        """Forget cached lookups (the next check of each token reads the database)."""
        self._cache.clear()

    def _load(self, token_id: str) -> _Cached | None:
        try:
            with self._db.session() as session, session.begin():
                row = session.get(ApiTokenRow, token_id)
                return _Cached(row.secret_sha256, _info(row)) if row is not None else None
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not read tokens: {exc}") from exc
