"""DICOM TLS on the DIMSE Storage SCP (PS3.15 Secure Transport Connection Profile, BCP 195): a
pynetdicom SCU stores over TLS, plain TCP and old or weak TLS are refused, client certificates are
required when a client CA is set, a silent peer does not hold up the others; and from the settings:
``medserve serve`` with DICOM TLS files, ``medserve dicom send --tls-ca``, a key that does not load."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, start_server, stop_server
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from medserve.security.devcerts import DevCertificates, make_dev_certificates
from medserve.security.tls import TlsConfig, dicom_server_context
from medserve.transport.dimse import StorageSCP

CT = Path(get_testdata_file("CT_small.dcm", download=False))
CLIENT = "ct-room-1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), ["localhost"], [CLIENT])


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """The same client name from another CA."""
    return make_dev_certificates(tmp_path_factory.mktemp("rogue"), ["localhost"], [CLIENT])


class Received:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, encoded: bytes, calling_aet: str, peer: str) -> int:
        with self.lock:
            self.calls.append(calling_aet)
        return 0x0000


def _scp(certs: DevCertificates, received: Received, *, client_ca: bool) -> StorageSCP:
    ca, mode = (certs.ca_cert, "required") if client_ca else (None, "none")
    cfg = TlsConfig(certs.server_cert, certs.server_key, ca, mode)  # type: ignore[arg-type]
    return StorageSCP(
        "MEDSERVE",
        received,
        host="127.0.0.1",
        port=0,
        allowed_calling_aets=["MODALITY"],
        acse_timeout=5,
        dimse_timeout=5,
        network_timeout=5,
        ssl_context=dicom_server_context(cfg),
    )


@pytest.fixture()
def received() -> Received:
    return Received()


@pytest.fixture()
def tls_scp(certs: DevCertificates, received: Received) -> Iterator[StorageSCP]:
    with _scp(certs, received, client_ca=False) as scp:
        yield scp


def client_context(certs: DevCertificates, client: DevCertificates | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    if client is not None:
        context.load_cert_chain(*client.clients[CLIENT])
    return context


def store(port: int, tls: ssl.SSLContext | None) -> int | None:
    """C-STORE CT_small as MODALITY; the status, or None when no association was established."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSERVE", tls_args=(tls, "localhost") if tls else None)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(str(CT))
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def test_an_scu_stores_over_tls_and_plain_tcp_is_refused(
    tls_scp: StorageSCP, certs: DevCertificates, received: Received
) -> None:
    assert tls_scp.tls
    assert store(tls_scp.port, client_context(certs)) == 0x0000
    assert received.calls == ["MODALITY"]
    # plain DICOM to the TLS port: no association, nothing stored
    assert store(tls_scp.port, None) is None
    assert received.calls == ["MODALITY"]
    # a client that trusts another CA refuses the server's certificate
    assert store(tls_scp.port, ssl.create_default_context(cafile=str(make_ca_elsewhere(certs)))) is None
    # the SCP still serves TLS after the refusals
    assert store(tls_scp.port, client_context(certs)) == 0x0000


def make_ca_elsewhere(certs: DevCertificates) -> Path:
    other = make_dev_certificates(certs.ca_cert.parent / "elsewhere", ["localhost"], [], force=True)
    return other.ca_cert


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"\x00")  # the server handshakes on its first read
        return tls.version()


def test_only_tls_1_2_or_later_with_bcp195_suites(tls_scp: StorageSCP, certs: DevCertificates) -> None:
    assert _handshake(tls_scp.port, client_context(certs)) == "TLSv1.3"
    tls12 = client_context(certs)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(tls_scp.port, tls12) == "TLSv1.2"
    old = client_context(certs)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(tls_scp.port, old)
    cbc = client_context(certs)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(tls_scp.port, cbc)


