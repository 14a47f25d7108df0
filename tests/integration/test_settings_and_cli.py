"""Settings sources and their documentation; the ``medserve`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
