"""The tensor description embedded in an archive (``medserve.json``), for engines whose files carry none.

A TorchScript file names no tensors; ``torch.jit.save``'s ``_extra_files`` (and ``torch.export.save``'s
``extra_files``) can carry this JSON beside the module. The model's configuration, when the caller
declares one (``medserve.runtimes.base.Declaration``), comes first.
"""

from __future__ import annotations

import json
from typing import Any

from medserve.runtimes.base import EngineTensor
from medserve.values.datatypes import DATATYPES
from medserve.values.errors import ModelLoadError

#: name of the tensor description embedded in TorchScript / torch.export archives (extra file)
METADATA_FILE = "medserve.json"


def metadata_json(inputs: list[EngineTensor], outputs: list[EngineTensor]) -> str:
    """The embedded description written beside a model (``medserve.json``)."""

    def rows(tensors: list[EngineTensor]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]

    return json.dumps({"inputs": rows(inputs), "outputs": rows(outputs)}, indent=1)


def parse_metadata(text: str | bytes, source: str) -> tuple[list[EngineTensor], list[EngineTensor]]:
    """Read an embedded ``medserve.json``; errors name ``source``."""
    try:
        raw = json.loads(text)
        result: list[list[EngineTensor]] = []
        for kind in ("inputs", "outputs"):
            tensors = []
            for row in raw[kind]:
                datatype = str(row["datatype"])
                if datatype not in DATATYPES:
                    raise ValueError(f"unknown datatype '{datatype}'")
                tensors.append(EngineTensor(str(row["name"]), datatype, tuple(int(d) for d in row["shape"])))
            result.append(tensors)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{source}: embedded {METADATA_FILE} is not valid: {exc}") from None
    return result[0], result[1]
