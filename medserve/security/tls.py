"""TLS for both doors: settings, uvicorn options and protocols that expose the client certificate, gRPC.

HTTP and WebSocket: :class:`TlsHttpToolsProtocol` and :class:`TlsWebSocketsProtocol` put the
verified client certificate's subject common name into the ASGI scope as
``scope["extensions"]["tls"] = {"client_cert_cn": cn}`` (``None`` without a certificate); read it
with :func:`client_cert_cn`. The CN is read once per connection, after the handshake; renegotiation
is switched off so it cannot change afterwards.

gRPC has only two modes: a client certificate is required, or it is not requested at all. With
``client_auth="optional"`` the gRPC door does not request one, so gRPC clients authenticate with
bearer tokens there; only ``"required"`` gives gRPC peers a certificate identity.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import grpc
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from medserve.values.errors import InvalidConfig

ClientAuth = Literal["none", "optional", "required"]
_CERT_REQS: dict[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM, unencrypted key) and how client certificates are treated.

    ``client_ca`` (PEM bundle) verifies client certificates; it is required unless ``client_auth``
    is ``"none"``. Construction checks that the files exist and load, raising ``InvalidConfig``.
    """

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None
    client_auth: ClientAuth = "none"

    def __post_init__(self) -> None:
        for name in ("certfile", "keyfile", "client_ca"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if self.client_auth not in _CERT_REQS:
            raise InvalidConfig(
                f"TLS client_auth must be 'none', 'optional' or 'required', not {self.client_auth!r}"
            )
        if self.client_auth != "none" and self.client_ca is None:
            raise InvalidConfig(f"TLS client_auth '{self.client_auth}' needs a client CA file (client_ca)")
        files = (("certificate", self.certfile), ("key", self.keyfile), ("client CA", self.client_ca))
        for label, path in files:
            if path is not None and not path.is_file():
                raise InvalidConfig(f"TLS {label} file {path} does not exist or is not a file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certfile, self.keyfile, password=_no_password)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidConfig(
                f"TLS certificate {self.certfile} and key {self.keyfile} do not load "
                f"(PEM, matching pair, unencrypted key expected): {exc}"
            ) from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise InvalidConfig(f"TLS client CA file {self.client_ca} does not load: {exc}") from exc


def _no_password() -> str:
    raise InvalidConfig("encrypted TLS private keys are not supported")


# --- HTTP and WebSocket (uvicorn) -------------------------------------------------------------


def uvicorn_options(cfg: TlsConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: certificate, key, client CA and verification mode.

    Includes an ``ssl_context_factory`` that switches TLS renegotiation off. Pass the protocol
    classes separately: ``http=TlsHttpToolsProtocol, ws=TlsWebSocketsProtocol``.
    """
    return {
        "ssl_certfile": str(cfg.certfile),
        "ssl_keyfile": str(cfg.keyfile),
        "ssl_ca_certs": None if cfg.client_ca is None or cfg.client_auth == "none" else str(cfg.client_ca),
        "ssl_cert_reqs": _CERT_REQS[cfg.client_auth],
        "ssl_context_factory": _context_factory,
    }


def _context_factory(config: Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    return bcp195(default())


#: TLS 1.2 cipher suites of BCP 195 (RFC 9325, section 4.2): ephemeral (EC)DH key exchange with an
#: AEAD cipher, AES-GCM or ChaCha20-Poly1305; no CBC, no SHA-1, no anonymous or null suites. TLS 1.3
#: suites are all AEAD and are left as OpenSSL offers them.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"


def bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    """Hold a server context to BCP 195: TLS 1.2 or later, the AEAD suites above, no compression and
    no renegotiation. The HTTPS and WebSocket door and the DICOM door both use it."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


# --- DICOM (the DIMSE Storage SCP) ------------------------------------------------------------


def dicom_server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A server context for the DICOM door (PS3.15 B.9, the BCP 195 TLS Secure Transport Connection
    Profile): the certificate and key, BCP 195 versions and suites, and with a client CA every peer
    must present a certificate that chains to it (``client_auth`` other than ``"none"``)."""
    context = bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cfg.certfile, cfg.keyfile, password=_no_password)
    if cfg.client_ca is not None and cfg.client_auth != "none":
        context.load_verify_locations(cafile=cfg.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_certificate_cn(transport: asyncio.BaseTransport) -> str | None:
    """The subject CN of the peer certificate the TLS handshake verified, else ``None``.

    ``None`` too when the subject holds no CN or more than one.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()  # {} or None unless a certificate was sent and verified
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 and names[0] else None


def client_cert_cn(scope: Mapping[str, Any]) -> str | None:
    """The verified client certificate CN that the TLS protocols put into an ASGI scope."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    cn = tls.get("client_cert_cn") if isinstance(tls, Mapping) else None
    return cn if isinstance(cn, str) else None


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding ``extensions.tls.client_cert_cn`` to each request scope."""

    _client_cert_cn: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._client_cert_cn = peer_certificate_cn(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions = self.scope.setdefault("extensions", {})
        extensions["tls"] = {"client_cert_cn": self._client_cert_cn}


class TlsWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol (``ws="auto"``), adding the same scope extension."""

    _client_cert_cn: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._client_cert_cn = peer_certificate_cn(transport)

    async def run_asgi(self) -> None:
        extensions = self.scope.setdefault("extensions", {})
        extensions["tls"] = {"client_cert_cn": self._client_cert_cn}
        await super().run_asgi()


# --- gRPC -------------------------------------------------------------------------------------


def grpc_server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials for ``add_secure_port``.

    ``"required"`` makes gRPC demand a client certificate signed by ``client_ca``. gRPC cannot
    request one optionally, so ``"optional"`` and ``"none"`` do not ask for client certificates.
    """
    pair = (cfg.keyfile.read_bytes(), cfg.certfile.read_bytes())
    if cfg.client_auth == "required" and cfg.client_ca is not None:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=cfg.client_ca.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])


def grpc_requests_client_certificates(cfg: TlsConfig) -> bool:
    """Whether the gRPC door asks for client certificates (only with ``client_auth="required"``)."""
    return cfg.client_auth == "required"


class _HasAuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def grpc_client_cert_cn(context: _HasAuthContext) -> str | None:
    """The verified client certificate's subject CN of a gRPC call (sync or aio context), else ``None``."""
    values = list(context.auth_context().get("x509_common_name", ()))
    if len(values) != 1:
        return None
    try:
        cn = values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return cn or None
