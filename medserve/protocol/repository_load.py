"""The parameters of a repository load request (Triton's repository extension), from either door.

``config``: the model's configuration as a JSON string, applied over its config.yaml for this load.
``file:<version>/<name>`` parameters carry artifact bytes for a configuration that names new files;
medserve loads artifacts only from its repository, whose files are digested and checked against the
trust policy, so these are refused with a message saying so.
"""

from __future__ import annotations

from typing import Any

import orjson

from medserve.values.errors import InvalidInput, Unsupported


def load_config_override(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``config`` override of a load request as a JSON object, or None when there is none."""
    if parameters is None:
        raise InvalidInput("load request 'parameters' must be an object")
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise Unsupported(
            f"load with artifact files ({', '.join(files)[:120]}) is not supported: medserve loads "
            "artifacts from its repository only (digested and checked); put the file in a version "
            "folder and load again"
        )
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise InvalidInput(f"unknown load parameter(s): {', '.join(unknown)[:120]} (known: config)")
    raw = parameters.get("config")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise InvalidInput("load parameter 'config' must be the model configuration as a JSON string")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"load parameter 'config' is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("load parameter 'config' must be a JSON object")
    return doc
