"""The command line's parser: a did-you-mean for typos, help for every option, and ``serve --help``
naming every environment variable and the settings file."""

from __future__ import annotations

import argparse

import pytest

from medserve.cli import main
from medserve.cli.main import build_parser
from medserve.settings import Settings


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_command_gets_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    error = usage_error(capsys, "tokns", "list")
    assert "invalid choice: 'tokns' — did you mean 'tokens'?" in error, error
    error = usage_error(capsys, "tokens", "lst")
    assert "invalid choice: 'lst' — did you mean 'list'?" in error, error
    assert "usage: medserve tokens" in error  # the usage of the command being parsed


def test_an_unknown_choice_gets_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    error = usage_error(capsys, "tokens", "create", "--role", "admn")
    assert "invalid choice: 'admn' — did you mean 'admin'?" in error, error


def test_an_unknown_option_gets_the_nearest_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    error = usage_error(capsys, "serve", "--http-prot", "9000")
    assert "unrecognized arguments: --http-prot 9000 ('--http-prot': did you mean '--http-port'?)" in error
    assert error.splitlines()[0].startswith("usage: medserve serve"), error
    error = usage_error(capsys, "job", "list", "--limt=3")
    assert "'--limt': did you mean '--limit'?" in error, error
    error = usage_error(capsys, "audit", "verify", "--zzz")
    assert "unrecognized arguments: --zzz" in error and "did you mean" not in error, error


def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _parsers(child, f"{path} {name}")
    return found


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _parsers(build_parser(), "medserve")
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction)
        and not action.help
    ]
    assert missing == []


def test_serve_help_names_every_variable_and_the_settings_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"MEDSERVE_{name.upper()}" in text, name
    for needle in ("MEDSERVE_CONFIG", "--config FILE", "docs/CONFIGURATION.md", "--dicom-port", "--data-dir"):
        assert needle in text, needle
    assert "MEDSERVE_HTTP_PORT" in text.split("environment variables", 1)[1]
