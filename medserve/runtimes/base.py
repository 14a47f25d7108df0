"""The one small interface every engine implements: load, run, unload, and tensor metadata.

A runtime object is one *instance* of a model version (one ONNX Runtime session, one torch module on a
device, ...). ``run`` is synchronous and is called from a worker thread; engines release the GIL.

An engine reads its artifact and nothing else of the model repository: what the model's configuration
declares (tensors, batching, the file to name in error messages) is handed to it by the caller as a
``Declaration``. An artifact loaded directly, outside a repository, has none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class EngineTensor:
    """A tensor as the engine declares it: full shape including any batch dimension (-1 = variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class DeclaredTensor(Protocol):
    """A tensor as a model configuration declares it (``TensorConfig``): dims exclude a batch dimension."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def dims(self) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class Declaration:
    """What the model's configuration declares, for engines whose artifacts do not say it all.

    A TorchScript file carries no tensor names, datatypes or shapes, and the OpenVINO engine needs to
    know whether the model batches. ``inputs``/``outputs`` are None when undeclared; their shapes are
    full (a batching model's start with -1). ``source`` names the configuration in error messages.
    """

    source: str
    max_batch_size: int = 0
    inputs: tuple[EngineTensor, ...] | None = None
    outputs: tuple[EngineTensor, ...] | None = None

    @classmethod
    def of(
        cls,
        source: str,
        max_batch_size: int,
        inputs: Sequence[DeclaredTensor] | None,
        outputs: Sequence[DeclaredTensor] | None,
    ) -> Declaration:
        """From configured tensors whose dims exclude the batch dimension when ``max_batch_size`` > 0."""
        prefix = (-1,) if max_batch_size > 0 else ()

        def full(specs: Sequence[DeclaredTensor] | None) -> tuple[EngineTensor, ...] | None:
            if specs is None:
                return None
            return tuple(EngineTensor(s.name, s.datatype, (*prefix, *s.dims)) for s in specs)

        return cls(source, max_batch_size, full(inputs), full(outputs))


class Runtime(ABC):
    """One loaded instance of a model version on one device."""

    #: name used in ``config.yaml``'s ``runtime`` field
    name: str = ""
    #: value reported as ``platform`` in model metadata
    platform: str = ""

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        self.artifact = artifact
        self.options = options
        #: what the model's configuration declares (None: the artifact was loaded directly)
        self.declared = declared

    def options_source(self, direct: str) -> str:
        """Where ``runtime_options`` come from, to begin error messages: the configuration's field, or
        ``direct`` (e.g. ``torch runtime option``) for an artifact loaded directly."""
        if self.declared is None:
            return direct
        return f"{self.declared.source}: field 'runtime_options'"

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

    def ready(self) -> bool:
        """Whether a batch sent now can run (an engine in this process, once loaded: always)."""
        return True

    def take_note(self) -> str:
        """What the last ``run`` wants said in the audit records of its requests ('' for nothing), e.g.
        that the batch was sent twice; asked once after each run (an instance runs one batch at a time)."""
        return ""

    def device(self) -> str:
        """Where this instance runs, e.g. ``cpu`` or ``cuda:0`` (audit records and metrics)."""
        return "cpu"

    def describe(self) -> dict[str, Any]:
        """Engine details shown in model metadata (providers, threads, device)."""
        return {}
