"""TLS end to end: development certificates, a real uvicorn server and a real gRPC server."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect as ws_connect

from medserve.security.devcerts import DevCertificates, make_dev_certificates
from medserve.security.tls import (
    ClientAuth,
    TlsConfig,
    TlsHttpToolsProtocol,
    TlsWebSocketsProtocol,
    client_cert_cn,
    grpc_client_cert_cn,
    grpc_server_credentials,
    uvicorn_options,
)
from medserve.values.errors import InvalidConfig, InvalidInput

CLIENT = "ward-3"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), ["localhost"], [CLIENT, "lab"])


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """Same client name, another CA: TLS must refuse it."""
    return make_dev_certificates(tmp_path_factory.mktemp("rogue"), ["localhost"], [CLIENT])


# --- development certificates and configuration -----------------------------------------------


def test_dev_certificates(certs: DevCertificates) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(certs.clients[CLIENT][0].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (ca, server, client):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert 364 <= days <= 366
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CLIENT
    for key in (certs.ca_key, certs.server_key, *(k for _, k in certs.clients.values())):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        serialization.load_pem_private_key(key.read_bytes(), password=None)


def test_dev_certificates_refuse_overwrite(tmp_path: Path) -> None:
    first = make_dev_certificates(tmp_path, ["localhost", "10.1.2.3"], [])
    before = first.ca_cert.read_bytes()
    with pytest.raises(InvalidInput, match="refusing to overwrite"):
        make_dev_certificates(tmp_path)
    assert first.ca_cert.read_bytes() == before
    assert not (tmp_path / "medserve-client.pem").exists()  # nothing written on refusal
    second = make_dev_certificates(tmp_path, force=True)
    assert second.ca_cert.read_bytes() != before
    assert stat.S_IMODE(second.ca_key.stat().st_mode) == 0o600
    for bad in (["../evil"], ["ca"], ["a b"]):
        with pytest.raises(InvalidInput):
            make_dev_certificates(tmp_path / "x", clients=bad)
    with pytest.raises(InvalidInput):
        make_dev_certificates(tmp_path / "y", hostnames=["bad host"])


def test_tls_config_validation(certs: DevCertificates, tmp_path: Path) -> None:
    cfg = TlsConfig(str(certs.server_cert), str(certs.server_key))  # type: ignore[arg-type]
    assert cfg.certfile == certs.server_cert and cfg.client_auth == "none"
    options = uvicorn_options(cfg)
    assert options["ssl_cert_reqs"] == ssl.CERT_NONE and options["ssl_ca_certs"] is None
    with pytest.raises(InvalidConfig, match="does not exist"):
        TlsConfig(tmp_path / "missing.pem", certs.server_key)
    with pytest.raises(InvalidConfig, match="do not load"):
        TlsConfig(certs.server_cert, certs.clients[CLIENT][1])  # key of another certificate
    with pytest.raises(InvalidConfig, match="needs a client CA"):
        TlsConfig(certs.server_cert, certs.server_key, None, "required")
    with pytest.raises(InvalidConfig, match="client_auth must be"):
        TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert, "sometimes")  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(InvalidConfig, match="client CA"):
        TlsConfig(certs.server_cert, certs.server_key, garbage, "optional")
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InvalidConfig, match="encrypted"):
        TlsConfig(certs.server_cert, encrypted)


# --- HTTP and WebSocket through uvicorn -------------------------------------------------------


HITS: list[str | None] = []  # every request that reached the app


async def whoami(request: Request) -> JSONResponse:
    HITS.append(client_cert_cn(request.scope))
    return JSONResponse({"cn": client_cert_cn(request.scope), "scheme": request.url.scheme})


async def ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"cn": client_cert_cn(websocket.scope)})
    await websocket.close()


APP = Starlette(routes=[Route("/whoami", whoami), WebSocketRoute("/ws", ws_whoami)])


@contextmanager
def serve_http(cfg: TlsConfig, loop: str = "auto") -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        APP,
        log_level="critical",
        lifespan="off",
        loop=loop,
        http=TlsHttpToolsProtocol,
        ws=TlsWebSocketsProtocol,
        **uvicorn_options(cfg),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def client_context(certs: DevCertificates, client: str | None = CLIENT) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca_cert)
    if client is not None:
        cert, key = certs.clients[client]
        context.load_cert_chain(cert, key)
    return context


def get_cn(port: int, context: ssl.SSLContext | bool, host: str = "localhost") -> Any:
    with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
        response = client.get(f"https://{host}:{port}/whoami")
        response.raise_for_status()
        return response.json()["cn"]


def handshake_tls12(port: int, context: ssl.SSLContext) -> str | None:
    """A bare TLS 1.2 handshake: there the server judges the client certificate inside the handshake."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return tls.version()


