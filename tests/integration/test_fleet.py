"""A fleet: three replicas on one PostgreSQL and one shared storage folder, behind HAProxy on loopback.

Under a steady inference load, with a job running and a CT series arriving instance by instance
through the balancer, the replica running the job is killed -9 and started again. Then: every request
was answered (HAProxy retries what a dead replica dropped), the job's output holds every row once,
every export was sent once, the audit trail verifies across the three chains, and every acknowledged
inference has its audit record (the killed replica's journal is flushed when it starts again).

Needs ``MEDSERVE_TEST_POSTGRES_URL`` (``bash scripts/postgres.sh``) and Debian's ``haproxy``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pa_csv
import pytest
import yaml
from conftest import free_port
from databases import POSTGRES_URL, with_schema
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from medserve.audit.commands import format_verification, verify_audit
from medserve.audit.rows import chains, iter_records
from medserve.demo import dicom_studies as synthetic
from medserve.store.database import Database
from medserve.store.tables import ExportRow, JobChunkRow

#: Debian installs haproxy in /usr/sbin, which a user's PATH may lack.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.skipif(
        not POSTGRES_URL, reason="MEDSERVE_TEST_POSTGRES_URL is not set (scripts/postgres.sh)"
    ),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/system_packages.sh)"),
]

REPLICAS = 3
JOB_ROWS = 6000
CHUNK = 50


@dataclass
class Replica:
    name: str
    http_port: int
    data_dir: Path
    env: dict[str, str]
    repository: Path
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log = self.data_dir.parent / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "medserve", "serve", "--repository", str(self.repository)]
        command += ["--http-port", str(self.http_port), "--grpc-port", "-1"]
        self.process = subprocess.Popen(
            command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.output()}")
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.output()}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in self.logs)


def _haproxy_config(port: int, replicas: list[Replica]) -> str:
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.http_port} check inter 500ms fall 3 rise 1" for r in replicas
    )
    return f"""global
    maxconn 256
defaults
    mode http
    timeout connect 1s
    timeout check 3s
    timeout client 60s
    timeout server 60s
    retries 5
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503
    option http-buffer-request
frontend fleet
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
{servers}
"""


@pytest.fixture()
def fleet_database() -> Iterator[str]:
    schema = f"fleet_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_schema(POSTGRES_URL, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _write_table(path: Path, rows: int) -> None:
    values = np.round(np.random.default_rng(3).normal(size=(rows, 32)), 4)
    header = ["id", *[f"a{i}" for i in range(16)], *[f"b{i}" for i in range(16)]]
    lines = [",".join(header)] + [",".join([f"p{r}", *map(str, values[r])]) for r in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def _job_spec(source: Path, sink: Path) -> str:
    a, b = ", ".join(f"a{i}" for i in range(16)), ", ".join(f"b{i}" for i in range(16))
    inputs = f"{{INPUT0: [{a}], INPUT1: [{b}]}}"
    return (
        f"workload: table\nsource: {source}\nmodel: simple\nsink: {{path: {sink}}}\nchunk_size: {CHUNK}\n"
        f"batch_size: 8\noptions:\n  inputs: {inputs}\n  keep: [id]\n"
    )


class Load:
    """Inferences through the balancer, one after another, each with its own id, until stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.acknowledged: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "data": [float(i) for i in range(16)],
                },
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
            ]
        }
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                request_id = f"fleet-{uuid.uuid4().hex[:12]}"
                try:
                    reply = client.post("/v2/models/simple/infer", json={**body, "id": request_id})
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.statuses[reply.status_code] += 1
                if reply.status_code == 200:
                    self.acknowledged.append(request_id)
                else:
                    self.errors.append(f"{reply.status_code}: {reply.text[:200]}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _until(what: str, check: object, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = check()  # type: ignore[operator]
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout_s:.0f} s (last: {last})")


