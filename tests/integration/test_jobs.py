"""Offline jobs: spec checks, chunked runs with failures, exactly-once resume after kill -9, a full
disk pausing a job, sinks, and the REST and CLI doors against a real server."""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server
from sqlalchemy.exc import SQLAlchemyError

from medserve.jobs import sinks
from medserve.jobs.prepare import prepare
from medserve.jobs.spec import load_spec, parse_spec
from medserve.jobs.standalone import run_standalone
from medserve.jobs.store import JobStore
from medserve.settings import load_settings
from medserve.store.database import Database
from medserve.values.errors import InvalidInput, ModelNotFound

COLUMNS_A = [f"a{i}" for i in range(16)]
COLUMNS_B = [f"b{i}" for i in range(16)]


def write_table(
    path: Path, rows: int, *, bad: dict[int, tuple[int, str]] | None = None, seed: int = 0
) -> np.ndarray:
    """A CSV of ``rows`` rows (id, a0..a15, b0..b15); ``bad`` puts a text value in row -> (column, text)."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=(rows, 32)), 4)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *COLUMNS_A, *COLUMNS_B])
        for r in range(rows):
            row: list[object] = [f"p{r}", *values[r]]
            if bad and r in bad:
                column, text = bad[r]
                row[1 + column] = text
            writer.writerow(row)
    return values


def spec_text(source: str, sink: str, *, chunk_size: int = 100, batch_size: int | None = None) -> str:
    lines = [
        "workload: table",
        f"source: {source}",
        "model: simple",
        f"sink: {{path: {sink}}}",
        f"chunk_size: {chunk_size}",
        "options:",
        f"  inputs: {{INPUT0: [{', '.join(COLUMNS_A)}], INPUT1: [{', '.join(COLUMNS_B)}]}}",
        "  keep: [id]",
    ]
    if batch_size:
        lines.append(f"batch_size: {batch_size}")
    return "\n".join(lines) + "\n"


def settings_for(tmp_path: Path, repository: Path, **extra: object):  # type: ignore[no-untyped-def]
    return load_settings(None, data_dir=tmp_path / "data", repository=repository, **extra)


# -- specs ---------------------------------------------------------------------------------------


def test_spec_paths_resolve_against_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(spec_text("in/table.csv", "out/result.parquet"))
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.source == (tmp_path / "in" / "table.csv").resolve()
    assert spec.sink.path == (tmp_path / "out" / "result.parquet").resolve()
    assert spec.sink.resolved_format() == "parquet"
    assert spec.digest() == load_spec(tmp_path / "spec.yaml").digest()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"source": "x.csv", "sink": {"path": "y.csv"}}, "workload: Field required"),
        ({"workload": "table", "source": "x.csv", "sink": {"path": "y.csv"}, "chunk_size": 0}, "chunk_size"),
        ({"workload": "table", "source": "x.csv", "sink": {"path": "y.csv"}, "colour": 1}, "colour"),
    ],
)
def test_invalid_specs_name_the_field(document: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_spec(document)


def test_prepare_refuses_what_cannot_run(tmp_path: Path) -> None:
    write_table(tmp_path / "table.csv", 3)

    def exists(model: str) -> None:
        if model != "simple":
            raise ModelNotFound(f"unknown model '{model}'")

    def spec(**changes: object):  # type: ignore[no-untyped-def]
        document = {
            "workload": "table",
            "source": str(tmp_path / "table.csv"),
            "model": "simple",
            "sink": {"path": str(tmp_path / "out.parquet")},
            "options": {"inputs": {"INPUT0": COLUMNS_A, "INPUT1": COLUMNS_B}},
        }
        document.update(changes)
        return parse_spec(document)

    with pytest.raises(InvalidInput, match="unknown workload 'nope'"):
        prepare(spec(workload="nope"), exists)
    with pytest.raises(InvalidInput, match="does not exist"):
        prepare(spec(source=str(tmp_path / "missing.csv")), exists)
    with pytest.raises(InvalidInput, match="missing column"):
        prepare(spec(options={"inputs": {"INPUT0": ["a0", "zz"]}}), exists)
    with pytest.raises(InvalidInput, match="unknown option"):
        prepare(spec(options={"inputs": {"INPUT0": ["a0"]}, "colour": "red"}), exists)
    with pytest.raises(InvalidInput, match="cannot write sink format 'vcf'"):
        prepare(spec(sink={"path": str(tmp_path / "out.vcf")}), exists)
    with pytest.raises(InvalidInput, match="no default ranking"):
        prepare(spec(sink={"path": str(tmp_path / "hits.csv"), "format": "hits"}), exists)
    with pytest.raises(ModelNotFound):
        prepare(spec(model="nope"), exists)
    checked, _ = prepare(spec(), exists)
    assert checked.model == "simple"


# -- running -------------------------------------------------------------------------------------


def test_standalone_job_scores_every_row_once_and_records_failures(
    example_repository: Path, tmp_path: Path
) -> None:
    values = write_table(tmp_path / "table.csv", 1050, bad={7: (3, "x"), 640: (20, "")})
    (tmp_path / "spec.yaml").write_text(spec_text("table.csv", "out/sums.parquet", chunk_size=100))
    settings = settings_for(tmp_path, example_repository)
    out = io.StringIO()
    job_id, state = run_standalone(
        settings, load_spec(tmp_path / "spec.yaml"), out=out, install_signals=False
    )
    assert state == "succeeded", out.getvalue()
    table = pq.read_table(tmp_path / "out" / "sums.parquet")
    assert table["index"].to_pylist() == [i for i in range(1050) if i not in (7, 640)]
    kept = np.array(table["index"].to_pylist())
    sums = np.stack([table[f"OUTPUT0_{k}"].to_numpy() for k in range(16)], axis=1)
    differences = np.stack([table[f"OUTPUT1_{k}"].to_numpy() for k in range(16)], axis=1)
    np.testing.assert_allclose(sums, values[kept, :16] + values[kept, 16:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(differences, values[kept, :16] - values[kept, 16:], rtol=1e-5, atol=1e-5)
    assert table["id"].to_pylist()[:3] == ["p0", "p1", "p2"]
    failures = (tmp_path / "out" / "sums.parquet.failures.csv").read_text().splitlines()
    assert failures == [
        "index,locator,reason",
        "7,row 8,column 'a3' is not a number: 'x'",
        "640,row 641,column 'b4' is empty",
    ]
    store = JobStore(Database(f"sqlite:///{tmp_path / 'data' / 'medserve.db'}"))
    status = store.get(job_id)
    assert (status.items_done, status.items_failed, status.items_total, status.chunks_done) == (
        1048,
        2,
        1050,
        11,
    )
    assert not (tmp_path / "data" / "jobs" / job_id / "parts").exists()  # parts go once the sink is written
    assert "succeeded: 1048 scored, 2 failed" in out.getvalue()


def test_hits_sink_keeps_the_top_rows_in_rank_order(example_repository: Path, tmp_path: Path) -> None:
    values = write_table(tmp_path / "table.csv", 500)
    text = spec_text("table.csv", "hits.csv", chunk_size=64).replace(
        "sink: {path: hits.csv}", "sink: {path: hits.csv, format: hits, top_k: 10, rank_by: OUTPUT0_0}"
    )
    (tmp_path / "spec.yaml").write_text(text)
    _, state = run_standalone(
        settings_for(tmp_path, example_repository), load_spec(tmp_path / "spec.yaml"), out=io.StringIO(),
        install_signals=False,
    )  # fmt: skip
    assert state == "succeeded"
    hits = pa_csv.read_csv(tmp_path / "hits.csv")
    expected = np.argsort(-(values[:, 0] + values[:, 16]), kind="stable")[:10]
    assert hits["rank"].to_pylist() == list(range(1, 11))
    assert hits["index"].to_pylist() == expected.tolist()


def test_a_full_disk_pauses_the_job_until_there_is_room(
    example_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table(tmp_path / "table.csv", 300)
    (tmp_path / "spec.yaml").write_text(spec_text("table.csv", "out.parquet", chunk_size=100))
    real_write = sinks.write_part
    refusals = {"left": 3}
    states: list[str] = []

    def full_disk(path: Path, table: object) -> None:
        if path.name.endswith("00000001.parquet") and refusals["left"]:
            refusals["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, table)  # type: ignore[arg-type]

    monkeypatch.setattr(sinks, "write_part", full_disk)
    settings = settings_for(tmp_path, example_repository, jobs_retry_s=0.05)
    store = JobStore(Database(f"sqlite:///{tmp_path / 'data' / 'medserve.db'}"))
    import medserve.jobs.standalone as standalone

    real_bar = standalone.ProgressBar

    class Watching(real_bar):  # type: ignore[misc, valid-type]
        def __call__(self, progress):  # type: ignore[no-untyped-def]
            states.append(progress.state)
            if progress.state == "paused":
                states.append("error: " + store.get(progress.job_id).error)
            super().__call__(progress)

    monkeypatch.setattr(standalone, "ProgressBar", Watching)
    _, state = run_standalone(
        settings, load_spec(tmp_path / "spec.yaml"), out=io.StringIO(), install_signals=False
    )
    assert state == "succeeded"
    assert refusals["left"] == 0
    assert "paused" in states
    assert any("no space left while writing results of chunk 1" in s for s in states)
    assert pq.read_table(tmp_path / "out.parquet")["index"].to_pylist() == list(range(300))


def _job_subprocess(spec: Path, data: Path, repository: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(data), "MEDSERVE_REPOSITORY": str(repository)}
    return subprocess.Popen(
        [sys.executable, "-m", "medserve", "job", "run", "--init", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_output(
    example_repository: Path, tmp_path: Path
) -> None:
    rows = 20000
    write_table(tmp_path / "table.csv", rows, bad={1234: (5, "n/a"), 17000: (30, "")})
    (tmp_path / "killed.yaml").write_text(
        spec_text("table.csv", "killed.parquet", chunk_size=200, batch_size=4)
    )
    (tmp_path / "whole.yaml").write_text(
        spec_text("table.csv", "whole.parquet", chunk_size=200, batch_size=4)
    )
    data = tmp_path / "data"
    process = _job_subprocess(tmp_path / "killed.yaml", data, example_repository)
    store: JobStore | None = None
    committed_at_kill = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (data / "medserve.db").exists():
            store = store or JobStore(Database(f"sqlite:///{data / 'medserve.db'}"))
            try:
                jobs = store.recent(5)
            except SQLAlchemyError:  # the subprocess is still creating the tables
                jobs = []
            if jobs and jobs[0].chunks_done >= 5:
                process.send_signal(signal.SIGKILL)
                process.wait()
                committed_at_kill = store.get(jobs[0].id).chunks_done
                break
        time.sleep(0.02)
    output = process.stdout.read().decode() if process.stdout else ""
    assert process.returncode == -signal.SIGKILL, f"the job was not killed mid-run:\n{output}"
    assert store is not None
    job = store.recent(1)[0]
    assert job.state == "running" and 5 <= committed_at_kill < rows // 200

    resumed = _job_subprocess(tmp_path / "killed.yaml", data, example_repository)
    resumed_output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, resumed_output
    assert f"resuming job {job.id}" in resumed_output
    whole = _job_subprocess(tmp_path / "whole.yaml", data, example_repository)
    assert whole.wait(300) == 0

    killed_table = pq.read_table(tmp_path / "killed.parquet")
    whole_table = pq.read_table(tmp_path / "whole.parquet")
    assert killed_table.equals(whole_table)
    indices = killed_table["index"].to_pylist()
    assert len(indices) == len(set(indices)) == rows - 2
    final = store.get(job.id)
    assert (final.state, final.items_done, final.items_failed, final.chunks_done) == (
        "succeeded",
        rows - 2,
        2,
        100,
    )
    assert (tmp_path / "killed.parquet.failures.csv").read_text() == (
        tmp_path / "whole.parquet.failures.csv"
    ).read_text()


# -- the doors ---------------------------------------------------------------------------------


@pytest.fixture()
def job_server(example_repository: Path, tmp_path: Path) -> RunningServer:
    running = start_server(example_repository, tmp_path / "server.log", env={"MEDSERVE_JOBS_POLL_S": "0.2"})
    yield running  # type: ignore[misc]
    stop_server(running)


def _wait(
    client: httpx.Client, job_id: str, states: tuple[str, ...], timeout_s: float = 120
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        document = client.get(f"/jobs/{job_id}").json()
        if document["state"] in states:
            return document  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {document}")


def test_rest_api_submit_watch_results_failures_cancel(job_server: RunningServer, tmp_path: Path) -> None:
    write_table(tmp_path / "table.csv", 2000, bad={10: (0, "?")})
    base = f"http://{job_server.http_url}"
    with httpx.Client(base_url=base, timeout=30) as client:
        spec = spec_text(str(tmp_path / "table.csv"), str(tmp_path / "out" / "r.csv"), chunk_size=500)
        created = client.post("/jobs", content=spec)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        early = client.get(f"/jobs/{job_id}/results")
        if early.status_code != 200:
            assert early.status_code == 409 and "results come when it has succeeded" in early.json()["error"]
        done = _wait(client, job_id, ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert (done["items_done"], done["items_failed"], done["items_total"]) == (1999, 1, 2000)
        assert done["runner"].startswith("server:")
        results = client.get(f"/jobs/{job_id}/results")
        assert results.status_code == 200
        assert results.text.splitlines()[0].startswith('"index","id","OUTPUT0_0"')
        assert len(results.text.splitlines()) == 2000
        failures = client.get(f"/jobs/{job_id}/failures").json()["failures"]
        assert failures == [{"index": 10, "locator": "row 11", "reason": "column 'a0' is not a number: '?'"}]
        assert job_id in [j["id"] for j in client.get("/jobs").json()["jobs"]]

        # Refused at submit, with the reason; the server stays up and keeps the other jobs.
        missing = client.post("/jobs", content=spec.replace("table.csv", "nowhere.csv"))
        assert missing.status_code == 400 and "does not exist" in missing.json()["error"]
        relative = client.post("/jobs", content=spec_text("table.csv", "r.csv"))
        assert relative.status_code == 400 and "absolute" in relative.json()["error"]
        unknown_model = client.post("/jobs", content=spec.replace("model: simple", "model: nope"))
        assert unknown_model.status_code == 404
        broken = client.post("/jobs", content="workload: [unclosed")
        assert broken.status_code == 400 and "not valid YAML" in broken.json()["error"]
        assert client.get("/jobs/0000").status_code == 404

        # A long job cancelled mid-run stops after its chunk.
        write_table(tmp_path / "big.csv", 40000)
        long_spec = spec_text(
            str(tmp_path / "big.csv"), str(tmp_path / "big.parquet"), chunk_size=100, batch_size=2
        )
        long_id = client.post("/jobs", content=long_spec).json()["id"]
        _wait(client, long_id, ("running",))
        cancelled = client.post(f"/jobs/{long_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
        final = _wait(client, long_id, ("cancelled", "succeeded"))
        assert final["state"] == "cancelled"
        assert not (tmp_path / "big.parquet").exists()
        assert client.post(f"/jobs/{long_id}/cancel").status_code == 409
    job_server.assert_alive()


def test_cli_submit_is_run_by_the_server_and_status_reads_it(
    job_server: RunningServer, tmp_path: Path
) -> None:
    write_table(tmp_path / "table.csv", 300)
    (tmp_path / "spec.yaml").write_text(spec_text("table.csv", "cli.parquet"))
    env = {
        **os.environ,
        "MEDSERVE_DATA_DIR": str(job_server.log.parent / "data"),
        "MEDSERVE_REPOSITORY": str(job_server.repository),
    }

    def medserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "medserve", "job", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    submitted = medserve("submit", str(tmp_path / "spec.yaml"))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = medserve("status", job_id)
        if "succeeded" in status.stdout:
            break
        time.sleep(0.2)
    assert "state: succeeded" in status.stdout, status.stdout + status.stderr
    assert "items_done: 300" in status.stdout
    results = medserve("results", job_id)
    assert results.stdout.strip() == str((tmp_path / "cli.parquet").resolve())
    assert pq.read_table(tmp_path / "cli.parquet").num_rows == 300
    bad = medserve("submit", str(tmp_path / "nothing.yaml"))
    assert bad.returncode == 2 and "cannot read job spec" in bad.stderr


def test_a_job_in_a_server_killed_with_9_resumes_when_the_server_restarts(
    example_repository: Path, tmp_path: Path
) -> None:
    rows = 20000
    write_table(tmp_path / "table.csv", rows)
    env = {"MEDSERVE_JOBS_POLL_S": "0.2"}
    server = start_server(example_repository, tmp_path / "server.log", env=env)
    spec = spec_text(str(tmp_path / "table.csv"), str(tmp_path / "out.parquet"), chunk_size=200, batch_size=4)
    try:
        with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
            job_id = client.post("/jobs", content=spec).json()["id"]
            deadline = time.monotonic() + 120
            while client.get(f"/jobs/{job_id}").json()["chunks_done"] < 5:
                assert time.monotonic() < deadline, "the job made no progress"
                time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        stop_server(server)
    store = JobStore(Database(f"sqlite:///{tmp_path / 'data' / 'medserve.db'}"))
    interrupted = store.get(job_id)
    assert interrupted.state == "running" and 5 <= interrupted.chunks_done < rows // 200

    restarted = start_server(example_repository, tmp_path / "server-2.log", env=env)
    try:
        with httpx.Client(base_url=f"http://{restarted.http_url}", timeout=30) as client:
            final = _wait(client, job_id, ("succeeded", "failed"), timeout_s=300)
    finally:
        stop_server(restarted)
    assert final["state"] == "succeeded", final
    # The restarted server gives up the leases its killed predecessor held, and the job resumes.
    assert re.search(r"released \d+ lease\(s\) held before a restart", restarted.output())
    indices = pq.read_table(tmp_path / "out.parquet")["index"].to_pylist()
    assert indices == list(range(rows))
