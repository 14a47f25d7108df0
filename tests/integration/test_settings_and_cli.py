"""Settings sources and their documentation; the ``medserve`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import start_server, stop_server

from medserve.settings import Settings, load_settings
from medserve.values.errors import InvalidConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`{name}`" in docs and f"`MEDSERVE_{name.upper()}`" in docs, name


def test_priority_file_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text("http_port: 9100\ngrpc_port: 9101\nhost: 0.0.0.0\n")
    monkeypatch.setenv("MEDSERVE_GRPC_PORT", "9201")
    settings = load_settings(path, host="127.0.0.2")
    assert (settings.http_port, settings.grpc_port, settings.host) == (9100, 9201, "127.0.0.2")


def test_bad_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text("http_prot: 1\n")
    with pytest.raises(InvalidConfig, match="http_prot"):
        load_settings(path)
    path.write_text("http_port: -5\n")
    with pytest.raises(InvalidConfig, match="http_port"):
        load_settings(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args], capture_output=True, text=True, timeout=300
    )


def test_models_command(repository_copy: Path) -> None:
    result = run_cli("models", "--repository", str(repository_copy))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "VERSION", "STATE", "SHA256"]
    row = next(line.split() for line in lines if line.startswith("simple_nobatch") and " 2 " in line)
    assert row[2] == "READY" and len(row[3]) == 64
    (repository_copy / "simple" / "config.yaml").write_text("max_batch_size: many\n")
    result = run_cli("models", "--repository", str(repository_copy), "--no-load")
    assert result.returncode == 1
    assert "INVALID" in result.stdout and "max_batch_size" in result.stdout


def test_examples_build_command(tmp_path: Path) -> None:
    result = run_cli("examples", "build", str(tmp_path / "repo"), "--models", "simple", "identity_bytes")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "simple" / "1" / "model.onnx").is_file()
    assert "simple" in result.stdout


def test_serve_refuses_missing_repository(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--repository", str(tmp_path / "absent"), "--http-port", "0", "--grpc-port", "-1"
    )
    assert result.returncode == 2
    assert "not a directory" in result.stderr


# --- one data dir, always named ------------------------------------------------------------------


def run_in(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``medserve ARGS`` run from ``folder`` with no MEDSERVE_ settings but ``env``."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MEDSERVE_") or k.startswith("MEDSERVE_TEST")
    }
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
        env={**clean, **(env or {})},
    )


def announced(data_dir: Path) -> str:
    return f"medserve: using data dir {data_dir}, database sqlite:///{data_dir / 'medserve.db'}"


STORE_COMMANDS = [
    ["tokens", "create", "--role", "admin"],
    ["tokens", "list"],
    ["tokens", "revoke", "abc"],
    ["certs", "grant", "ward-gateway", "--role", "viewer"],
    ["certs", "revoke", "ward-gateway"],
    ["audit", "verify"],
    ["audit", "export"],
    ["job", "list"],
    ["job", "status", "abc"],
    ["job", "run", "spec.yaml"],
    ["dicom", "deidentify", "in.dcm", "--out", "out"],
    ["placement", "--repository", "."],
]


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
def test_a_store_command_refuses_to_start_a_new_store(tmp_path: Path, args: list[str]) -> None:
    """Run from the wrong folder, a command used to create and use a new ./medserve_data silently."""
    result = run_in(tmp_path, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == announced(tmp_path / "medserve_data"), lines
    assert len(lines) == 2 and lines[1].startswith("medserve: error: no "), lines
    for needle in ("--data-dir", "MEDSERVE_DATA_DIR", "--config", "MEDSERVE_CONFIG", "--init"):
        assert needle in lines[1], needle
    assert not (tmp_path / "medserve_data").exists()


def test_init_creates_the_store_and_stdout_holds_only_the_token(tmp_path: Path) -> None:
    created = run_in(tmp_path, "tokens", "create", "--init", "--role", "admin", "--name", "first")
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.splitlines()) == 1 and created.stdout.startswith("msv_"), created.stdout
    assert created.stderr.splitlines()[0] == announced(tmp_path / "medserve_data")
    listed = run_in(tmp_path, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    assert created.stdout.split("_")[1] in listed.stdout and "first" in listed.stdout
    assert listed.stderr.splitlines() == [announced(tmp_path / "medserve_data")]


def test_the_settings_file_and_data_dir_are_found_by_flag_or_environment(tmp_path: Path) -> None:
    data = tmp_path / "server-data"
    settings = tmp_path / "medserve.yaml"
    settings.write_text(f"data_dir: {data}\n")
    made = run_in(tmp_path, "tokens", "create", "--init", "--role", "viewer", "--config", str(settings))
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args, env in (
        (["--config", str(settings)], {}),
        ([], {"MEDSERVE_CONFIG": str(settings)}),
        (["--data-dir", str(data)], {}),
        ([], {"MEDSERVE_DATA_DIR": str(data)}),
    ):
        listed = run_in(elsewhere, "tokens", "list", *args, env=env)
        assert listed.returncode == 0, (args, env, listed.stderr)
        assert listed.stderr.splitlines() == [announced(data)], listed.stderr
        assert "viewer" in listed.stdout
    assert not (elsewhere / "medserve_data").exists()
    missing = run_in(elsewhere, "tokens", "list", env={"MEDSERVE_CONFIG": str(tmp_path / "absent.yaml")})
    assert missing.returncode == 2 and "absent.yaml: cannot read settings" in missing.stderr


def test_commands_from_another_folder_use_the_servers_store(repository_copy: Path, tmp_path: Path) -> None:
    """A token made against the server's data dir is accepted (one made in a new store got 401), and
    ``audit verify`` reads the server's trail, not a one-record trail of its own."""
    server = start_server(repository_copy, tmp_path / "server.log", env={"MEDSERVE_AUTH_DISABLED": "false"})
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        refused = run_in(elsewhere, "tokens", "create", "--role", "viewer")
        assert refused.returncode == 2 and not (elsewhere / "medserve_data").exists()
        made = run_in(elsewhere, "tokens", "create", "--role", "viewer", "--data-dir", str(data))
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        reply = httpx.get(
            f"http://{server.http_url}/v2/models/simple",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        settings = tmp_path / "medserve.yaml"
        settings.write_text(f"data_dir: {data}\n")
        verified = run_in(elsewhere, "audit", "verify", env={"MEDSERVE_CONFIG": str(settings)})
        assert verified.returncode == 0, verified.stderr
        count = int(verified.stdout.split("intact: ")[1].split()[0])
        assert count >= 3, verified.stdout  # server.start, the models' loads, token.create, ...
    finally:
        stop_server(server)


def test_job_list_has_a_header_row(repository_copy: Path, tmp_path: Path) -> None:
    columns = [f"a{i}" for i in range(16)] + [f"b{i}" for i in range(16)]
    rows = [",".join(["id", *columns])] + [",".join([f"p{r}", *["0.5"] * 32]) for r in range(3)]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text(
        "workload: table\nsource: table.csv\nmodel: simple\nsink: {path: out.parquet}\noptions:\n"
        f"  inputs: {{INPUT0: [{', '.join(columns[:16])}], INPUT1: [{', '.join(columns[16:])}]}}\n"
    )
    empty = run_in(tmp_path, "job", "list", "--init")
    assert empty.returncode == 0 and empty.stdout == "" and "no jobs" in empty.stderr
    submitted = run_in(tmp_path, "job", "submit", "spec.yaml", "--repository", str(repository_copy))
    assert submitted.returncode == 0, submitted.stderr
    listed = run_in(tmp_path, "job", "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "WORKLOAD", "MODEL", "DONE+FAILED/TOTAL", "RATE"]
    assert row.split()[:4] == [submitted.stdout.strip(), "queued", "table", "simple"]
    assert row.index("queued") == header.index("STATE") and row.index("simple") == header.index("MODEL")
