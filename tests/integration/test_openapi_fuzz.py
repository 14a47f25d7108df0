"""The OpenAPI document a real server serves at /v2/openapi.json: every route of the running
application documented (console and imaging doors on), nothing documented that it does not mount, and a
seeded, bounded schemathesis run from it that gets no 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medserve.transport.openapi import OPERATIONS
from tests.conftest import RunningServer, start_server, stop_server

#: Left out of the fuzzing run: streams that never end (server-sent events), operations that change
#: which models are served or start work (load, unload, rollback, job submission; their refusals are
#: tested in test_repository_control.py and test_jobs.py), and STOW-RS, whose multipart/related body
#: schemathesis cannot write (the DICOMweb tests send real ones).
NOT_FUZZED = (
    "post_dicomweb_studies",
    "post_dicomweb_studies_study",
    "get_v2_alerts_stream",
    "get_console_events",
    "post_jobs",
    "post_v2_repository_models_model_load",
    "post_v2_repository_models_model_unload",
    "post_v2_repository_models_model_rollback",
)

#: 501 is medserve's documented answer to a protocol feature it does not offer (CUDA shared memory,
#: ``file:`` artifacts, setting ``log_file``): every other 5xx is a failure.
_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "501"]
"""


@pytest.fixture(scope="module")
def fuzzed_server(
    example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("openapi")
    repository = root / "repository"
    for name in ("simple", "identity_fp32"):
        shutil.copytree(example_repository / name, repository / name)
    running = start_server(repository, root / "server.log", env={"MEDSERVE_CONSOLE_ENABLED": "true"})
    yield running
    stop_server(running)


def test_the_served_document_lists_exactly_the_mounted_routes(fuzzed_server: RunningServer) -> None:
    answer = httpx.get(f"http://{fuzzed_server.http_url}/v2/openapi.json", timeout=10)
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"] == "3.1.0"
    served = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    marked = [
        (m, p) for p, item in document["paths"].items() for m, op in item.items() if op.get("x-undocumented")
    ]
    assert marked == [], f"routes without a documented schema: {marked}"
    assert served == set(OPERATIONS), (
        f"documented but not mounted: {sorted(set(OPERATIONS) - served)}; "
        f"mounted but not documented: {sorted(served - set(OPERATIONS))}"
    )


def test_schemathesis_finds_no_server_error(fuzzed_server: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_CONFIG)
    command = [
        str(Path(sys.executable).with_name("st")),
        f"--config-file={config}",
        "run",
        f"http://{fuzzed_server.http_url}/v2/openapi.json",
        "--checks=not_a_server_error",
        "--phases=examples,fuzzing",
        "--max-examples=4",
        "--seed=15",
        "--workers=1",
        "--no-shrink",
        "--request-timeout=20",
        "--suppress-health-check=all",
        f"--report-dir={tmp_path}",
    ]
    for operation_id in NOT_FUZZED:
        command.append(f"--exclude-operation-id={operation_id}")
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    fuzzed_server.assert_alive()
    assert run.returncode == 0, f"{run.stdout[:6000]}\n...\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counted is not None and counted.group(1) == counted.group(2), run.stdout[-3000:]
    assert int(counted.group(1)) >= 200, "the run must reach the operations, not stop early"