def test_a_replica_killed_under_load_loses_nothing_and_repeats_nothing(
    example_repository: Path, fleet_database: str, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    for name in ("simple", "ct_lesion_segmentation"):
        shutil.copytree(example_repository / name, repository / name)
    shared = tmp_path / "shared"
    exports = shared / "exports"
    imaging = tmp_path / "imaging.yaml"
    imaging.write_text(
        yaml.safe_dump(
            {
                "pipelines": {"ct-lesions": {"kind": "segmentation_3d", "model": "ct_lesion_segmentation"}},
                "routes": [{"name": "ct", "pipeline": "ct-lesions", "modality": "CT", "min_instances": 8}],
                "destinations": [{"name": "folder", "type": "folder", "path": str(exports)}],
            }
        )
    )
    Database(fleet_database).migrate()
    replicas = [
        Replica(
            f"replica-{i}",
            free_port(),
            tmp_path / f"replica-{i}" / "data",
            {
                "MEDSERVE_DATA_DIR": str(tmp_path / f"replica-{i}" / "data"),
                "MEDSERVE_DATABASE_URL": fleet_database,
                "MEDSERVE_REPLICA_ID": f"replica-{i}",
                "MEDSERVE_STORAGE_DIR": str(shared),
                "MEDSERVE_AUTH_DISABLED": "true",
                "MEDSERVE_DICOM_PORT": "-1",
                "MEDSERVE_IMAGING_CONFIG": str(imaging),
                "MEDSERVE_DICOM_QUIET_TIME_S": "1",
                "MEDSERVE_LEASE_TTL_S": "2",
                "MEDSERVE_REPLICA_HEARTBEAT_S": "0.5",
                "MEDSERVE_JOBS_POLL_S": "0.2",
                "MEDSERVE_CONSOLE_ENABLED": "false",
            },
            repository,
        )
        for i in range(REPLICAS)
    ]
    for replica in replicas:
        replica.data_dir.parent.mkdir(parents=True)
        replica.start()
    balancer_port = free_port()
    (tmp_path / "haproxy.cfg").write_text(_haproxy_config(balancer_port, replicas))
    haproxy = subprocess.Popen(
        [str(HAPROXY), "-f", str(tmp_path / "haproxy.cfg"), "-db"],
        stdout=(tmp_path / "haproxy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{balancer_port}"
    database = Database(fleet_database)
    try:
        for replica in replicas:
            replica.wait_ready()
        _write_table(tmp_path / "table.csv", JOB_ROWS)
        series = synthetic.write_study("CT", tmp_path / "ct", seed=11)
        with Load(base) as load, httpx.Client(base_url=base, timeout=60) as client:
            created = client.post("/jobs", content=_job_spec(tmp_path / "table.csv", tmp_path / "out.csv"))
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            running = _until(
                "the job running",
                lambda: (doc := client.get(f"/jobs/{job_id}").json())["chunks_done"] >= 3 and doc,
                60,
            )
            runner = str(running["runner"]).removeprefix("server:")  # type: ignore[index]
            for path in series:  # one STOW-RS request per instance: the balancer spreads them
                boundary = uuid.uuid4().hex
                part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                body = part + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
                reply = client.post(
                    "/dicomweb/studies",
                    content=body,
                    headers={
                        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
                    },
                )
                assert reply.status_code == 200, reply.text

            killed = next(r for r in replicas if r.name == runner)
            killed.kill()  # kill -9 the replica running the job, mid-chunk
            chunks_at_kill = client.get(f"/jobs/{job_id}").json()["chunks_done"]
            time.sleep(1.0)
            killed.start()
            killed.wait_ready()

            done = _until(
                "the job's end",
                lambda: (
                    (doc := client.get(f"/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and doc
                ),
                180,
            )
            assert done["state"] == "succeeded", done  # type: ignore[index]
            _until("the series' exports", lambda: _exports_sent(database), 180)
            cluster = subprocess.run(
                [sys.executable, "-m", "medserve", "cluster", "status", "--json"],
                env={**os.environ, **replicas[0].env},
                capture_output=True,
                text=True,
                timeout=60,
            )
        for replica in replicas:
            assert replica.stop() == 0, replica.output()
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.kill()
        haproxy.terminate()
        haproxy.wait(10)

    # every request answered, through the kill
    assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:5])
    assert len(load.acknowledged) > 20
    # the job: taken over from its last committed chunk; every row once
    assert 3 <= chunks_at_kill < JOB_ROWS // CHUNK
    ids = pa_csv.read_csv(tmp_path / "out.csv").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == JOB_ROWS
    with database.session() as session:
        chunk_rows = session.scalars(select(JobChunkRow.chunk).where(JobChunkRow.job_id == job_id)).all()
        export_rows = session.scalars(select(ExportRow)).all()
    assert sorted(chunk_rows) == list(range(JOB_ROWS // CHUNK))
    # every export sent, once (one successful send in the audit trail per export)
    assert export_rows and all(row.state == "sent" for row in export_rows)
    sends = Counter(
        record.request_id
        for chain in chains(database)
        for record in iter_records(database, chain=chain)
        if record.event == "export" and record.status == "ok"
    )
    assert sends == Counter({row.id: 1 for row in export_rows}), sends
    # the audit trail verifies across the three chains, with every acknowledged inference in it
    result = verify_audit(database)
    assert result.ok and result.chains == REPLICAS, format_verification(result)
    recorded = {
        record.request_id
        for chain in chains(database)
        for record in iter_records(database, chain=chain)
        if record.event == "inference"
    }
    missing = set(load.acknowledged) - recorded
    assert not missing, f"{len(missing)} acknowledged inferences have no audit record"
    # the registry saw all three
    listed = {r["id"]: r for r in json.loads(cluster.stdout)["replicas"]}
    assert set(listed) == {r.name for r in replicas} and all(r["state"] == "up" for r in listed.values())
    database.dispose()


def _exports_sent(database: Database) -> bool:
    with database.session() as session:
        rows = session.scalars(select(ExportRow.state)).all()
    return bool(rows) and all(state == "sent" for state in rows)
