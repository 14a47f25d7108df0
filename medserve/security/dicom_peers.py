"""DICOM peers: the calling AE titles allowed to associate with the Storage SCP, and their grants.

A DICOM sender has no token: its calling AE title names it. Each peer is a principal
``aet:<title>`` with role service and the models its instances may be routed to (``None``: every
model). Peers are kept in the store, so ``medserve dicom peers add`` on the command line (or on any
replica sharing the database) opens the door to a modality without a restart. The titles are read
from the store at each association (one small query; an association costs far more), so an added or
removed peer counts from its next association on. A peer's grants, asked for each instance, are
cached for ``cache_ttl`` seconds like tokens; a title missing from the cache is read again at once.
Peers named in the settings (``dicom_calling_aets``) are fixed: the server merges them in and they
cannot be removed at run time.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from medserve.security.tokens import DEFAULT_CACHE_TTL, TtlCache, normalise_grants
from medserve.store.database import Database
from medserve.store.tables import DicomPeerRow
from medserve.values.access import Principal, Role
from medserve.values.ae_title import check_ae_title
from medserve.values.errors import InvalidInput, StoreUnavailable
from medserve.values.times import as_utc, utcnow

_MAX_NAME = 128
_ALL = "*"


def peer_principal(title: str, models: Iterable[str] | None) -> Principal:
    """The principal of a calling AE title: ``aet:<title>``, role service, granted ``models``."""
    granted = None if models is None or _ALL in models else frozenset(models)
    return Principal(f"aet:{title}", Role.SERVICE, granted, f"aet:{title}")


@dataclass(frozen=True, slots=True)
class DicomPeer:
    """A calling AE title allowed to associate."""

    ae_title: str
    models: tuple[str, ...] | None  # None: every model
    name: str
    created_at: datetime

    def principal(self) -> Principal:
        return peer_principal(self.ae_title, self.models)


def _peer(row: DicomPeerRow) -> DicomPeer:
    created = as_utc(row.created_at)
    return DicomPeer(
        ae_title=row.ae_title,
        models=tuple(row.models) if row.models is not None else None,
        name=row.name,
        created_at=created if created is not None else utcnow(),
    )


class DicomPeers:
    """Adds, removes, lists and resolves the DICOM peers kept in the store."""

    def __init__(
        self,
        database: Database,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._clock = clock
        self._cache: TtlCache[str, dict[str, DicomPeer]] = TtlCache(cache_ttl, max_entries=1)

    def add(self, ae_title: str, models: builtins.list[str] | None = None, name: str = "") -> DicomPeer:
        """Allow ``ae_title`` to send instances routed to ``models`` (``None`` or ``["*"]``: every model);
        a title already allowed gets the new grants."""
        title = check_ae_title(ae_title, "calling AE title", InvalidInput)
        if len(name) > _MAX_NAME or any(not c.isprintable() for c in name):
            raise InvalidInput(f"a peer's name must be at most {_MAX_NAME} printable characters")
        _, grants = normalise_grants(Role.SERVICE, None if models is None or _ALL in models else models)
        try:
            with self._db.session() as session, session.begin():
                row = session.get(DicomPeerRow, title)
                if row is None:
                    row = DicomPeerRow(ae_title=title, created_at=self._clock())
                    session.add(row)
                row.models = grants
                row.name = name
                session.flush()
                peer = _peer(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not store the DICOM peer: {exc}") from exc
        self._cache.clear()
        return peer

    def remove(self, ae_title: str) -> bool:
        """Stop allowing ``ae_title``; ``False`` when it was not a peer."""
        title = check_ae_title(ae_title, "calling AE title", InvalidInput)
        try:
            with self._db.session() as session, session.begin():
                row = session.get(DicomPeerRow, title)
                if row is not None:
                    session.delete(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not remove the DICOM peer: {exc}") from exc
        self._cache.clear()
        return row is not None

    def list(self) -> builtins.list[DicomPeer]:
        """Every peer, by AE title (read from the store, not the cache)."""
        return sorted(self._load().values(), key=lambda peer: peer.ae_title)

    def titles(self) -> frozenset[str]:
        """The peers' AE titles, as the store holds them now (the cache is refreshed too)."""
        peers = self._load()
        self._cache.put(_ALL, peers)
        return frozenset(peers)

    def principal_for(self, ae_title: str) -> Principal | None:
        """The principal of a peer's calling AE title; ``None`` if it is not a peer.

        Grants may be ``cache_ttl`` seconds old; a title not among the cached peers is looked up again.
        """
        title = ae_title.strip()
        found, peers = self._cache.get(_ALL)
        if not found or peers is None or title not in peers:
            peers = self._load()
            self._cache.put(_ALL, peers)
        peer = peers.get(title)
        return peer.principal() if peer is not None else None

    def clear_cache(self) -> None:
        self._cache.clear()

    def _load(self) -> dict[str, DicomPeer]:
        try:
            with self._db.session() as session, session.begin():
                return {row.ae_title: _peer(row) for row in session.scalars(select(DicomPeerRow))}
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"could not read the DICOM peers: {exc}") from exc
