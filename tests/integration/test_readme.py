"""Every command in README.md runs as written.

The code blocks are read from the README itself, so a README change that breaks a command fails here.
They run in order, from a working folder laid out as the quick start leaves the repository (``.venv``,
``model_repository`` with the example models, ``scripts``), against the server that the block marked
``readme-test: server`` starts. Shell state (``export``) carries from one block to the next. A block is
marked with an HTML comment on the line before its fence:

- ``<!-- readme-test: ci ... -->``: the quick start's two commands, which ``.ci/run`` runs as written;
- ``<!-- readme-test: suite ... -->``: a part of the test suite, which ``scripts/test.sh`` runs;
- ``<!-- readme-test: server ... -->``: started in the background and kept for the blocks after it;
- ``<!-- readme-test: serve-check ... -->``: started, waited for until ready, stopped with SIGTERM (exit 0).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<mark>[\w-]+)[^>]*-->\n)?```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S
)
PORTS = (8000, 8001, 11112, 9000, 9001, 11113)


@dataclass(frozen=True)
class Block:
    lang: str
    mark: str
    body: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    return [
        Block(m["lang"], m["mark"] or "", m["body"], text.count("\n", 0, m.start("body")) + 1)
        for m in FENCE.finditer(text)
    ]


def test_the_readme_has_the_two_quick_start_commands_and_a_plain_start() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    ci = [b for b in blocks if b.mark == "ci"]
    assert len(ci) == 1 and [line.split("#")[0].strip() for line in ci[0].body.splitlines()] == [
        "bash scripts/serve.sh",
        "bash scripts/test.sh",
    ]
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/serve.sh" in ci_script and "bash scripts/test.sh" in ci_script
    assert [b.mark for b in blocks].count("server") == 1
    for block in (b for b in blocks if b.mark == "suite"):
        command = shlex.split(block.body.split("#")[0])
        assert command[:3] == [".venv/bin/python", "-m", "pytest"], command
        assert all((ROOT / arg).is_dir() for arg in command[3:] if not arg.startswith("-")), command
    assert {b.lang for b in blocks} <= {"bash", "python"}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server did not become ready on {port}:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


@pytest.fixture()
def workdir(example_repository: Path, tmp_path: Path) -> Iterator[Path]:
    """A folder laid out like the repository after the quick start."""
    busy = [port for port in PORTS if not _port_free(port)]
    if busy:
        message = f"the README's ports {busy} are in use on this machine"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "scripts", "docs", "deploy"):
        (work / name).symlink_to(ROOT / name)
    (work / "model_repository").symlink_to(example_repository)
    yield work


def _environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERVE_")}
    env["HOME"] = str(work)  # nothing of the developer's own set-up leaks in
    return env


def test_every_readme_command_runs_as_written(workdir: Path) -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    env = _environment(workdir)
    state = workdir / ".readme-state.sh"
    state.write_text("set -eu\n")
    server: subprocess.Popen[bytes] | None = None
    log = workdir / "server.log"
    try:
        for block in blocks:
            where = f"README.md line {block.line}"
            if block.mark in ("ci", "suite"):
                continue
            if block.mark in ("server", "serve-check"):
                command = block.body.strip()
                handle = (workdir / f"serve-{block.line}.log").open("wb")
                process = subprocess.Popen(
                    shlex.split(command), cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT
                )
                port = int(re.search(r"--http-port (\d+)", command)[1]) if "--http-port" in command else 8000
                _wait_ready(port, process, workdir / f"serve-{block.line}.log")
                if block.mark == "server":
                    server, log = process, workdir / f"serve-{block.line}.log"
                else:
                    output = (workdir / f"serve-{block.line}.log").read_text()
                    assert _stop(process) == 0, f"{where}: {output}"
                continue
            assert server is not None, f"{where}: a command before the server is started"
            if block.lang == "python":
                script = f'source {state}\n.venv/bin/python - <<"PYTHON"\n{block.body}\nPYTHON\n'
            else:
                script = f"source {state}\n{block.body}\nexport -p > {state}.next\n"
            done = subprocess.run(
                ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, (
                f"{where}: exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
                f"\n--- server log\n{log.read_text(errors='replace')[-4000:]}"
            )
            if block.lang == "bash":
                state.write_text("set -eu\n" + (workdir / ".readme-state.sh.next").read_text())
        assert server is not None and server.poll() is None, log.read_text()
    finally:
        if server is not None:
            code = _stop(server)
            assert code == 0, f"the README's server stopped with {code}:\n{log.read_text(errors='replace')}"
