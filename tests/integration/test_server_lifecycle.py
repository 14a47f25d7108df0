"""Start and stop: a refused start is one line and exit code 2; on SIGTERM the server stops taking
work, finishes what it accepted, unloads every model, records ``server.stop`` and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import free_port, start_server, stop_server


def test_sigterm_drains_in_flight_requests(example_repository: Path, tmp_path: Path) -> None:
    running = start_server(example_repository, tmp_path / "server.log")

    def one(seed: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(running.http_url, network_timeout=120)
        tensor = httpclient.InferInput("image", [4, 1, 224, 224], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(seed).random((4, 1, 224, 224), dtype=np.float32))
        result: np.ndarray = client.infer("chest_xray_classifier", [tensor]).as_numpy("probabilities")
        return result

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(one, seed) for seed in range(3)]
            time.sleep(0.5)  # requests are in the server: queued or running
            running.process.send_signal(signal.SIGTERM)
            outputs = [f.result(timeout=120) for f in futures]
        assert all(o.shape == (4, 14) for o in outputs)
        assert running.process.wait(60) == 0, running.output()
        assert "medserve stopped" in running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()


# --- a clean stop, whatever happened before ----------------------------------------------------------


def test_sigterm_after_load_unload_failed_load_and_folder_removal_exits_0(
    repository_copy: Path, tmp_path: Path
) -> None:
    """Load a model whose config has a typo (400), delete its folder, unload and reload another,
    delete the folder of a loaded one: SIGTERM still unloads every model, records ``server.stop`` and
    exits 0 (it used to exit 2 with "model 'x' is not in the repository", nothing unloaded)."""
    served = sorted(path.name for path in repository_copy.iterdir() if path.is_dir())
    running = start_server(repository_copy, tmp_path / "server.log")
    base = f"http://{running.http_url}/v2/repository/models"
    try:
        typo = repository_copy / "typo_model"
        shutil.copytree(repository_copy / "simple", typo)
        config = typo / "config.yaml"
        config.write_text(config.read_text().replace("max_batch_size:", "max_batch_sise:"))
        refused = httpx.post(f"{base}/typo_model/load", timeout=60)
        assert refused.status_code == 400, refused.text
        assert "did you mean 'max_batch_size'?" in refused.json()["error"]
        shutil.rmtree(typo)
        assert httpx.post(f"{base}/simple/unload", timeout=60).status_code == 200
        assert httpx.post(f"{base}/simple/load", timeout=60).status_code == 200
        shutil.rmtree(repository_copy / "identity_fp32")  # loaded, and now gone from the disk
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0, running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()
    output = running.output()
    assert "is not in the repository" not in output
    assert "failed" not in output.split("medserve shutting down", 1)[1], output
    for name in served:
        assert f"model {name} unloaded" in output, name
    exported = run_cli("audit", "export", "--data-dir", str(tmp_path / "data"))
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line)["event"] for line in exported.stdout.splitlines()]
    assert events[0] == "server.start" and events[-1] == "server.stop", events


# --- clean failures at start: one line, exit code 2 --------------------------------------------------

FLAGS = {"HTTP": "--http-port", "gRPC": "--grpc-port", "DICOM": "--dicom-port"}


def run_cli(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def serve_and_fail(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> str:
    """Start ``medserve serve`` expecting it to refuse; return its one line of standard error."""
    repository = tmp_path / "repository"
    repository.mkdir(exist_ok=True)
    # free ports for the doors neither the arguments nor the environment place
    ports = {
        flag: str(free_port())
        for door, flag in FLAGS.items()
        if flag not in args and f"MEDSERVE_{door.upper()}_PORT" not in (env or {})
    }
    defaults = [item for flag, port in ports.items() for item in (flag, port)]
    options = ["--repository", str(repository), *defaults, *args]
    if "--data-dir" not in args:
        options += ["--data-dir", str(tmp_path / "data")]
    result = run_cli("serve", *options, env={"MEDSERVE_AUTH_DISABLED": "true", **(env or {})}, prefix=prefix)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medserve: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("door", ["HTTP", "gRPC", "DICOM"])
def test_a_port_in_use_is_named_with_its_door_and_flag(door: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_and_fail(tmp_path, FLAGS[door], str(port))
    variable = f"MEDSERVE_{door.upper()}_PORT"
    assert f"{door} port {port} on 127.0.0.1 is already in use" in line, line
    assert FLAGS[door] in line and variable in line, line


def test_the_same_port_for_two_doors_is_refused(tmp_path: Path) -> None:
    port = str(free_port())
    line = serve_and_fail(tmp_path, "--http-port", port, "--grpc-port", port)
    assert f"HTTP and gRPC are both set to port {port}" in line, line


def _unprivileged() -> tuple[str, ...]:
    """A prefix that runs a command without the privileges to bind ports below 1024 or to write where
    its permissions do not allow (root keeps neither with setpriv's bounding set dropped)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot take the privileges away")
    return ("setpriv", "--bounding-set=-net_bind_service,-dac_override,-dac_read_search", "--")


def test_a_privileged_port_is_permission_denied_in_one_line(tmp_path: Path) -> None:
    line = serve_and_fail(tmp_path, "--http-port", "81", prefix=_unprivileged())
    assert "HTTP port 81 on 127.0.0.1 cannot be opened: permission denied" in line, line
    assert "--http-port" in line and "MEDSERVE_HTTP_PORT" in line, line


def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    line = serve_and_fail(tmp_path, "--data-dir", str(locked / "data"), prefix=_unprivileged())
    assert f"data dir {locked / 'data'} cannot be written: Permission denied" in line, line
    assert "--data-dir" in line and "MEDSERVE_DATA_DIR" in line, line
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    line = serve_and_fail(tmp_path, "--data-dir", str(a_file))
    assert "exists and is not a folder" in line, line


def test_a_bad_certificate_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    env = {
        "MEDSERVE_TLS_CERTFILE": str(tmp_path / "cert.pem"),
        "MEDSERVE_TLS_KEYFILE": str(tmp_path / "key.pem"),
    }
    line = serve_and_fail(tmp_path, env=env)
    assert f"TLS certificate {tmp_path / 'cert.pem'} and key {tmp_path / 'key.pem'} do not load" in line, line


@pytest.mark.parametrize("value", ["abc", "70000"])
def test_an_invalid_port_variable_is_named(value: str, tmp_path: Path) -> None:
    line = serve_and_fail(tmp_path, env={"MEDSERVE_HTTP_PORT": value})
    assert f"MEDSERVE_HTTP_PORT='{value}'" in line, line


def test_the_log_is_quiet_and_says_which_store(example_repository: Path, tmp_path: Path) -> None:
    """No library INFO chatter (alembic at every start), no install banner; the data dir is named."""
    running = start_server(example_repository, tmp_path / "server.log", "--log-level", "info")
    stop_server(running)
    output = running.output()
    assert running.process.returncode == 0, output
    assert f"using data dir {tmp_path / 'data'}, database sqlite:///" in output
    loggers = {line.split()[3].rstrip(":") for line in output.splitlines() if " INFO " in line}
    assert all(name == "medserve" or name.startswith("medserve.") for name in loggers), loggers
    for banner in ("setuptools", "editable", "Successfully installed", "Task was destroyed"):
        assert banner not in output, banner
