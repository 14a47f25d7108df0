"""Database fixtures: every test that takes ``database`` runs on SQLite and, when
``MEDSERVE_TEST_POSTGRES_URL`` is set (``bash scripts/postgres.sh`` prints one), on PostgreSQL too.

Each test gets a clean, empty (unmigrated) database: a new SQLite file, or a PostgreSQL schema of its
own (``search_path`` set through the URL) that is dropped afterwards. ``outage`` makes that database
really unavailable to code under test and brings it back: SQLite by another connection holding
``BEGIN EXCLUSIVE`` (writers then fail after their busy timeout), PostgreSQL by a TCP proxy in front
of the server that refuses connections and cuts open ones, as a stopped server does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from medserve.store.database import Database

POSTGRES_URL = os.environ.get("MEDSERVE_TEST_POSTGRES_URL", "")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(
            not POSTGRES_URL,
            reason="MEDSERVE_TEST_POSTGRES_URL is not set (bash scripts/postgres.sh starts one)",
        ),
    ),
]


def with_schema(url: str, schema: str) -> str:
    """``url`` with every connection's ``search_path`` set to ``schema``."""
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


def with_address(url: str, host: str, port: int) -> str:
    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a clean, empty database of each available backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'medserve.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield with_schema(POSTGRES_URL, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture()
def database(database_url: str) -> Iterator[Database]:
    """A clean, empty database (not migrated)."""
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture()
def migrated_database(database: Database) -> Database:
    """A clean database at the newest schema."""
    database.migrate()
    return database


class TcpProxy:
    """Forwards a local port to ``upstream``; :meth:`stop` refuses and cuts connections, :meth:`start`
    serves again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        # Ends when the proxy is stopped or a peer goes away; then the other pump ends too.
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):  # already shut
                sock.shutdown(socket.SHUT_RDWR)


class Outage:
    """A database that tests can make unavailable (:meth:`begin`) and available again (:meth:`end`).

    ``database`` is what the code under test uses: short timeouts, and for PostgreSQL the proxy.
    """

    def __init__(self, database_url: str) -> None:
        self._sqlite_path: str | None = None
        self._holder: sqlite3.Connection | None = None
        self._proxy: TcpProxy | None = None
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            self._sqlite_path = url.database
            self.database = Database(database_url, busy_timeout_s=0.2)
        else:
            self._proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
            self._proxy.start()
            self.database = Database(
                with_address(database_url, "127.0.0.1", self._proxy.port), connect_timeout_s=2
            )

    def begin(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            return
        holder = sqlite3.connect(self._sqlite_path or "", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        self._holder = holder

    def end(self) -> None:
        if self._proxy is not None:
            self._proxy.start()
            return
        if self._holder is not None:
            self._holder.execute("ROLLBACK")
            self._holder.close()
            self._holder = None

    def close(self) -> None:
        self.end()
        if self._proxy is not None:
            self._proxy.stop()
        self.database.dispose()


@pytest.fixture()
def outage(database_url: str) -> Iterator[Outage]:
    """The test's database, which the test can take down and bring back."""
    handle = Outage(database_url)
    yield handle
    handle.close()
