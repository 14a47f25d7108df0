"""``medserve simulate ward`` against a real server: every sample answered, deterioration detected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import RunningServer, start_server, stop_server


def test_simulate_ward_end_to_end(server: RunningServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medserve",
            "simulate",
            "ward",
            "--beds",
            "5",
            "--minutes",
            "2",
            "--speed",
            "20",
            "--deteriorating",
            "0.4",
            "--seed",
            "3",
            "--url",
            server.grpc_url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples_sent"] == 5 * 120 and report["replies"] == report["samples_sent"]
    assert report["errors"] == 0 and report["lost"] == 0
    assert report["detected"] >= 1 and sum(report["alerts_by_kind"].values()) >= 1


def test_a_token_without_a_grant_for_patient_monitor_ends_the_run_at_once(
    example_repository: Path, tmp_path: Path
) -> None:
    """Measured before: a token granted other models only collected 6,000 PERMISSION_DENIED replies
    over two minutes and exited 0."""
    server = start_server(
        example_repository, tmp_path / "server.log", env={"MEDSERVE_AUTH_DISABLED": "false"}
    )
    try:
        env = {**os.environ, "MEDSERVE_DATA_DIR": str(tmp_path / "data")}
        created = subprocess.run(
            [sys.executable, "-m", "medserve", "tokens", "create", "--role", "service", "--models", "simple"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "medserve", "simulate", "ward", "--beds", "5", "--minutes", "2"]
            + ["--url", server.grpc_url, "--token", token],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        assert "no grant for patient_monitor" in result.stderr, result.stderr
        assert time.monotonic() - started < 60  # refused before streaming two simulated minutes
    finally:
        stop_server(server)
