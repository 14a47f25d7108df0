"""Trust end to end on a real server: crash safety of the audit trail, model integrity and rollback,
TLS with client certificates, model monitoring, and no patient data in the logs."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from websockets.sync.client import connect

from tests.conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow

SECURED = {"MEDSERVE_AUTH_DISABLED": "false"}


def medserve(data_dir: Path, *args: str, database_url: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(data_dir), "MEDSERVE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args], capture_output=True, text=True, env=env, timeout=120
    )


def token(data_dir: Path, role: str, name: str) -> str:
    done = medserve(data_dir, "tokens", "create", "--init", "--role", role, "--name", name)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def audit_records(data_dir: Path, database_url: str = "") -> list[dict[str, object]]:
    done = medserve(data_dir, "audit", "export", database_url=database_url)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def simple_body(request_id: str, **parameters: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": request_id,
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [1] * 16},
        ],
    }
    if parameters:
        body["parameters"] = parameters
    return body


def test_kill_9_under_load_loses_no_acknowledged_audit_record(
    repository_copy: Path, tmp_path: Path, database_url: str
) -> None:
    """On SQLite and PostgreSQL: every answered inference has its record after a crash and restart."""
    store = {"MEDSERVE_DATABASE_URL": database_url}
    server = start_server(repository_copy, tmp_path / "first.log", env=store)
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                request_id = f"w{worker}-{i}"
                try:
                    reply = client.post(
                        f"http://{server.http_url}/v2/models/simple/infer", json=simple_body(request_id)
                    )
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if reply.status_code == 200:
                    acknowledged.append(request_id)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) > 20
    restarted = start_server(repository_copy, tmp_path / "second.log", env=store)  # same data folder
    try:
        deadline = time.monotonic() + 60
        missing: set[str] = set(acknowledged)
        while time.monotonic() < deadline and missing:
            recorded = {str(r["request_id"]) for r in audit_records(tmp_path / "data", database_url)}
            missing = set(acknowledged) - recorded
            time.sleep(0.5)
        assert not missing, f"{len(missing)} acknowledged inferences have no audit record"
        verified = medserve(tmp_path / "data", "audit", "verify", database_url=database_url)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        stop_server(restarted)
    # An edited row is named by verify.
    edited = first_inference_seq(database_url or f"sqlite:///{tmp_path / 'data' / 'medserve.db'}")
    verified = medserve(tmp_path / "data", "audit", "verify", database_url=database_url)
    assert verified.returncode == 1 and f"seq {edited}" in verified.stdout, verified.stdout


def first_inference_seq(url: str) -> int:
    """Edit the first inference record's status behind the server's back; returns its seq."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            seq = connection.execute(
                text("SELECT min(seq) FROM audit_records WHERE event = 'inference'")
            ).scalar_one()
            connection.execute(
                text("UPDATE audit_records SET status = 'ok-edited' WHERE seq = :s"), {"s": seq}
            )
        return int(seq)
    finally:
        engine.dispose()


