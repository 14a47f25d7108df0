"""What stops the server from starting, found before anything starts and said in one line.

``preflight`` checks the TLS files, that the data dir can be written, and that each door's port can be
bound (HTTP's socket is bound here and handed to uvicorn, so nothing can take it in between); each
problem becomes a :class:`StartupFailure` naming the door, the address and the flag or environment
variable that changes it. Binding errors that still happen later (a port taken between the check and
the start of gRPC or DICOM) get the same words through :func:`bind_failure`.
"""

from __future__ import annotations

import errno
import socket
import tempfile
from dataclasses import dataclass

from medserve.security.tls import TlsConfig
from medserve.settings import Settings
from medserve.values.errors import InvalidConfig, MedserveError


class StartupFailure(MedserveError):
    """The server cannot start: a port taken or forbidden, a data dir it may not write."""


@dataclass(frozen=True)
class Door:
    """A listening door of the server and the settings that move it."""

    name: str
    host: str
    port: int
    flag: str
    variable: str
    can_turn_off: bool

    @property
    def how_to_change(self) -> str:
        change = f"choose another port with {self.flag} PORT or {self.variable}=PORT"
        return change + (f" ({self.flag} -1 turns the {self.name} door off)" if self.can_turn_off else "")


def doors(settings: Settings) -> list[Door]:
    """The doors that will listen, HTTP first (gRPC and DICOM only when on)."""
    found = [Door("HTTP", settings.host, settings.http_port, "--http-port", "MEDSERVE_HTTP_PORT", False)]
    if settings.grpc_port >= 0:
        found.append(
            Door("gRPC", settings.host, settings.grpc_port, "--grpc-port", "MEDSERVE_GRPC_PORT", True)
        )
    if settings.dicom_port >= 0:
        found.append(
            Door("DICOM", settings.host, settings.dicom_port, "--dicom-port", "MEDSERVE_DICOM_PORT", True)
        )
    return found


def bind_failure(door: Door, error: OSError) -> StartupFailure:
    """The one-line reason ``door`` cannot listen, from the error its bind raised."""
    where = f"{door.name} port {door.port} on {door.host}"
    if isinstance(error, socket.gaierror):
        return StartupFailure(
            f"{door.name}: the host '{door.host}' is not an address of this machine ({error.strerror}); "
            "set --host or MEDSERVE_HOST"
        )
    if error.errno == errno.EADDRINUSE:
        reason = "is already in use (by another medserve or another program)"
    elif error.errno == errno.EACCES:
        reason = "cannot be opened: permission denied (ports below 1024 need privileges)"
    elif error.errno == errno.EADDRNOTAVAIL:
        return StartupFailure(
            f"{door.name}: {door.host} is not an address of this machine; set --host or MEDSERVE_HOST"
        )
    else:
        reason = f"cannot be opened: {error.strerror or error}"
    return StartupFailure(f"{where} {reason}: {door.how_to_change}")


def bind(door: Door) -> socket.socket:
    """A socket bound (not yet listening) to the door's address; ``StartupFailure`` when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            door.host, door.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise bind_failure(door, exc) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise bind_failure(door, exc) from None
    return sock


def bind_problem(door: Door) -> StartupFailure | None:
    """Why the door's address cannot be bound now, or None when it can."""
    if door.port == 0:
        return None
    try:
        bind(door).close()
    except StartupFailure as exc:
        return exc
    return None


def tls_config(settings: Settings) -> TlsConfig | None:
    """The server's TLS settings, checked (files exist and load); None without TLS."""
    if settings.tls_certfile is None and settings.tls_keyfile is None:
        if settings.tls_client_auth != "none":
            raise InvalidConfig("tls_client_auth needs TLS: set tls_certfile and tls_keyfile")
        return None
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        raise InvalidConfig("TLS needs both tls_certfile and tls_keyfile")
    return TlsConfig(
        settings.tls_certfile, settings.tls_keyfile, settings.tls_client_ca, settings.tls_client_auth
    )


def dicom_tls_config(settings: Settings) -> TlsConfig | None:
    """The DICOM door's TLS settings, checked (files exist and load); None without DICOM TLS."""
    cert, key, ca = settings.dicom_tls_certfile, settings.dicom_tls_keyfile, settings.dicom_tls_client_ca
    if cert is None and key is None:
        if ca is not None:
            raise InvalidConfig(
                "dicom_tls_client_ca needs DICOM TLS: set dicom_tls_certfile and dicom_tls_keyfile"
            )
        return None
    if cert is None or key is None:
        raise InvalidConfig("DICOM TLS needs both dicom_tls_certfile and dicom_tls_keyfile")
    try:
        return TlsConfig(cert, key, ca, "none" if ca is None else "required")
    except InvalidConfig as exc:
        names = "dicom_tls_certfile, dicom_tls_keyfile, dicom_tls_client_ca"
        raise InvalidConfig(f"DICOM {exc} (settings {names})") from None


def check_data_dir(settings: Settings) -> None:
    """Create the data dir if needed and check that a file can be written in it."""
    folder = settings.data_dir
    change = "set --data-dir DIR or MEDSERVE_DATA_DIR=DIR to a folder this user can write"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise StartupFailure(f"data dir {folder.resolve()} exists and is not a folder: {change}") from None
    except OSError as exc:
        raise StartupFailure(
            f"data dir {folder.resolve()} cannot be written: {exc.strerror or exc}: {change}"
        ) from None


@dataclass
class Preflight:
    """What :func:`preflight` checked and holds: the TLS settings (HTTP and gRPC, DICOM) and the bound
    HTTP socket."""

    tls: TlsConfig | None
    http_socket: socket.socket
    dicom_tls: TlsConfig | None = None

    def close(self) -> None:
        self.http_socket.close()


def preflight(settings: Settings) -> Preflight:
    """Check everything that would stop the start later; bind the HTTP socket (the caller closes it)."""
    tls = tls_config(settings)
    dicom_tls = dicom_tls_config(settings)
    check_data_dir(settings)
    http, *others = doors(settings)
    claimed: dict[int, Door] = {}
    for door in (http, *others):
        first = claimed.setdefault(door.port, door)
        if door.port != 0 and first is not door:
            raise StartupFailure(
                f"{first.name} and {door.name} are both set to port {door.port}: give each door its own "
                f"port ({first.flag}, {door.flag})"
            )
    for door in others:
        if (problem := bind_problem(door)) is not None:
            raise problem
    return Preflight(tls, bind(http), dicom_tls)
