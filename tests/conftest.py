"""Shared fixtures: the example repository (built once per run) and a real ``medserve serve``
subprocess on free ports.

The suite has two tiers that mirror the package: ``tests/unit`` (pure logic: no sockets, no
subprocesses, no example models; enforced below) and ``tests/integration`` (real servers, real
clients, the example models, PostgreSQL when ``MEDSERVE_TEST_POSTGRES_URL`` is set)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import pytest

from medserve.demo.models.repository import EXAMPLE_MODELS, build_example_repository

pytest_plugins = ["databases"]

# The trained example models train with the test profile (fewer fixed steps than the default, floors of
# its own): enough for the CT UNet to find the phantoms' lesions.
os.environ.setdefault("MEDSERVE_EXAMPLES_PROFILE", "test")

ROOT = Path(__file__).resolve().parent.parent


def _examples_digest() -> str:
    # The example models are built by the demonstration package alone (builders and the synthetic
    # data they train on): only a change there rebuilds them.
    digest = hashlib.sha256()
    sources = [*(ROOT / "medserve" / "demo").rglob("*.py")]
    for path in sorted(sources):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


#: Models are built once and reused by later runs while the builder's code is unchanged.
CACHE = Path(os.environ.get("MEDSERVE_TEST_CACHE", ROOT / ".cache")) / f"repository-{_examples_digest()}"


UNIT = Path(__file__).resolve().parent / "unit"


class UnitTierViolation(RuntimeError):
    """A test of the unit tier tried to open a network connection or start a process."""


@pytest.fixture(autouse=True)
def _unit_tier_is_pure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests under ``tests/unit`` may not connect, listen or start processes: such a test belongs in
    ``tests/integration``."""
    if not Path(str(request.node.fspath)).is_relative_to(UNIT):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise UnitTierViolation(f"{request.node.nodeid}: unit tests use no sockets or subprocesses")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def example_repository() -> Path:
    """All example models, chest_xray_classifier included (built with torch once, then cached).

    ``MEDSERVE_TEST_REPOSITORY`` names an already built repository to use as it is (for iterating on
    tests while the builders' code changes)."""
    prebuilt = os.environ.get("MEDSERVE_TEST_REPOSITORY")
    if prebuilt:
        return Path(prebuilt)
    build_example_repository(CACHE, models=EXAMPLE_MODELS)
    return CACHE


@pytest.fixture()
def repository_copy(example_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the small example models, for tests that change the repository."""
    target = tmp_path / "repository"
    target.mkdir()
    for name in EXAMPLE_MODELS:
        if name != "chest_xray_classifier":
            shutil.copytree(example_repository / name, target / name)
    return target


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    repository: Path
    log: Path

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"server exited:\n{self.output()}"


def start_server(
    repository: Path,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
    http_port: int | None = None,
    ready_within_s: float = 120,
) -> RunningServer:
    """Start ``medserve serve`` and wait until it is ready (over TLS, trusting ``ca``, when given); on
    ``http_port`` when given (a server started again where its clients expect it)."""
    http_port, grpc_port = http_port or free_port(), free_port()
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medserve",
            "serve",
            "--repository",
            str(repository),
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        # Protocol tests run with authentication off (the development flag); tests/test_access.py and
        # the trust tests start servers with it on.
        env={
            **os.environ,
            "MEDSERVE_DATA_DIR": str(log.parent / "data"),
            "MEDSERVE_AUTH_DISABLED": "true",
            "MEDSERVE_DICOM_PORT": "-1",  # imaging tests give their servers a free DICOM port
            **(env or {}),
        },
    )
    server = RunningServer(process, http_port, grpc_port, repository, log)
    deadline = time.monotonic() + ready_within_s
    scheme, verify = ("https", ssl.create_default_context(cafile=str(ca))) if ca else ("http", True)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medserve exited with {process.returncode}:\n{server.output()}")
        try:
            ready = f"{scheme}://{server.http_url}/v2/health/ready"
            # ready answers 200 a moment before the "medserve ready" line (which names the doors)
            # is logged: tests that read that line wait for both
            if (
                httpx.get(ready, timeout=1, verify=verify).status_code == 200
                and "medserve ready" in server.output()
            ):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"medserve did not become ready:\n{server.output()}")


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server over the whole example repository, shared by the read-only tests."""
    running = start_server(example_repository, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)
    assert running.process.returncode == 0, running.output()


@pytest.fixture()
def private_server(repository_copy: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own over a private repository copy, for tests that load, unload or break models."""
    running = start_server(repository_copy, tmp_path / "server.log")
    yield running
    stop_server(running)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic test data of an OIP datatype (BF16 as ml_dtypes.bfloat16, BYTES as UTF-8)."""
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if datatype == "BF16":
        return rng.normal(size=shape).astype(ml_dtypes.bfloat16)
    if datatype == "BYTES":
        count = int(np.prod(shape))
        return np.array([f"value-{i}-\u00e9".encode() for i in range(count)], dtype=object).reshape(shape)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(datatype.lower())
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, dtype=datatype.lower())
