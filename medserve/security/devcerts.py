"""Development TLS material: a throw-away CA, a server certificate and client certificates.

Everything is ECDSA P-256, valid for about a year, written as PEM; private keys are unencrypted
PKCS#8 with mode 0600. For development and tests only: production certificates come from the
site's own PKI.

Files in ``out_dir``: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` (SANs: the hostnames,
``127.0.0.1`` and ``::1``) and ``<client>.pem``/``<client>.key`` per client (CN = the client name,
extended key usage clientAuth).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medserve.values.errors import InvalidInput

_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_RESERVED = {"ca", "server"}
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the files written by :func:`make_dev_certificates`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (cert, key)


def make_dev_certificates(
    out_dir: Path,
    hostnames: Sequence[str] = ("localhost",),
    clients: Sequence[str] = ("medserve-client",),
    *,
    force: bool = False,
    valid_days: int = 365,
) -> DevCertificates:
    """Write a development CA, a server certificate and one certificate per client into ``out_dir``.

    Raises ``InvalidInput`` for a bad host or client name, or when a file exists and ``force`` is
    false (then nothing is written).
    """
    hosts = _check_hostnames(hostnames)
    names = _check_clients(clients)
    if valid_days < 1:
        raise InvalidInput("valid_days must be at least 1")
    result = DevCertificates(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        clients={name: (out_dir / f"{name}.pem", out_dir / f"{name}.key") for name in names},
    )
    paths = [result.ca_cert, result.ca_key, result.server_cert, result.server_key]
    paths += [p for pair in result.clients.values() for p in pair]
    if not force:
        existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
        if existing:
            raise InvalidInput(f"refusing to overwrite {', '.join(existing)}; use force to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)

    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(minutes=5), now + timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medserve development CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(result.ca_key, ca_key)
    _write_cert(result.ca_cert, ca_cert)

    def leaf(
        cn: str, usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(hosts[0][0], ExtendedKeyUsageOID.SERVER_AUTH, _server_san(hosts))
    _write_key(result.server_key, server_key)
    _write_cert(result.server_cert, server_cert)
    for name, (cert_path, key_path) in result.clients.items():
        key, cert = leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, None)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
    return result


def _check_hostnames(hostnames: Sequence[str]) -> list[tuple[str, IpAddress | None]]:
    if isinstance(hostnames, str) or not hostnames:
        raise InvalidInput("give at least one hostname as a list")
    hosts: list[tuple[str, IpAddress | None]] = []
    for host in hostnames:
        try:
            hosts.append((host, ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host):
            raise InvalidInput(f"invalid hostname {host!r}")
        hosts.append((host, None))
    return hosts


def _check_clients(clients: Sequence[str]) -> list[str]:
    if isinstance(clients, str):
        raise InvalidInput("give the client names as a list")
    for name in clients:
        if not _CLIENT_NAME.fullmatch(name) or name.lower() in _RESERVED:
            raise InvalidInput(
                f"invalid client name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(not 'ca' or 'server')"
            )
    if len({n.lower() for n in clients}) != len(clients):
        raise InvalidInput("client names must be unique")
    return list(clients)


def _server_san(hosts: list[tuple[str, IpAddress | None]]) -> x509.SubjectAlternativeName:
    dns = [x509.DNSName(host) for host, ip in hosts if ip is None]
    ips = [ip for _, ip in hosts if ip is not None]
    ips += [ip for ip in _LOOPBACK if ip not in ips]
    return x509.SubjectAlternativeName([*dns, *(x509.IPAddress(ip) for ip in ips)])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)  # a fresh file gets the mode below whatever the old one had
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