def test_tampered_artifact_is_refused_and_rollback_pins_a_version(
    repository_copy: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    admin = token(data, "admin", "release-manager")
    server = start_server(repository_copy, tmp_path / "first.log", env=SECURED)
    headers = {"Authorization": f"Bearer {admin}"}
    base = f"http://{server.http_url}"
    try:
        meta = httpx.get(f"{base}/v2/models/simple_nobatch", headers=headers).json()
        assert meta["versions"] == ["1", "2"]
        assert meta["parameters"]["lineage"]["artifact_sha256"] == meta["parameters"]["sha256"]
        rolled = medserve(data, "models", "rollback", "simple_nobatch", "--url", base, "--token", admin)
        assert rolled.returncode == 0, rolled.stderr
        assert "pinned to version 1" in rolled.stdout
        assert httpx.get(f"{base}/v2/models/simple_nobatch", headers=headers).json()["versions"] == ["1"]
        cleared = medserve(
            data, "models", "rollback", "simple_nobatch", "--clear", "--url", base, "--token", admin
        )
        assert cleared.returncode == 0, cleared.stderr
        assert httpx.get(f"{base}/v2/models/simple_nobatch", headers=headers).json()["versions"] == ["1", "2"]
    finally:
        stop_server(server)
    artifact = repository_copy / "simple" / "1" / "model.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"\x00tampered")
    server = start_server(repository_copy, tmp_path / "second.log", env=SECURED)
    try:
        index = httpx.post(f"http://{server.http_url}/v2/repository/index", headers=headers, json={}).json()
        row = next(r for r in index if r["name"] == "simple")
        assert row["state"] == "UNAVAILABLE" and "digest mismatch" in row["reason"], row
        events = [r for r in audit_records(data) if r["event"] == "model.rollback"]
        assert [r["principal"] for r in events] == ["release-manager", "release-manager"]
    finally:
        stop_server(server)


def test_tls_with_client_certificates_and_tokens(example_repository: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    made = medserve(tmp_path, "certs", "dev", "--out", str(certs), "--client", "ward-gateway")
    assert made.returncode == 0, made.stderr
    data = tmp_path / "data"
    granted = medserve(
        data, "certs", "grant", "ward-gateway", "--init", "--role", "service", "--models", "simple"
    )
    assert granted.returncode == 0, granted.stderr
    viewer = token(data, "viewer", "dashboard")
    env = {
        **SECURED,
        "MEDSERVE_TLS_CERTFILE": str(certs / "server.pem"),
        "MEDSERVE_TLS_KEYFILE": str(certs / "server.key"),
        "MEDSERVE_TLS_CLIENT_CA": str(certs / "ca.pem"),
        "MEDSERVE_TLS_CLIENT_AUTH": "optional",
    }
    server = start_server(example_repository, tmp_path / "server.log", env=env, ca=certs / "ca.pem")
    try:
        base = f"https://{server.http_url}"
        ca = str(certs / "ca.pem")
        with_cert = ssl.create_default_context(cafile=ca)
        with_cert.load_cert_chain(certs / "ward-gateway.pem", certs / "ward-gateway.key")
        with httpx.Client(verify=with_cert) as client:
            assert client.post(f"{base}/v2/models/simple/infer", json=simple_body("tls-1")).status_code == 200
            assert client.get(f"{base}/v2/models/chest_xray_classifier").status_code == 403
        with httpx.Client(verify=ssl.create_default_context(cafile=ca)) as client:
            assert client.get(f"{base}/v2/models/simple").status_code == 401
            reply = client.get(f"{base}/v2/models/simple", headers={"Authorization": f"Bearer {viewer}"})
            assert reply.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v2/health/ready", verify=True)  # the development CA is not a public one
        grpc_client = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=ca)
        assert grpc_client.is_server_ready()
        meta = grpc_client.get_model_metadata("simple", headers={"authorization": f"Bearer {viewer}"})
        assert meta.name == "simple"
    finally:
        stop_server(server)


def test_model_monitoring_reports_windows_and_drift(private_server: RunningServer) -> None:
    base = f"http://{private_server.http_url}"
    for i in range(20):
        assert httpx.post(f"{base}/v2/models/simple/infer", json=simple_body(f"m{i}")).status_code == 200
    snapshot = httpx.get(f"{base}/v2/models/simple/monitoring").json()
    assert json.dumps(snapshot)  # JSON all the way down
    assert "simple" in json.dumps(snapshot)
    metrics = httpx.get(f"{base}/metrics").text
    assert "medserve_audit_backlog" in metrics and "medserve_audit_database_up 1.0" in metrics
    assert httpx.get(f"{base}/v2/models/no_such_model/monitoring").status_code == 404


PATIENT_NAME = "TRUSTWORTHY^HONORA"
PATIENT_ID = "MRN-90417733"
STUDY_UID = "1.2.826.0.1.3680043.8.498.99887766"


def test_logs_and_audit_trail_hold_no_patient_data(example_repository: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    service = token(data, "service", "ward-7")
    server = start_server(example_repository, tmp_path / "server.log", "--log-level", "debug", env=SECURED)
    headers = {"Authorization": f"Bearer {service}"}
    try:
        base = f"http://{server.http_url}"
        body = simple_body(
            "phi-1", patient_id=PATIENT_ID, study_instance_uid=STUDY_UID, patient_name=PATIENT_NAME
        )
        assert httpx.post(f"{base}/v2/models/simple/infer", json=body, headers=headers).status_code == 200
        bad = simple_body("phi-2", patient_id=PATIENT_ID)
        bad["inputs"][0]["shape"] = [1, 15]  # type: ignore[index]
        assert httpx.post(f"{base}/v2/models/simple/infer", json=bad, headers=headers).status_code == 400
        with connect(f"ws://{server.http_url}/v2/monitor/stream", additional_headers=headers) as socket:
            socket.send(
                json.dumps(
                    {
                        "sequence_id": PATIENT_ID,
                        "sequence_start": True,
                        "sample_seq": 0,
                        "timestamp": time.time(),
                        "vitals": {"spo2": -5},
                    }
                )
            )
            socket.recv(timeout=30)
        wrong = {"Authorization": f"Bearer msv_{PATIENT_ID}"}
        assert httpx.get(f"{base}/v2/models/simple", headers=wrong).status_code == 401
    finally:
        stop_server(server)
    records = audit_records(data)
    assert any(r["request_id"] == "phi-1" and r["patient_ref"] and r["study_ref"] for r in records)
    journal = b"".join(p.read_bytes() for p in (data / "audit").rglob("*") if p.is_file())
    exported = json.dumps(records).encode()
    log_text = server.output().encode()
    for secret in (PATIENT_NAME, PATIENT_ID, STUDY_UID):
        for where, blob in (("server log", log_text), ("audit export", exported), ("journal", journal)):
            assert secret.encode() not in blob, f"{secret} found in the {where}"
    assert np.any([r["status"] == "InvalidInput" for r in records])