def test_the_https_door_holds_to_the_same_bcp195_policy(certs: DevCertificates) -> None:
    """One policy for both doors: HTTPS too refuses TLS 1.1 and CBC suites and takes TLS 1.2 with AEAD."""
    from test_tls import serve_http

    with serve_http(TlsConfig(certs.server_cert, certs.server_key)) as port:
        tls12 = client_context(certs)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert _handshake(port, tls12) == "TLSv1.2"
        cbc = client_context(certs)
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(port, cbc)


def test_a_client_certificate_is_required_with_a_client_ca(
    certs: DevCertificates, rogue: DevCertificates, received: Received
) -> None:
    with _scp(certs, received, client_ca=True) as scp:
        assert store(scp.port, client_context(certs, certs)) == 0x0000
        assert store(scp.port, client_context(certs)) is None  # no certificate
        assert store(scp.port, client_context(certs, rogue)) is None  # another CA's certificate
        assert received.calls == ["MODALITY"]


def test_a_silent_peer_does_not_hold_up_the_others(tls_scp: StorageSCP, certs: DevCertificates) -> None:
    """pynetdicom wraps sockets in its one accepting thread: a handshake there would wait on a peer
    that connects and sends nothing, and every later peer with it."""
    with socket.create_connection(("127.0.0.1", tls_scp.port)):
        time.sleep(0.2)
        started = time.monotonic()
        assert store(tls_scp.port, client_context(certs)) == 0x0000
        assert time.monotonic() - started < 4  # the silent peer's network timeout is 5 s


# --- from the settings: medserve serve and medserve dicom send -------------------------------


def _medserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_medserve_serve_speaks_dicom_tls_from_its_settings(certs: DevCertificates, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    port = free_port()
    server = start_server(
        repository,
        tmp_path / "server.log",
        env={
            "MEDSERVE_LOAD_MODELS": "false",
            "MEDSERVE_DICOM_PORT": str(port),
            "MEDSERVE_DICOM_ALLOWED_CALLING_AETS": '["MODALITY", "MEDSERVE_SCU"]',
            "MEDSERVE_DICOM_TLS_CERTFILE": str(certs.server_cert),
            "MEDSERVE_DICOM_TLS_KEYFILE": str(certs.server_key),
            "MEDSERVE_DICOM_TLS_CLIENT_CA": str(certs.ca_cert),
        },
    )
    try:
        assert f"DICOM on 127.0.0.1:{port} (AE MEDSERVE, TLS)" in server.output()
        assert store(port, client_context(certs, certs)) == 0x0000
        assert store(port, None) is None
        assert store(port, client_context(certs)) is None  # the client CA makes a certificate required
        cert, key = certs.clients[CLIENT]
        sent = _medserve(
            "dicom", "send", str(CT), "--to", f"localhost:{port}", "--calling-aet", "MEDSERVE_SCU",
            "--tls-ca", str(certs.ca_cert), "--tls-cert", str(cert), "--tls-key", str(key),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "1 sent" in sent.stdout or "1 of 1" in sent.stdout or "sent 1" in sent.stdout, sent.stdout
        plain = _medserve(
            "dicom", "send", str(CT), "--to", f"localhost:{port}", "--calling-aet", "MEDSERVE_SCU"
        )
        assert plain.returncode != 0, plain.stdout
        server.assert_alive()
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.output()


def test_a_dicom_tls_key_that_does_not_load_stops_the_start_in_one_line(
    certs: DevCertificates, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    (tmp_path / "repository").mkdir()
    for key, words in ((broken, "do not load"), (tmp_path / "absent.key", "does not exist")):
        result = _medserve(
            "serve", "--repository", str(tmp_path / "repository"), "--data-dir", str(tmp_path / "data"),
            "--http-port", str(free_port()), "--grpc-port", "-1", "--dicom-port", str(free_port()),
            env={
                "MEDSERVE_AUTH_DISABLED": "true",
                "MEDSERVE_DICOM_TLS_CERTFILE": str(certs.server_cert),
                "MEDSERVE_DICOM_TLS_KEYFILE": str(key),
            },
        )  # fmt: skip
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("medserve: error: DICOM TLS") and words in lines[0], lines[0]
        assert str(key) in lines[0] and "dicom_tls_keyfile" in lines[0]
