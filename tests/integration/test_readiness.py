"""Readiness means *this replica can serve*: a replica whose store (PostgreSQL) goes away answers
not-ready on ``/v2/health/ready``, gRPC ``ServerReady`` and gRPC health, says why in its log (once, not
once per probe), and is ready again when the store comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient
from conftest import RunningServer, start_server, stop_server
from databases import POSTGRES_URL, TcpProxy, with_address
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import make_url

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="MEDSERVE_TEST_POSTGRES_URL is not set (bash scripts/postgres.sh starts one)"
)

WENT_AWAY = "not ready: the store cannot be reached"
STILL_AWAY = "still not ready: the store cannot be reached"
BACK = "the store answers again: ready to serve"


@pytest.fixture()
def store_behind_proxy(database_url: str) -> Iterator[tuple[str, TcpProxy]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("the store is taken away by cutting its network connection (PostgreSQL)")
    url = make_url(database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    yield with_address(database_url, "127.0.0.1", proxy.port), proxy
    proxy.stop()


@pytest.fixture()
def replica(store_behind_proxy: tuple[str, TcpProxy], tmp_path: Path) -> Iterator[RunningServer]:
    url, _ = store_behind_proxy
    (tmp_path / "repository").mkdir()
    running = start_server(
        tmp_path / "repository", tmp_path / "server.log", env={"MEDSERVE_DATABASE_URL": url}
    )
    yield running
    stop_server(running)


def _ready(server: RunningServer) -> tuple[int, str]:
    answer = httpx.get(f"http://{server.http_url}/v2/health/ready", timeout=5)
    return answer.status_code, answer.text


def _grpc_health(server: RunningServer) -> int:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


def _until(predicate: object, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


def test_a_replica_whose_store_goes_away_is_not_ready_until_it_comes_back(
    replica: RunningServer, store_behind_proxy: tuple[str, TcpProxy]
) -> None:
    _, proxy = store_behind_proxy
    client = grpcclient.InferenceServerClient(replica.grpc_url)
    assert _ready(replica)[0] == 200 and client.is_server_ready()
    assert _grpc_health(replica) == health_pb2.HealthCheckResponse.SERVING

    proxy.stop()  # the database is gone: connections refused, open ones cut
    # within the check's cache (1 s) and its timeout (2 s), with margin for a busy machine
    _until(lambda: _ready(replica)[0] == 503, 10)
    status, body = _ready(replica)
    assert status == 503 and "the store cannot be reached" in body
    assert not client.is_server_ready()
    assert _grpc_health(replica) == health_pb2.HealthCheckResponse.NOT_SERVING
    # probed 20 times a second for 3 s: one reason in the log, not one per probe
    for _ in range(60):
        assert _ready(replica)[0] == 503
        time.sleep(0.05)
    log = replica.output()
    assert log.count(WENT_AWAY) == 1, log
    assert log.count(STILL_AWAY) == 0, log  # rate-limited: at most once per 30 s
    assert "OperationalError" in log.split(WENT_AWAY, 1)[1].splitlines()[0]  # the reason itself
    replica.assert_alive()  # not ready is not dead: the process keeps running

    proxy.start()  # the database is back
    _until(lambda: _ready(replica)[0] == 200, 10)
    assert client.is_server_ready()
    assert _grpc_health(replica) == health_pb2.HealthCheckResponse.SERVING
    assert replica.output().count(BACK) == 1
    client.close()
