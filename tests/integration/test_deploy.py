"""deploy/medserve.service runs the installed server as systemd would: its ExecStart, with its
environment and settings file, serves; its KillSignal stops it with exit 0 and a ``server.stop`` audit
record; a start that cannot succeed (a port in use) exits with the status the unit does not restart on.

The unit's paths are rewritten to this checkout and to free ports; everything else is the unit's own."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "medserve.service"
SETTINGS = ROOT / "deploy" / "medserve.yaml"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def _service_environment(settings: Path, data_dir: Path) -> dict[str, str]:
    """The unit's ``Environment=`` lines, with this test's settings file and data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERVE_")}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    assert env["MEDSERVE_CONFIG"] == "/etc/medserve/medserve.yaml"
    assert env["MEDSERVE_DATA_DIR"] == "/var/lib/medserve"
    env["MEDSERVE_CONFIG"] = str(settings)
    env["MEDSERVE_DATA_DIR"] = str(data_dir)
    return env


def _exec_start() -> list[str]:
    command = shlex.split(_unit()["Service"]["ExecStart"])
    assert command[0] == "/opt/medserve/.venv/bin/medserve", command
    return [sys.executable, "-m", "medserve", *command[1:]]


def _settings(tmp_path: Path, repository: Path) -> tuple[Path, int]:
    values = yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))
    assert values["repository"] == "/opt/medserve/model_repository"
    http_port = free_port()
    values.update(
        repository=str(repository),
        host="127.0.0.1",
        http_port=http_port,
        grpc_port=free_port(),
        dicom_port=-1,
    )
    path = tmp_path / "medserve.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path, http_port


def test_the_unit_serves_and_stops_cleanly(repository_copy: Path, tmp_path: Path) -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    assert service["ReadWritePaths"] == "/var/lib/medserve" == service["WorkingDirectory"]
    settings, http_port = _settings(tmp_path, repository_copy)
    data_dir = tmp_path / "data"
    env = _service_environment(settings, data_dir)
    log = tmp_path / "service.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            _exec_start(), cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        # A second start on the same ports fails the way the unit does not restart on (exit 2).
        second = subprocess.run(
            _exec_start(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == int(service["RestartPreventExitStatus"]), second.stderr
        assert "already in use" in second.stderr and len(second.stderr.strip().splitlines()) == 1, (
            second.stderr
        )

        process.send_signal(getattr(signal, service["KillSignal"]))
        assert process.wait(timeout=float(service["TimeoutStopSec"])) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    exported = subprocess.run(
        [sys.executable, "-m", "medserve", "audit", "export"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    assert '"server.stop"' in exported.stdout.strip().splitlines()[-1]
