"""What the model's ``config.yaml`` declares, for engines whose artifacts do not name their tensors.

The ``Runtime`` interface hands an engine only its artifact and ``runtime_options``. A TorchScript file
carries no tensor names, datatypes or shapes, and the OpenVINO engine needs to know whether the first
dimension is a batch dimension, so these engines read the configuration of the repository model the
artifact belongs to (``<model>/<version>/<artifact>`` with ``<model>/config.yaml``). Outside a
repository (an artifact loaded directly) there is none and the engines rely on the artifact alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medserve.runtimes.base import EngineTensor
from medserve.values.datatypes import DATATYPES
from medserve.values.errors import MedserveError, ModelLoadError

log = logging.getLogger(__name__)

#: name of the tensor description embedded in TorchScript / torch.export archives (extra file)
METADATA_FILE = "medserve.json"


@dataclass(frozen=True, slots=True)
class Declared:
    """A model's declared tensors (full shapes: a batching model's start with -1) and batch size."""

    max_batch_size: int
    inputs: list[EngineTensor] | None
    outputs: list[EngineTensor] | None
    source: str


def repository_declaration(artifact: Path) -> Declared | None:
    """The declaration of the repository model ``artifact`` is a version of; None outside a repository.

    A ``config.yaml`` that does not validate yields None: the registry reports that error itself.
    """
    from medserve.repository.config import load_model_config

    resolved = artifact.resolve()
    for version_dir in list(resolved.parents)[:4]:
        model_dir = version_dir.parent
        if not version_dir.name.isdigit() or not (model_dir / "config.yaml").is_file():
            continue
        try:
            config = load_model_config(model_dir)
        except (MedserveError, OSError) as exc:
            log.debug("ignoring %s/config.yaml: %s", model_dir, exc)
            return None
        if (version_dir / config.artifact).resolve() != resolved:
            continue
        prefix = (-1,) if config.max_batch_size > 0 else ()
        return Declared(
            config.max_batch_size,
            _tensors(config.inputs, prefix),
            _tensors(config.outputs, prefix),
            str(model_dir / "config.yaml"),
        )
    return None


def _tensors(specs: Any, prefix: tuple[int, ...]) -> list[EngineTensor] | None:
    if specs is None:
        return None
    return [EngineTensor(s.name, s.datatype, (*prefix, *s.dims)) for s in specs]


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