def ws_cn(port: int, context: ssl.SSLContext) -> Any:
    import json

    with ws_connect(f"wss://localhost:{port}/ws", ssl=context, proxy=None, open_timeout=5) as ws:
        return json.loads(ws.recv(timeout=5))["cn"]


def _tls(certs: DevCertificates, mode: ClientAuth) -> TlsConfig:
    return TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert, mode)


def test_http_optional(certs: DevCertificates, rogue: DevCertificates) -> None:
    with serve_http(_tls(certs, "optional")) as port:
        assert get_cn(port, client_context(certs)) == CLIENT
        assert get_cn(port, client_context(certs, "lab"), host="127.0.0.1") == "lab"
        assert get_cn(port, client_context(certs, None)) is None
        assert ws_cn(port, client_context(certs)) == CLIENT
        assert ws_cn(port, client_context(certs, None)) is None
        # A client certificate from another CA is refused in the handshake, not silently ignored.
        forged = client_context(certs, None)
        forged.load_cert_chain(*rogue.clients[CLIENT])
        hits = len(HITS)
        with pytest.raises(httpx.TransportError):
            get_cn(port, forged)
        assert len(HITS) == hits
        with pytest.raises(ssl.SSLError):
            handshake_tls12(port, forged)
        assert handshake_tls12(port, client_context(certs, None)) == "TLSv1.2"
        # The server certificate verifies against ca.pem only.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get_cn(port, ssl.create_default_context(cafile=rogue.ca_cert))


def test_http_required(certs: DevCertificates) -> None:
    with serve_http(_tls(certs, "required")) as port:
        assert get_cn(port, client_context(certs)) == CLIENT
        assert ws_cn(port, client_context(certs)) == CLIENT
        hits = len(HITS)
        with pytest.raises(httpx.TransportError):  # TLS 1.3: refused right after the handshake
            get_cn(port, client_context(certs, None))
        assert len(HITS) == hits  # the request never reached the app
        with pytest.raises(ssl.SSLError):  # TLS 1.2: the handshake itself fails
            handshake_tls12(port, client_context(certs, None))
        assert handshake_tls12(port, client_context(certs)) == "TLSv1.2"


def test_http_without_client_auth_ignores_certificates(certs: DevCertificates) -> None:
    with serve_http(TlsConfig(certs.server_cert, certs.server_key)) as port:
        assert get_cn(port, client_context(certs)) is None


def test_http_plain_asyncio_loop(certs: DevCertificates) -> None:
    with serve_http(_tls(certs, "optional"), loop="asyncio") as port:
        assert get_cn(port, client_context(certs)) == CLIENT
        assert get_cn(port, client_context(certs, None)) is None


def test_client_cert_cn_reads_scope_defensively() -> None:
    assert client_cert_cn({"type": "http"}) is None
    assert client_cert_cn({"extensions": {"tls": {"client_cert_cn": 3}}}) is None
    assert client_cert_cn({"extensions": {"tls": {"client_cert_cn": "x"}}}) == "x"


# --- gRPC -------------------------------------------------------------------------------------


async def _grpc_whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return (grpc_client_cert_cn(context) or "-").encode()


async def _grpc_call(port: int, certs: DevCertificates, client: str | None) -> tuple[str, int]:
    cert_key = certs.clients[client] if client is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=cert_key[1].read_bytes() if cert_key else None,
        certificate_chain=cert_key[0].read_bytes() if cert_key else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        cn = await channel.unary_unary("/test.Who/Am")(b"", timeout=5)
        status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return cn.decode(), status.status


@pytest.mark.parametrize("mode", ["none", "optional", "required"])
async def test_grpc(certs: DevCertificates, mode: ClientAuth) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_grpc_whoami)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Who", {"Am": handler})])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(_tls(certs, mode)))
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        if mode == "required":
            assert await _grpc_call(port, certs, CLIENT) == (CLIENT, serving)
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await _grpc_call(port, certs, None)
            assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        else:  # gRPC cannot ask for a certificate optionally: it does not ask at all
            assert await _grpc_call(port, certs, CLIENT) == ("-", serving)
            assert await _grpc_call(port, certs, None) == ("-", serving)
    finally:
        await server.stop(None)
