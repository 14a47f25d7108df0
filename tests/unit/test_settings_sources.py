"""A bad setting is named by where it came from: the flag, the environment variable or the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medserve.settings import load_settings
from medserve.values.errors import InvalidConfig


def refusal(*args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidConfig) as raised:
        load_settings(*args, **kwargs)  # type: ignore[arg-type]
    return str(raised.value)


@pytest.mark.parametrize(("value", "reason"), [("abc", "valid integer"), ("70000", "less than or equal")])
def test_an_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv("MEDSERVE_HTTP_PORT", value)
    message = refusal()
    assert message.startswith(f"MEDSERVE_HTTP_PORT='{value}': "), message
    assert reason in message


def test_a_variable_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSERVE_PRIORITY_CLASSES", "stat,urgent")
    assert refusal() == "MEDSERVE_PRIORITY_CLASSES: not valid JSON (this setting takes a JSON value)"


def test_an_invalid_flag_is_named() -> None:
    assert refusal(http_port=70000).startswith("--http-port 70000: ")


def test_an_unknown_key_in_the_file_gets_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text("http_prot: 9000\npriority_classes:\n  - {name: stat, prioity: 1}\n")
    message = refusal(path)
    assert f"{path}: unknown key 'http_prot' — did you mean 'http_port'?" in message, message
    assert "unknown key 'prioity' in priority_classes.0 — did you mean 'priority'?" in message, message
    path.write_text("grpc_port: -7\n")
    assert refusal(path).startswith(f"{path}: grpc_port: "), refusal(path)
