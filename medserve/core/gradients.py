"""Gradient access for explanations: the differentiable copy of a served torch model, and how busy its
queue is, handed to a workflow without handing it the registry.

Gradient methods (Captum) cannot run through the batcher, which only runs a model forward. Their work
runs beside it on a separate copy of the module (``TorchRuntime.gradient_module``); ``queued`` lets the
caller wait until no request is queued for the model before it starts, so a clinical request never
waits behind an explanation's start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medserve.values.access import Action, Caller

if TYPE_CHECKING:
    from medserve.core.service import InferenceService


@dataclass(frozen=True)
class GradientModel:
    """``module``: the torch module (layers by ``named_modules``); ``forward``: input tensors in declared
    order -> outputs by name; ``device``: where it runs; ``queued``: requests waiting for the model."""

    module: Any
    forward: Callable[[list[Any]], dict[str, Any]]
    device: str
    queued: Callable[[], int]


def gradient_model(
    service: InferenceService, name: str, version: str, caller: Caller
) -> GradientModel | None:
    """The served version's differentiable copy (float32), or None when its engine has no gradients
    (ONNX Runtime, OpenVINO). Needs ``infer`` on the model, like the explanation that uses it. The first
    call reads the artifact again: call it from a worker thread."""
    caller.principal.require(Action.INFER, name)
    served = service.registry.get(name, version)
    instance = served.pool.instances[0] if len(served.pool) else served.loaded.instances[0]
    provider = getattr(instance, "gradient_module", None)
    if provider is None:
        return None
    module, forward = provider()
    return GradientModel(module, forward, instance.device(), served.batcher.queue_depth)
