"""Engines, chosen by name and imported lazily so the server starts without optional engines."""

from __future__ import annotations

import importlib

from medserve.core.errors import ModelLoadError
from medserve.runtimes.base import EngineTensor, Runtime

_RUNTIMES: dict[str, str] = {
    "onnxruntime": "medserve.runtimes.onnxruntime:OnnxRuntime",
    "monai_bundle": "medserve.runtimes.monai_bundle:MonaiBundleRuntime",
    "torch": "medserve.runtimes.torch:TorchRuntime",
    "openvino": "medserve.runtimes.openvino:OpenVinoRuntime",
}


def runtime_names() -> list[str]:
    return sorted(_RUNTIMES)


def runtime_class(name: str) -> type[Runtime]:
    """Import and return the runtime class registered under ``name``."""
    try:
        target = _RUNTIMES[name]
    except KeyError:
        raise ModelLoadError(f"unknown runtime '{name}'; available: {', '.join(runtime_names())}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"runtime '{name}' is not installed: {exc}") from None
    cls: type[Runtime] = getattr(module, class_name)
    return cls


__all__ = ["EngineTensor", "Runtime", "runtime_class", "runtime_names"]
