"""Client-certificate identities (mTLS): which subject CN gets which role and model grants.

TLS verifies the certificate against the client CA; this table decides what a verified CN may do.
A CN that is not registered, or whose grant is revoked, is refused. Lookups are cached in-process
like tokens (``cache_ttl`` seconds), so changes made by another process take effect within the TTL
and changes made through the same object at once.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from medserve.security.tokens import DEFAULT_CACHE_TTL, TtlCache, normalise_grants
from medserve.store.database import Database
from medserve.store.tables import ClientCertificateRow
from medserve.values.access import Principal, Role
from medserve.values.errors import InvalidInput, StoreUnavailable, Unauthenticated
from medserve.values.times import as_utc, utcnow

_MAX_CN = 256


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """A registered client certificate identity."""

    subject_cn: str
    role: Role
    models: tuple[str, ...] | None  # None: every model
    created_at: datetime
    revoked_at: datetime | None

    def state(self) -> str:
        """``"revoked"`` or ``"active"``."""
        return "revoked" if self.revoked_at is not None else "active"

    def principal(self) -> Principal:
        models = frozenset(self.models) if self.models is not None else None
        return Principal(self.subject_cn, self.role, models, f"cert:{self.subject_cn}")


def _check_cn(cn: str) -> str:
    if not isinstance(cn, str) or not cn or len(cn) > _MAX_CN or any(not c.isprintable() for c in cn):
        raise InvalidInput(f"invalid certificate common name {cn!r}: 1-{_MAX_CN} printable characters")
    return cn


def _info(row: ClientCertificateRow) -> CertificateInfo:
    created = as_utc(row.created_at)
    return CertificateInfo(
        subject_cn=row.subject_cn,
        role=Role(row.role),
        models=tuple(row.models) if row.models is not None else None,
        created_at=created if created is not None else utcnow(),
        revoked_at=as_utc(row.revoked_at),
    )


class CertificateGrants:
    """Grants, revokes, lists and resolves client certificate identities by subject CN."""

    def __init__(
        self,
        database: Database,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._clock = clock
        self._cache: TtlCache[str, CertificateInfo | None] = TtlCache(cache_ttl)

    def grant(self, cn: str, role: Role | str, models: builtins.list[str] | None = None) -> CertificateInfo:
        """Register ``cn``, or replace its role and models and lift a revocation."""
        cn = _check_cn(cn)
        checked_role, grants = normalise_grants(role, models)
        try:
            with self._db.session() as session, session.begin():
                row = session.get(ClientCertificateRow, cn)
                if row is None:
                    row = ClientCertificateRow(subject_cn=cn, created_at=self._clock())
                    session.add(row)
                row.role = checked_role.value
                row.models = grants
                row.revoked_at = None
                session.flush()
                info = _info(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not store the certificate grant: {exc}") from exc
        self._cache.discard(cn)
        return info

    def revoke(self, cn: str) -> bool:
        """Revoke ``cn``; ``False`` when it is not registered or already revoked."""
        try:
            with self._db.session() as session, session.begin():
                row = session.get(ClientCertificateRow, cn)
                changed = row is not None and row.revoked_at is None
                if row is not None and changed:
                    row.revoked_at = self._clock()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not revoke the certificate grant: {exc}") from exc
        self._cache.discard(cn)
        return changed

    def list(self) -> builtins.list[CertificateInfo]:
        """Every registered identity, by CN."""
        try:
            with self._db.session() as session, session.begin():
                rows = session.scalars(select(ClientCertificateRow).order_by(ClientCertificateRow.subject_cn))
                return [_info(row) for row in rows]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not read certificate grants: {exc}") from exc

    def principal_for(self, cn: str) -> Principal:
        """The principal of a verified client certificate's CN; ``Unauthenticated`` if not granted."""
        found, info = self._cache.get(cn)
        if not found:
            info = self._load(cn)
            self._cache.put(cn, info)
        if info is None:
            raise Unauthenticated(f"client certificate '{cn}' is not registered")
        if info.revoked_at is not None:
            raise Unauthenticated(f"client certificate '{cn}' is revoked")
        return info.principal()

    def clear_cache(self) -> None:
        """Forget cached lookups."""
        self._cache.clear()

    def _load(self, cn: str) -> CertificateInfo | None:
        if len(cn) > _MAX_CN:
            return None
        try:
            with self._db.session() as session, session.begin():
                row = session.get(ClientCertificateRow, cn)
                return _info(row) if row is not None else None
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not read certificate grants: {exc}") from exc
