"""``medserve simulate ward`` against a real server: every sample answered, deterioration detected."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import RunningServer


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
