"""The trust parts built from settings, shared by the server and the command line.

The store (migrated to the newest schema), the audit trail over it, tokens and client-certificate
identities, the authenticator, the pseudonym key and the model lineage book.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from medserve.audit.trail import AuditTrail
from medserve.repository.lineage import Lineage
from medserve.security.authenticate import Authenticator
from medserve.security.certificates import CertificateGrants
from medserve.security.dicom_peers import DicomPeers
from medserve.security.pseudonym import Pseudonymizer, load_or_create_key
from medserve.security.signing import TrustedKeys
from medserve.security.tokens import TokenStore
from medserve.settings import Settings
from medserve.store.database import Database, default_url
from medserve.values.errors import StoreUnavailable

log = logging.getLogger("medserve")


@dataclass
class Trust:
    database: Database
    audit: AuditTrail
    tokens: TokenStore
    certificates: CertificateGrants
    authenticator: Authenticator
    pseudonyms: Pseudonymizer
    lineage: Lineage
    dicom_peers: DicomPeers

    def close(self, timeout_s: float = 10.0) -> None:
        self.audit.close(timeout_s)
        self.database.dispose()


def describe_store(settings: Settings) -> str:
    """``data dir /abs/dir, database sqlite:////abs/dir/medserve.db`` (a URL's password hidden)."""
    url = settings.database_url or default_url(settings.data_dir)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        shown = "(a database URL that does not parse)"
    return f"data dir {settings.data_dir.resolve()}, database {shown}"


def open_database(settings: Settings) -> Database:
    """The store, migrated; ``StoreUnavailable`` (without the URL's password) when it cannot be reached."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database_url or default_url(settings.data_dir))
    try:
        database.migrate()
    except (SQLAlchemyError, StoreUnavailable) as exc:
        database.dispose()
        where = database.engine.url.render_as_string(hide_password=True)
        raise StoreUnavailable(
            f"cannot open the store at {where}: {type(exc).__name__}: {exc.args[0] if exc.args else ''}"
        ) from None
    return database


def build_trust(settings: Settings) -> Trust:
    """Open the store and the audit trail (the caller closes them with ``Trust.close``)."""
    database = open_database(settings)
    audit = AuditTrail(
        database, settings.data_dir / "audit", fsync=settings.audit_fsync, chain=settings.replica_id
    )
    audit.open()
    tokens = TokenStore(database)
    certificates = CertificateGrants(database)
    if settings.auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (auth_disabled=true): every caller is served as 'development'. "
            "Never run a server like this on a network with patient data."
        )
    authenticator = Authenticator(tokens, certificates, disabled=settings.auth_disabled)
    keys = TrustedKeys.load(settings.trusted_signing_keys) if settings.trusted_signing_keys else None
    lineage = Lineage(database, keys, settings.require_signatures)
    pseudonyms = Pseudonymizer(load_or_create_key(settings.data_dir / "pseudonym.key"))
    peers = DicomPeers(database)
    return Trust(database, audit, tokens, certificates, authenticator, pseudonyms, lineage, peers)
