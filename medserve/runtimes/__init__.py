"""Engines, chosen by name and imported lazily so the server starts without optional engines."""

from __future__ import annotations

import importlib

from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.values.errors import ModelLoadError

_RUNTIMES: dict[str, str | type[Runtime]] = {
    "onnxruntime": "medserve.runtimes.onnxruntime:OnnxRuntime",
    "monai_bundle": "medserve.runtimes.monai_bundle:MonaiBundleRuntime",
    "torch": "medserve.runtimes.torch:TorchRuntime",
    "openvino": "medserve.runtimes.openvino:OpenVinoRuntime",
    "ray_serve": "medserve.runtimes.ray_serve:RayServeEngine",
}


_BUILT_IN = frozenset(_RUNTIMES)

#: how to install a built-in engine's library, for the error of a model that names a missing one
_EXTRAS = {
    "onnxruntime": "install medserve with ONNX Runtime's 'cpu' or 'gpu' extra "
    "(scripts/install.sh: MEDSERVE_ONNXRUNTIME=cpu|gpu)",
    "openvino": "install medserve with the 'openvino' extra",
    "torch": "install torch (medserve's 'examples' extra pins the CPU build)",
    "monai_bundle": "install torch and monai (medserve's 'examples' extra)",
    "ray_serve": "install medserve's 'ray' extra",
}


def runtime_names() -> list[str]:
    return sorted(_RUNTIMES)


def register_runtime(name: str, target: str | type[Runtime]) -> None:
    """Make ``config.yaml``'s ``runtime: <name>`` load ``target``: a ``Runtime`` subclass, or
    ``"module:Class"`` imported when first used. A name already registered raises ``ValueError``."""
    if not name.strip():
        raise ValueError("a runtime needs a name")
    if name in _RUNTIMES:
        raise ValueError(f"runtime '{name}' is already registered")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"runtime target must be 'module:Class', not '{target}'")
    _RUNTIMES[name] = target


def unregister_runtime(name: str) -> None:
    """Forget a runtime added with :func:`register_runtime` (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"runtime '{name}' is built in")
    _RUNTIMES.pop(name, None)


def runtime_class(name: str) -> type[Runtime]:
    """Import and return the runtime class registered under ``name``."""
    try:
        target = _RUNTIMES[name]
    except KeyError:
        raise ModelLoadError(f"unknown runtime '{name}'; available: {', '.join(runtime_names())}") from None
    if not isinstance(target, str):
        return target
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        how = f"; {_EXTRAS[name]}" if name in _EXTRAS else ""
        raise ModelLoadError(f"runtime '{name}' is not installed ({exc}){how}") from None
    cls: type[Runtime] = getattr(module, class_name)
    return cls


__all__ = [
    "Declaration",
    "EngineTensor",
    "Runtime",
    "register_runtime",
    "runtime_class",
    "runtime_names",
    "unregister_runtime",
]
