"""The trust commands of ``medserve``: tokens, client certificates, the audit trail, signing keys,
model signing and rollback, and DICOM de-identification."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medserve.cli.store import (
    StoreNotFound,
    add_store_options,
    announce,
    command_settings,
    open_store,
    require_store,
)
from medserve.values.errors import InvalidInput

Handler = Callable[[argparse.Namespace], int]


def _with_trust(action: Callable[[Any, argparse.Namespace], int]) -> Handler:
    """Run ``action(trust, args)`` with the store and audit trail open, closing them after."""

    def run(args: argparse.Namespace) -> int:
        from medserve.trust import build_trust

        settings = command_settings(args)
        require_store(settings, args)
        trust = build_trust(settings)
        try:
            return action(trust, args)
        finally:
            trust.close()

    return run


def _audit(trust: Any, event: str, principal: str, detail: str) -> None:
    from medserve.values.audit_event import AuditEvent

    trust.audit.record_blocking(AuditEvent(event=event, principal=principal, door="cli", detail=detail))


def _operator() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


# -- DICOM peers ------------------------------------------------------------------------------
def _peers_add(trust: Any, args: argparse.Namespace) -> int:
    peer = trust.dicom_peers.add(args.ae_title, args.models, args.name)
    granted = ", ".join(peer.models) if peer.models is not None else "all"
    _audit(trust, "config.change", _operator(), f"DICOM peer {peer.ae_title} allowed, models {granted}")
    print(f"DICOM peer {peer.ae_title}: may associate; its series may go to models: {granted}")
    return 0


def _peers_list(trust: Any, args: argparse.Namespace) -> int:
    peers = trust.dicom_peers.list()
    print(f"{'AE TITLE':<16}  {'ADDED (UTC)':<19}  {'NAME':<24}  MODELS")
    for peer in peers:
        models = ", ".join(peer.models) if peer.models is not None else "all"
        added = peer.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{peer.ae_title:<16}  {added:<19}  {peer.name[:24]:<24}  {models}")
    return 0


def _peers_remove(trust: Any, args: argparse.Namespace) -> int:
    if not trust.dicom_peers.remove(args.ae_title):
        raise InvalidInput(f"no DICOM peer with AE title {args.ae_title!r} ('medserve dicom peers list')")
    _audit(trust, "config.change", _operator(), f"DICOM peer {args.ae_title.strip()} removed")
    print(f"DICOM peer {args.ae_title.strip()} removed: its next association is rejected")
    return 0


# -- tokens ---------------------------------------------------------------------------------
def _tokens_create(trust: Any, args: argparse.Namespace) -> int:
    from medserve.security.tokens import parse_duration
    from medserve.values.access import Role

    expires = parse_duration(args.expires_in) if args.expires_in else None
    token, info = trust.tokens.create(Role(args.role), args.models or None, args.name, expires)
    _audit(
        trust, "token.create", _operator(), f"token {info.id} role {args.role} models {args.models or 'all'}"
    )
    print(token)
    print(
        f"token {info.id}: role {args.role}, models {', '.join(args.models) if args.models else 'all'}, "
        f"expires {info.expires_at or 'never'} — shown once, store it safely",
        file=sys.stderr,
    )
    return 0


def _tokens_list(trust: Any, args: argparse.Namespace) -> int:
    for info in trust.tokens.list():
        models = ",".join(info.models) if info.models else "all"
        state = "revoked" if info.revoked_at else "active"
        expires = info.expires_at or "never"
        print(f"{info.id}  {info.role:8} {state:8} expires={expires}  models={models}  {info.name}")
    return 0


def _tokens_revoke(trust: Any, args: argparse.Namespace) -> int:
    if not trust.tokens.revoke(args.id):
        raise InvalidInput(f"no token with id '{args.id}'")
    _audit(trust, "token.revoke", _operator(), f"token {args.id}")
    print(f"token {args.id} revoked (servers stop accepting it within seconds)")
    return 0


# -- client certificates ----------------------------------------------------------------------
def _certs_dev(args: argparse.Namespace) -> int:
    from medserve.security.devcerts import make_dev_certificates

    made = make_dev_certificates(
        args.out, args.host or ["localhost"], args.client or ["medserve-client"], force=args.force
    )
    print(f"development CA and certificates written to {args.out}:")
    for value in vars(made).values():
        print(f"  {value}")
    return 0


def _certs_grant(trust: Any, args: argparse.Namespace) -> int:
    from medserve.values.access import Role

    trust.certificates.grant(args.cn, Role(args.role), args.models or None)
    _audit(trust, "config.change", _operator(), f"client certificate CN={args.cn} granted role {args.role}")
    granted = ", ".join(args.models) if args.models else "all"
    print(f"client certificate CN={args.cn}: role {args.role}, models {granted}")
    return 0


def _certs_revoke(trust: Any, args: argparse.Namespace) -> int:
    if not trust.certificates.revoke(args.cn):
        raise InvalidInput(f"no client certificate identity CN={args.cn}")
    _audit(trust, "config.change", _operator(), f"client certificate CN={args.cn} revoked")
    print(f"client certificate CN={args.cn} revoked")
    return 0


# -- audit ----------------------------------------------------------------------------------
def _audit_verify(args: argparse.Namespace) -> int:
    from medserve.audit.commands import format_verification, verify_audit

    settings, database = open_store(args)
    try:
        result = verify_audit(database, settings.data_dir / "audit", journal_chain=settings.replica_id)
    finally:
        database.dispose()
    print(format_verification(result))
    return 0 if result.ok else 1


def _audit_export(args: argparse.Namespace) -> int:
    from medserve.audit.commands import export_audit

    _, database = open_store(args)
    try:
        if args.out is None:
            count = export_audit(database, sys.stdout, args.since)
        else:
            with args.out.open("w", encoding="utf-8") as out:
                count = export_audit(database, out, args.since)
    finally:
        database.dispose()
    print(f"exported {count} audit records", file=sys.stderr)
    return 0


# -- signing and rollback ---------------------------------------------------------------------
def _keys_create(args: argparse.Namespace) -> int:
    from medserve.security.signing import create_signing_key

    fingerprint = create_signing_key(args.private, args.public)
    print(f"ed25519 signing key {fingerprint}: private {args.private}, public {args.public}")
    return 0


def _models_sign(args: argparse.Namespace) -> int:
    from medserve.repository.repository import ModelRepository
    from medserve.security.signing import sign_artifact

    repository = ModelRepository(args.repository)
    config = repository.config(args.model)
    artifact = repository.model_dir(args.model) / str(args.version) / config.artifact
    if not artifact.is_file():
        raise InvalidInput(f"{artifact} does not exist")
    print(f"signed: {sign_artifact(artifact, args.key)}")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("MEDSERVE_TOKEN", "")
    body: dict[str, Any] = {"clear": True} if args.clear else {}
    if args.to is not None:
        body["version"] = args.to
    request = urllib.request.Request(
        f"{args.url.rstrip('/')}/v2/repository/models/{args.model}/rollback",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            outcome = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        message = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise InvalidInput(f"rollback refused (HTTP {exc.code}): {message}") from None
    except urllib.error.URLError as exc:
        raise InvalidInput(f"cannot reach the server at {args.url}: {exc.reason}") from None
    pinned = outcome.get("pinned")
    state = f"pinned to version {pinned}" if pinned is not None else "following its version policy"
    print(f"model {args.model}: {state}; serving version(s) {', '.join(outcome.get('serving', []))}")
    return 0


# -- de-identification ------------------------------------------------------------------------
def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A client context for ``dicom send`` over TLS (``--tls-ca``), with a client certificate when given."""
    if args.tls_ca is None:
        if args.tls_cert or args.tls_key:
            raise InvalidInput("--tls-cert and --tls-key need --tls-ca (the CA of the SCP's certificate)")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    try:
        context = ssl.create_default_context(cafile=str(args.tls_ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.tls_cert is not None:
            context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"DICOM TLS files do not load: {exc}") from None
    return context


def _dicom_send(args: argparse.Namespace) -> int:
    from medserve.transport.dimse_scu import send_files

    host, _, port = str(args.to).rpartition(":")
    if not host or not port.isdigit():
        print(f"--to must be HOST:PORT, not {args.to!r}", file=sys.stderr)
        return 2
    files: list[Path] = []
    for path in args.files:
        if path.is_dir():  # a folder: its DICOM files (Part-10 "DICM" marker), other files skipped
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and _is_part10(p)))
        else:
            files.append(path)
    if not files:
        print("no files to send", file=sys.stderr)
        return 2
    tls = _client_tls(args)
    report = send_files(
        [str(f) for f in files],
        host,
        int(port),
        called_aet=args.called_aet,
        calling_aet=args.calling_aet,
        timeout=args.timeout,
        tls=tls,
    )
    for result in report.results:
        if not result.ok:
            print(result.describe(), file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


def _dicom_deidentify(args: argparse.Namespace) -> int:
    import pydicom

    from medserve.security.deidentify import Deidentifier
    from medserve.security.pseudonym import Pseudonymizer, load_or_create_key

    settings = command_settings(args)
    announce(settings)
    key = settings.data_dir / "pseudonym.key"
    if not key.is_file() and not args.init:
        # A new key would give other pseudonyms than the server's for the same patients.
        raise StoreNotFound(
            f"no pseudonym key {key.resolve()} (the server's is in its data dir); point the command at "
            "the server's data dir with --data-dir DIR, MEDSERVE_DATA_DIR=DIR or the server's settings "
            "file (--config FILE or MEDSERVE_CONFIG=FILE), or pass --init to make a new key there"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pseudonyms = Pseudonymizer(load_or_create_key(key))
    deidentifier = Deidentifier(pseudonyms, retain_uids=args.retain_uids, retain_dates=args.retain_dates)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for index, path in enumerate(args.files):
        try:
            dataset = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            print(f"{path}: not a readable DICOM file: {exc}", file=sys.stderr)
            failed += 1
            continue
        clean = deidentifier.apply(dataset)
        target = args.out / f"{clean.get('SOPInstanceUID') or f'instance-{index}'}.dcm"
        pydicom.dcmwrite(target, clean)
        print(f"{path} -> {target}")
    return 1 if failed else 0


def add_commands(commands: Any, models: argparse.ArgumentParser) -> None:
    """Register the trust commands on the ``medserve`` parser's subcommands (and under ``models``)."""

    def on_store(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_store_options(parser)
        return parser

    roles = ["admin", "service", "viewer"]
    role_help = "admin (everything), service (inference on its models) or viewer (read-only)"

    tokens = commands.add_parser("tokens", help="API tokens (only their hashes are stored)")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    create = on_store(
        token_commands.add_parser(
            "create", help="create a token; the token alone is printed on standard output, once"
        )
    )
    create.add_argument("--role", choices=roles, required=True, help=role_help)
    create.add_argument("--models", nargs="*", metavar="MODEL", help="grant only these models (default: all)")
    create.add_argument("--name", default="", help="who or what the token is for")
    create.add_argument("--expires-in", help="lifetime such as 90d, 12h or 30m (default: no expiry)")
    create.set_defaults(func=_with_trust(_tokens_create))
    on_store(token_commands.add_parser("list", help="list tokens")).set_defaults(
        func=_with_trust(_tokens_list)
    )
    revoke = on_store(token_commands.add_parser("revoke", help="revoke a token by its id"))
    revoke.add_argument("id", help="the token's id (as 'medserve tokens list' shows it)")
    revoke.set_defaults(func=_with_trust(_tokens_revoke))

    certs = commands.add_parser("certs", help="TLS certificates and client-certificate identities")
    cert_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    dev = cert_commands.add_parser("dev", help="make a development CA with server and client certificates")
    dev.add_argument("--out", type=Path, required=True, help="folder for the CA, certificates and keys")
    dev.add_argument("--host", action="append", help="server host name (repeatable; default localhost)")
    dev.add_argument("--client", action="append", help="client certificate CN (repeatable)")
    dev.add_argument("--force", action="store_true", help="overwrite existing files")
    dev.set_defaults(func=_certs_dev)
    grant = on_store(cert_commands.add_parser("grant", help="let a client certificate CN authenticate"))
    grant.add_argument("cn", help="the client certificate's subject common name")
    grant.add_argument("--role", choices=roles, required=True, help=role_help)
    grant.add_argument("--models", nargs="*", metavar="MODEL", help="grant only these models (default: all)")
    grant.set_defaults(func=_with_trust(_certs_grant))
    cert_revoke = on_store(cert_commands.add_parser("revoke", help="revoke a client certificate CN"))
    cert_revoke.add_argument("cn", help="the client certificate's subject common name")
    cert_revoke.set_defaults(func=_with_trust(_certs_revoke))

    audit = commands.add_parser("audit", help="the hash-chained audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = on_store(audit_commands.add_parser("verify", help="check the chain; names the first bad record"))
    verify.set_defaults(func=_audit_verify)
    export = on_store(audit_commands.add_parser("export", help="write the records as JSON lines"))
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    export.add_argument("--since", type=int, default=0, help="only records with seq above this (0)")
    export.set_defaults(func=_audit_export)

    keys = commands.add_parser("keys", help="ed25519 keys for signing model artifacts")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    key_create = key_commands.add_parser("create", help="make a signing key pair")
    key_create.add_argument("--private", type=Path, required=True, help="file for the private key (PEM)")
    key_create.add_argument("--public", type=Path, required=True, help="file for the public key (PEM)")
    key_create.set_defaults(func=_keys_create)

    model_commands = models.add_subparsers(dest="models_command", metavar="COMMAND")
    sign = model_commands.add_parser("sign", help="sign a version's artifact digest (<artifact>.sig)")
    sign.add_argument("model", help="model name in the repository")
    sign.add_argument("version", type=int, help="version folder to sign")
    sign.add_argument("--repository", type=Path, required=True, help="model repository folder")
    sign.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    sign.set_defaults(func=_models_sign)
    rollback = model_commands.add_parser("rollback", help="serve an earlier version on a running server")
    rollback.add_argument("model", help="model name")
    rollback.add_argument("--to", type=int, help="version to serve (default: the one before the newest)")
    rollback.add_argument("--clear", action="store_true", help="drop the pin; follow the version policy")
    rollback.add_argument("--url", default="http://127.0.0.1:8000", help="server's HTTP address")
    rollback.add_argument("--token", help="admin token (default: $MEDSERVE_TOKEN)")
    rollback.set_defaults(func=_models_rollback)

    dicom = commands.add_parser("dicom", help="DICOM tools")
    dicom_commands = dicom.add_subparsers(dest="dicom_command", required=True, metavar="COMMAND")
    deid = on_store(
        dicom_commands.add_parser(
            "deidentify",
            help="PS3.15 Annex E basic profile, pseudonyms consistent with the server's (its data dir's key)",
        )
    )
    deid.add_argument("files", nargs="+", type=Path, help="DICOM files to de-identify")
    deid.add_argument("--out", type=Path, required=True, help="folder for the de-identified files")
    deid.add_argument("--retain-uids", action="store_true", help="Retain UIDs Option")
    deid.add_argument("--retain-dates", action="store_true", help="Retain Longitudinal Temporal Information")
    deid.set_defaults(func=_dicom_deidentify)
    peers = dicom_commands.add_parser(
        "peers", help="calling AE titles allowed to send to the server's DICOM door (no restart needed)"
    )
    peer_commands = peers.add_subparsers(dest="peers_command", required=True, metavar="COMMAND")
    peer_add = on_store(peer_commands.add_parser("add", help="allow a calling AE title to associate"))
    peer_add.add_argument("ae_title", help="the sender's calling AE title (1-16 characters)")
    peer_add.add_argument(
        "--models", nargs="*", metavar="MODEL", help="models its series may be routed to (default: all)"
    )
    peer_add.add_argument("--name", default="", help="who or what sends as this title")
    peer_add.set_defaults(func=_with_trust(_peers_add))
    on_store(peer_commands.add_parser("list", help="list the allowed calling AE titles")).set_defaults(
        func=_with_trust(_peers_list)
    )
    peer_remove = on_store(peer_commands.add_parser("remove", help="stop allowing a calling AE title"))
    peer_remove.add_argument("ae_title", help="the calling AE title to remove")
    peer_remove.set_defaults(func=_with_trust(_peers_remove))
    send = dicom_commands.add_parser("send", help="send DICOM files to a Storage SCP (C-STORE)")
    send.add_argument("files", nargs="+", type=Path, help="files, or folders searched for DICOM files")
    send.add_argument("--to", required=True, metavar="HOST:PORT", help="the SCP, e.g. 127.0.0.1:11112")
    send.add_argument("--called-aet", default="MEDSERVE", help="the SCP's AE title (default MEDSERVE)")
    send.add_argument("--calling-aet", default="MEDSERVE_SCU", help="this sender's AE title")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds per network step (30)")
    send.add_argument("--tls-ca", type=Path, metavar="PEM", help="DICOM TLS: CA bundle the SCP must chain to")
    send.add_argument("--tls-cert", type=Path, metavar="PEM", help="DICOM TLS: client certificate")
    send.add_argument("--tls-key", type=Path, metavar="PEM", help="DICOM TLS: client certificate's key")
    send.set_defaults(func=_dicom_send)
