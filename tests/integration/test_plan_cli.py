"""``medserve plan`` end to end: a model profiled with ``medserve profile`` into a store, an example
plan printed for the repository, the options sized from the stored profile, and bad plans refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def medserve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_plan_sizes_options_from_the_stored_profile(example_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(example_repository / "simple", repository / "simple")
    data_dir = tmp_path / "data"
    args = ["--repository", str(repository), "--seconds", "0.3", "--batch-sizes", "1", "4", "--init"]
    profiled = medserve(data_dir, "profile", "simple", "--runtimes", "onnxruntime", *args)
    assert profiled.returncode == 0, profiled.stderr

    example = medserve(data_dir, "plan", "--example", "--repository", str(repository))
    assert example.returncode == 0, example.stderr
    assert "model: simple" in example.stdout and "spec_sheet" in example.stdout
    plan = tmp_path / "plan.yaml"
    plan.write_text(example.stdout.replace("requests_per_second: 1", "requests_per_second: 20"))

    text = medserve(data_dir, "plan", str(plan), "--repository", str(repository))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].split()[:2] == ["servers", "needed"] and lines[1].split()[2:] == ["1", "1"]
    assert "cost per year, tariff 25%" in text.stdout and "discrete-event simulation" in text.stdout

    as_json = medserve(data_dir, "plan", str(plan), "--repository", str(repository), "--json")
    assert as_json.returncode == 0, as_json.stderr
    options = json.loads(as_json.stdout)["options"]
    measured, spec = options
    assert measured["basis"] == "measured" and spec["basis"] == "spec sheet"
    demand = measured["demands"][0]
    assert demand["model"] == "simple" and demand["met"] and demand["rate_per_s"] == pytest.approx(20)
    assert 0 < measured["peak_utilisation"]["cpu"] < 0.9
    assert spec["peak_utilisation"]["cuda"] < measured["peak_utilisation"]["cpu"]
    assert measured["energy_kwh_per_year"] > 0 and len(measured["cost_per_year"]) == 2


def test_a_bad_plan_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("workload:\n  - model: m\n    beds: 3\nservers:\n  - name: s\n    capex: 1\n")
    done = medserve(tmp_path / "data", "plan", str(plan), "--repository", str(tmp_path), "--init")
    assert done.returncode == 2
    assert "medserve: error: workload 'm': 'slo_p99_ms' is required" in done.stderr
