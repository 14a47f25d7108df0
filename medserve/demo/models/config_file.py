"""Writing an example model's ``config.yaml``: its configuration as YAML, lists of scalars on one line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medserve.demo.models._spec import ExampleModel


def write_config(path: Path, example: ExampleModel) -> None:
    """Write ``example``'s configuration as YAML to ``path``."""
    text = yaml.dump(
        _plain(example.config), Dumper=_ConfigDumper, sort_keys=False, width=100, allow_unicode=True
    )
    path.write_text(f"# {example.name}: written by medserve.demo.models\n{text}", encoding="utf-8")


def _represent_list(dumper: Any, data: list[object]) -> Any:
    """Lists of scalars (dims, labels, batch sizes) on one line; everything else in block style."""
    flow = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


# Built with type() so that mypy accepts it with or without the PyYAML stubs installed.
_ConfigDumper: Any = type("_ConfigDumper", (yaml.SafeDumper,), {})
_ConfigDumper.add_representer(list, _represent_list)


def _plain(value: object) -> object:
    """Mappings and sequences as plain dicts and lists, for ``yaml.safe_dump``."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
