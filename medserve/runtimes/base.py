"""The one small interface every engine implements: load, run, unload, and tensor metadata.

A runtime object is one *instance* of a model version (one ONNX Runtime session, one torch module on a
device, ...). ``run`` is synchronous and is called from a worker thread; engines release the GIL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class EngineTensor:
    """A tensor as the engine declares it: full shape including any batch dimension (-1 = variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Runtime(ABC):
    """One loaded instance of a model version on one device."""

    #: name used in ``config.yaml``'s ``runtime`` field
    name: str = ""
    #: value reported as ``platform`` in model metadata
    platform: str = ""

    def __init__(self, artifact: Path, options: dict[str, Any]) -> None:
        self.artifact = artifact
        self.options = options

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; raise ``ModelLoadError`` with the reason when it cannot be loaded, or
        ``InvalidConfig`` when a ``runtime_options`` value is unknown or unavailable on this machine."""

    @abstractmethod
    def inputs(self) -> list[EngineTensor]: ...

    @abstractmethod
    def outputs(self) -> list[EngineTensor]: ...

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run once; raise ``InferenceFailed`` with the engine's message on failure."""

    def unload(self) -> None:
        """Release the engine's resources."""

    def device(self) -> str:
        """Where this instance runs, e.g. ``cpu`` or ``cuda:0`` (audit records and metrics)."""
        return "cpu"

    def describe(self) -> dict[str, Any]:
        """Engine details shown in model metadata (providers, threads, device)."""
        return {}
