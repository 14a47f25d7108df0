"""Edge and hub on loopback: two real servers, the edge reaching the hub over mutual TLS (its
certificate's CN is its name at the hub; its API token of the same name works too). A version
published on the hub is installed and served by the edge; with the hub stopped the edge keeps serving
and queues its uplinks; with the hub back the uplinks arrive once; a tampered artifact is refused
while the old version keeps serving; a rollback pinned on the hub applies at the next sync."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from medserve.security.certificates import CertificateGrants
from medserve.security.devcerts import make_dev_certificates
from medserve.security.signing import create_signing_key, sign_artifact
from medserve.security.tokens import TokenStore
from medserve.store.database import Database, default_url
from tests.conftest import RunningServer, free_port, start_server, stop_server

DEADLINE_S = 60.0
EDGE = "edge-ward1"


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def tokens(data_dir: Path, *specs: tuple[str, str]) -> list[str]:
    """Tokens made in the hub's store before it starts; the edge's certificate CN granted too."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(default_url(data_dir))
    database.migrate()
    try:
        CertificateGrants(database).grant(EDGE, "service")
        return [TokenStore(database).create(role, name=name)[0] for name, role in specs]
    finally:
        database.dispose()


@dataclass
class Fleet:
    root: Path
    hub_repo: Path
    hub_env: dict[str, str]
    hub_port: int
    hub: RunningServer
    edge: RunningServer
    admin: str
    edge_token: str
    ca: Path

    def hub_url(self, path: str) -> str:
        return f"https://localhost:{self.hub_port}{path}"

    def hub_call(self, method: str, path: str, body: object = None, token: str = "") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        trusting = ssl.create_default_context(cafile=str(self.ca))
        return httpx.request(
            method, self.hub_url(path), json=body, headers=headers, timeout=60, verify=trusting
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``medserve`` against the hub, trusting its CA."""
        return subprocess.run(
            [sys.executable, "-m", "medserve", *args, "--url", self.hub_url(""), "--token", self.admin],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SSL_CERT_FILE": str(self.ca)},
        )

    def edge_call(self, method: str, path: str, body: object = None) -> httpx.Response:
        return httpx.request(method, f"http://{self.edge.http_url}{path}", json=body, timeout=120)

    def start_hub(self, log: str) -> None:
        self.hub = start_server(
            self.hub_repo, self.root / "hub" / log, env=self.hub_env, http_port=self.hub_port, ca=self.ca
        )

    def hub_edge(self) -> dict[str, Any]:
        edges = self.hub_call("GET", "/v2/hub/edges").json()["edges"]
        return next((e for e in edges if e["edge"] == EDGE), {})

    def serving(self) -> list[str]:
        index = self.edge_call("POST", "/v2/repository/index", {"ready": True}).json()
        return sorted(e["version"] for e in index if e["name"] == "simple")

    def infer(self) -> httpx.Response:
        data = list(range(16))
        body = {
            "inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": data},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": data},
            ]
        }
        return self.edge_call("POST", "/v2/models/simple/infer", body)


@pytest.fixture(scope="module")
def fleet(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("edge-hub")
    keys = root / "keys"
    keys.mkdir()
    create_signing_key(keys / "publisher.key", keys / "publisher.pub")
    create_signing_key(keys / "hub.key", keys / "hub.pub")
    hub_repo = root / "hub-repository"
    shutil.copytree(example_repository / "simple", hub_repo / "simple")
    shutil.copytree(hub_repo / "simple" / "1", hub_repo / "simple" / "2")
    for version in ("1", "2"):
        sign_artifact(hub_repo / "simple" / version / "model.onnx", keys / "publisher.key")
    admin, edge_token = tokens(root / "hub" / "data", ("admin", "admin"), (EDGE, "service"))
    certs = make_dev_certificates(root / "certs", ["localhost"], [EDGE])
    hub_env = {
        "MEDSERVE_AUTH_DISABLED": "false",
        "MEDSERVE_LOAD_MODELS": "false",
        "MEDSERVE_CONSOLE_ENABLED": "false",
        "MEDSERVE_HUB_ENABLED": "true",
        "MEDSERVE_HUB_SIGNING_KEY": str(keys / "hub.key"),
        "MEDSERVE_HUB_EDGES": json.dumps({EDGE: "ward"}),
        "MEDSERVE_TLS_CERTFILE": str(certs.server_cert),
        "MEDSERVE_TLS_KEYFILE": str(certs.server_key),
        "MEDSERVE_TLS_CLIENT_CA": str(certs.ca_cert),
        "MEDSERVE_TLS_CLIENT_AUTH": "optional",  # edges by certificate, operators by token
        "MEDSERVE_TRUSTED_SIGNING_KEYS": json.dumps([str(keys / "publisher.pub")]),
    }
    hub_port = free_port()
    (root / "hub").mkdir(exist_ok=True)
    (root / "edge" / "repository").mkdir(parents=True)
    edge_env = {
        "MEDSERVE_EDGE_HUB_URL": f"https://localhost:{hub_port}",
        "MEDSERVE_EDGE_GROUP": "ward",
        "MEDSERVE_EDGE_TLS_CERTFILE": str(certs.clients[EDGE][0]),
        "MEDSERVE_EDGE_TLS_KEYFILE": str(certs.clients[EDGE][1]),
        "MEDSERVE_EDGE_TLS_CA": str(certs.ca_cert),
        "MEDSERVE_EDGE_SYNC_INTERVAL_S": "3600",  # syncs on demand in this test
        "MEDSERVE_EDGE_UPLINK_INTERVAL_S": "0.3",
        "MEDSERVE_TRUSTED_SIGNING_KEYS": json.dumps([str(keys / "publisher.pub"), str(keys / "hub.pub")]),
        "MEDSERVE_REQUIRE_SIGNATURES": "true",
        "MEDSERVE_CONSOLE_ENABLED": "false",
        "MEDSERVE_EDGE_OFFLOAD_MODELS": '["simple"]',  # offload itself: test_edge_offload.py
    }
    with ThreadPoolExecutor(2) as starting:  # both at once: each start is mostly waiting on imports
        hub_start = starting.submit(
            start_server,
            hub_repo,
            root / "hub" / "hub.log",
            env=hub_env,
            http_port=hub_port,
            ca=certs.ca_cert,
        )
        edge_start = starting.submit(
            start_server, root / "edge" / "repository", root / "edge" / "edge.log", env=edge_env
        )
        hub, edge = hub_start.result(), edge_start.result()
    running = Fleet(root, hub_repo, hub_env, hub_port, hub, edge, admin, edge_token, certs.ca_cert)
    yield running
    stop_server(running.edge)
    stop_server(running.hub)


def test_edge_installs_serves_offline_delivers_once_refuses_tampering_and_rolls_back(fleet: Fleet) -> None:
    # rights before anything: the edge's token may not publish, an unknown principal is no edge
    refused = fleet.hub_call(
        "POST", "/v2/hub/groups/ward/publish", {"model": "simple", "version": 1}, fleet.edge_token
    )
    assert refused.status_code == 403, refused.text
    assert fleet.hub_call("POST", "/v2/hub/sync", {}, fleet.admin).status_code == 403
    # bad input: a 4xx naming what was wrong
    for body, status, named in [
        ({"model": "simple", "version": "1"}, 400, "'version' must be a positive integer"),
        ({"model": "../simple", "version": 1}, 400, "model must be"),
        ({"model": "simple", "version": 9}, 404, "no version 9"),
    ]:
        answer = fleet.hub_call("POST", "/v2/hub/groups/ward/publish", body)
        assert answer.status_code == status and named in answer.text, answer.text
    unpublished = fleet.hub_call("GET", "/v2/hub/artifacts/simple/1", token=fleet.edge_token)
    assert unpublished.status_code == 404 and "not published to group 'ward'" in unpublished.text
    odd = fleet.hub_call(
        "POST", "/v2/hub/uplinks", {"items": [{"key": "k", "kind": "x", "payload": {}}]}, fleet.edge_token
    )
    assert odd.status_code == 400 and "'kind' must be one of" in odd.text, odd.text

    # publish v1 with the CLI; the edge installs it at its next sync and serves it
    published = fleet.cli("hub", "publish", "ward", "simple", "1")
    assert published.returncode == 0, published.stderr
    report = fleet.edge_call("POST", "/v2/edge/sync").json()
    assert report["installed"] == [{"model": "simple", "version": 1}], report
    assert fleet.serving() == ["1"]
    assert fleet.infer().status_code == 200
    assert fleet.hub_edge()["versions"] == {"simple": ["1"]}  # reported once installed
    wait_for(
        "the edge's audit chain verified at the hub", lambda: fleet.hub_edge()["audit_verified_to"].get("")
    )

    # the hub goes away: the edge keeps serving and queues what it records
    stop_server(fleet.hub)
    for _ in range(3):
        assert fleet.infer().status_code == 200
    offline = fleet.edge_call("POST", "/v2/edge/sync").json()
    assert offline["error"] and offline["versions"] == {"simple": ["1"]}, offline
    shown = subprocess.run(
        [sys.executable, "-m", "medserve", "edge", "status", "--url", f"http://{fleet.edge.http_url}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    status = json.loads(shown.stdout)
    assert status["hub_reachable"] is False and status["versions"] == {"simple": ["1"]}, shown.stdout
    assert "ConnectError" in status["last_error"] and status["group"] == "ward"
    wait_for(
        "audit ranges queued while the hub is away",
        lambda: fleet.edge_call("GET", "/v2/edge/status").json()["backlog"]["pending"].get("audit"),
    )

    # the hub is back: the backlog drains, each record once
    fleet.start_hub("hub-again.log")
    back = fleet.edge_call("POST", "/v2/edge/sync").json()  # a sync that reaches the hub resumes uplinks
    assert back["error"] == "" and back["installed"] == [], back
    wait_for(
        "the backlog delivered",
        lambda: fleet.edge_call("GET", "/v2/edge/status").json()["backlog"]["total"] == 0,
    )
    edge_view = fleet.hub_edge()
    verified = edge_view["audit_verified_to"][""]
    audit_items = edge_view["received"]["audit"]
    # a resend of what the hub holds (an edge that crashed before recording the receipt) is kept once
    database = Database(default_url(fleet.root / "edge" / "data"))
    try:
        with database.engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT key, kind, payload FROM edge_uplinks WHERE kind = 'audit' AND state = 'sent' "
                "ORDER BY created_at"
            ).all()
    finally:
        database.dispose()
    items = [{"key": k, "kind": kind, "payload": json.loads(p)} for k, kind, p in rows]
    again = fleet.hub_call("POST", "/v2/hub/uplinks", {"items": items}, fleet.edge_token).json()
    assert again["accepted"] == [] and len(again["duplicates"]) == len(items), again
    seqs = [r["seq"] for item in items for r in item["payload"]["records"]]
    assert seqs == list(range(1, len(seqs) + 1))  # every record of the chain, each once, in order
    # the hub verified the chain through every record sent (ranges apply only in order, so none twice)
    assert fleet.hub_edge()["audit_verified_to"][""] >= seqs[-1] and verified >= 1
    assert audit_items >= 1

    # a tampered artifact is refused: v2 is published, then its bytes change on the hub
    assert (
        fleet.hub_call("POST", "/v2/hub/groups/ward/publish", {"model": "simple", "version": 2}).status_code
        == 200
    )
    artifact = fleet.hub_repo / "simple" / "2" / "model.onnx"
    original = artifact.read_bytes()
    artifact.write_bytes(original + b"\0tampered")
    tampered = fleet.edge_call("POST", "/v2/edge/sync").json()
    assert tampered["installed"] == [] and "digest" in tampered["refused"][0]["reason"], tampered
    assert fleet.serving() == ["1"] and fleet.infer().status_code == 200
    wait_for("the refusal reported to the hub", lambda: fleet.hub_edge()["received"].get("alert"))
    assert not (fleet.root / "edge" / "repository" / "simple" / "2").exists()

    # the artifact as signed again: v2 installs and serves
    artifact.write_bytes(original)
    assert fleet.edge_call("POST", "/v2/edge/sync").json()["installed"] == [{"model": "simple", "version": 2}]
    assert fleet.serving() == ["2"]

    # a rollback on the hub applies at the next sync
    rolled = fleet.cli("hub", "rollback", "ward", "simple")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["serving"] == 1
    assert fleet.edge_call("POST", "/v2/edge/sync").json()["installed"] == [{"model": "simple", "version": 1}]
    assert fleet.serving() == ["1"] and fleet.infer().status_code == 200
    listed = fleet.cli("hub", "edges")
    assert f"{EDGE}  group ward" in listed.stdout and "simple 1" in listed.stdout, listed.stdout
    fleet.hub.assert_alive()
    fleet.edge.assert_alive()
