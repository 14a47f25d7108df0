"""``ServedModelInfo``: what a workflow may know of the version serving a model, without holding it.

Pipelines and jobs read it through ``InferenceService.model_info`` to name their request tensors,
size their batches and say in their results which version (and artifact digest) produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medserve.core.model import ServedModel
from medserve.repository.config import TensorConfig


@dataclass(frozen=True, slots=True)
class ServedModelInfo:
    name: str
    version: str
    sha256: str
    """The SHA-256 of the version's artifact."""
    device: str
    """The device(s) serving, comma-separated."""
    max_batch_size: int
    """0: the model does not batch."""
    inputs: tuple[TensorConfig, ...]
    """The inputs config.yaml declares (empty when it declares none)."""
    outputs: tuple[TensorConfig, ...]
    """The outputs config.yaml declares (empty when it declares none)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """config.yaml's free-form ``metadata`` (labels, thresholds, preprocessing, ...), a copy."""

    @staticmethod
    def of(served: ServedModel) -> ServedModelInfo:
        config = served.config
        return ServedModelInfo(
            served.name,
            served.version,
            served.loaded.sha256,
            served.device,
            config.max_batch_size,
            tuple(config.inputs or ()),
            tuple(config.outputs or ()),
            dict(config.metadata or {}),
        )
