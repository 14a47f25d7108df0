"""Device discovery: what this machine offers each engine, a fingerprint of it, and device resolution.

``discover_devices`` probes the CPU (``/proc``), NVIDIA GPUs (NVML, else torch.cuda), ONNX Runtime's
execution providers and OpenVINO's devices. Every probe is guarded: one that fails adds a line to
``Discovery.problems``; one whose optional library is not installed (or, for NVML, whose driver is
absent) adds a line to ``Discovery.skipped``. Nothing here raises except ``resolve_device``, on purpose.

Device ids are the names engines use: ``cpu``, ``cuda:N`` (CUDA ordinals, honouring
``CUDA_VISIBLE_DEVICES``) and ``openvino:NAME`` for OpenVINO's non-CPU devices (``openvino:GPU.0``,
``openvino:NPU``); OpenVINO's ``CPU`` is the ``cpu`` device.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from medserve.hardware.cpu import probe_cpu
from medserve.hardware.nvidia import Gpu, compute_features, probe_nvml, probe_torch_cuda, torch_cuda_count
from medserve.values.errors import InvalidConfig

DeviceKind = Literal["cpu", "cuda", "npu", "gpu"]

#: engines whose devices are discovered, as named in ``Device.runtimes``
ENGINES = ("onnxruntime", "torch", "openvino")
#: medserve runtimes that run on another engine's devices
RUNTIME_ENGINES = {"monai_bundle": "torch"}
_ORT_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True, slots=True)
class Device:
    """One device and the engines that can use it; ``features`` are ISA flags or CUDA capabilities."""

    id: str
    kind: DeviceKind
    name: str
    memory_bytes: int | None
    cores: int | None
    features: tuple[str, ...]
    runtimes: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "memory_bytes": self.memory_bytes,
            "cores": self.cores,
            "features": list(self.features),
            "runtimes": list(self.runtimes),
            "details": self.details,
        }


@dataclass(slots=True)
class Discovery:
    """The devices found, ONNX Runtime's providers, library versions, and what could not be probed."""

    devices: list[Device]
    providers: list[str]
    problems: list[str]
    skipped: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def cpu(self) -> Device | None:
        return next((d for d in self.devices if d.kind == "cpu"), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [d.to_json() for d in self.devices],
            "providers": list(self.providers),
            "versions": dict(self.versions),
            "fingerprint": hardware_fingerprint(self),
            "problems": list(self.problems),
            "skipped": list(self.skipped),
        }


@dataclass(slots=True)
class _OpenVinoDevice:
    name: str
    full_name: str
    memory_bytes: int | None = None
    cores: int | None = None
    capabilities: tuple[str, ...] = ()


def _version(module: Any, distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _import(name: str, discovery: Discovery) -> Any | None:
    """Import an optional engine; not installed → skipped, failing to import → a problem."""
    try:
        if importlib.util.find_spec(name) is None:
            discovery.skipped.append(f"{name}: not installed")
            return None
        module = importlib.import_module(name)
    except Exception as exc:  # broken installs raise ImportError, OSError (missing .so) or worse
        discovery.problems.append(f"{name}: cannot be imported: {exc}")
        return None
    discovery.versions[name] = _version(module, name)
    return module


def _probe_openvino(openvino: Any, discovery: Discovery) -> list[_OpenVinoDevice]:
    try:
        core_class = getattr(openvino, "Core", None) or importlib.import_module("openvino.runtime").Core
        core = core_class()
        names = [str(n) for n in core.available_devices]
    except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
        discovery.problems.append(f"openvino: cannot list devices: {exc}")
        return []

    def prop(device: str, key: str) -> Any:
        try:
            return core.get_property(device, key)
        except Exception:  # a property a plugin does not support is simply absent
            return None

    found: list[_OpenVinoDevice] = []
    for name in names:
        full_name = prop(name, "FULL_DEVICE_NAME")
        if full_name is None:
            discovery.problems.append(f"openvino: device {name} does not report FULL_DEVICE_NAME")
        memory = prop(name, "GPU_DEVICE_TOTAL_MEM_SIZE") if name.startswith("GPU") else None
        units = prop(name, "GPU_EXECUTION_UNITS_COUNT") if name.startswith("GPU") else None
        capabilities = prop(name, "OPTIMIZATION_CAPABILITIES") or ()
        found.append(
            _OpenVinoDevice(
                name=name,
                full_name=str(full_name or name),
                memory_bytes=int(memory) if memory else None,
                cores=int(units) if units else None,
                capabilities=tuple(str(c).lower() for c in capabilities),
            )
        )
    return found


def _cpu_device(discovery: Discovery, torch: Any | None, openvino: list[_OpenVinoDevice]) -> Device:
    probe = probe_cpu()
    discovery.problems.extend(probe.problems)
    ov_cpu = next((d for d in openvino if d.name == "CPU"), None)
    runtimes = [
        *(["onnxruntime"] if "CPUExecutionProvider" in discovery.providers else []),
        *(["torch"] if torch is not None else []),
        *(["openvino"] if ov_cpu is not None else []),
    ]
    details = dict(probe.details)
    if ov_cpu is not None:
        details["openvino_capabilities"] = list(ov_cpu.capabilities)
    return Device(
        "cpu", "cpu", probe.model, probe.memory_bytes, probe.cores, probe.features, tuple(runtimes), details
    )


def _cuda_devices(discovery: Discovery, torch: Any | None, environ: Mapping[str, str]) -> list[Device]:
    nvml = probe_nvml(environ.get("CUDA_VISIBLE_DEVICES"))
    discovery.problems.extend(nvml.problems)
    discovery.skipped.extend(nvml.skipped)
    discovery.versions.update(nvml.versions)
    torch_count = 0
    gpus: list[Gpu] = nvml.gpus
    if torch is not None:
        if nvml.source == "nvml":
            torch_count, problem = torch_cuda_count(torch)
            if problem:
                discovery.problems.append(problem)
        else:
            fallback = probe_torch_cuda(torch)
            discovery.problems.extend(fallback.problems)
            gpus, torch_count = fallback.gpus, len(fallback.gpus)
    ort_cuda = any(p in discovery.providers for p in _ORT_CUDA_PROVIDERS)
    devices = []
    for gpu in gpus:
        runtimes = [
            *(["onnxruntime"] if ort_cuda else []),
            *(["torch"] if gpu.index < torch_count else []),
        ]
        details: dict[str, Any] = {"uuid": gpu.uuid, "found_by": nvml.source or "torch", **gpu.details}
        if gpu.compute_capability is not None:
            details["compute_capability"] = "{}.{}".format(*gpu.compute_capability)
        devices.append(
            Device(
                f"cuda:{gpu.index}",
                "cuda",
                gpu.name,
                gpu.memory_bytes,
                gpu.multiprocessors,
                compute_features(gpu.compute_capability),
                tuple(runtimes),
                details,
            )
        )
    return devices


def _openvino_devices(openvino: list[_OpenVinoDevice]) -> list[Device]:
    devices = []
    for ov in openvino:
        if ov.name == "CPU":
            continue
        kind: DeviceKind = "gpu" if ov.name.startswith("GPU") else "npu"
        details = {"openvino_device": ov.name}
        devices.append(
            Device(
                f"openvino:{ov.name}",
                kind,
                ov.full_name,
                ov.memory_bytes,
                ov.cores,
                ov.capabilities,
                ("openvino",),
                details,
            )
        )
    return devices


def discover_devices(environ: Mapping[str, str] | None = None) -> Discovery:
    """Probe this machine; ``environ`` (default ``os.environ``) supplies ``CUDA_VISIBLE_DEVICES``."""
    discovery = Discovery(devices=[], providers=[], problems=[])
    ort = _import("onnxruntime", discovery)
    if ort is not None:
        try:
            discovery.providers = [str(p) for p in ort.get_available_providers()]
        except Exception as exc:  # a broken ORT build
            discovery.problems.append(f"onnxruntime: cannot list execution providers: {exc}")
    torch = _import("torch", discovery)
    openvino_module = _import("openvino", discovery)
    openvino = _probe_openvino(openvino_module, discovery) if openvino_module is not None else []
    discovery.devices = [
        _cpu_device(discovery, torch, openvino),
        *_cuda_devices(discovery, torch, os.environ if environ is None else environ),
        *_openvino_devices(openvino),
    ]
    return discovery


def hardware_fingerprint(discovery: Discovery) -> str:
    """SHA-256 of what makes measured performance comparable: CPU model, ISA features and usable
    cores; each accelerator's id, name and memory; ONNX Runtime, torch and OpenVINO versions.

    Stable across runs on the same machine and setup; a changed CPU, core allowance, GPU or engine
    version changes it. Host memory, drivers and problems do not take part.
    """
    cpu = discovery.cpu()
    payload = {
        "cpu": None
        if cpu is None
        else {"model": cpu.name, "features": list(cpu.features), "cores": cpu.cores},
        "accelerators": sorted(
            [d.id, d.name, d.memory_bytes or 0] for d in discovery.devices if d.kind != "cpu"
        ),
        "versions": {name: discovery.versions[name] for name in ENGINES if name in discovery.versions},
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def canonical_device_id(requested: str, engine: str) -> str:
    """The device id an engine's spelling means: ``CUDA`` → ``cuda:0``, ``openvino:CPU`` → ``cpu``, and
    for OpenVINO a bare ``GPU.0`` → ``openvino:GPU.0``."""
    text = requested.strip()
    lowered = text.lower()
    if lowered in ("cpu", "openvino:cpu"):
        return "cpu"
    if lowered == "cuda":
        return "cuda:0"
    if lowered.startswith("cuda:"):
        return lowered
    if lowered.startswith("openvino:"):
        return "openvino:" + text.split(":", 1)[1].upper()
    if engine == "openvino":
        return "openvino:" + text.upper()
    return text


_OPENVINO_VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")


def _lookup(discovery: Discovery, requested: str, engine: str) -> Device | None:
    """The device ``requested`` names; OpenVINO's ``GPU`` and ``GPU.0`` name each other, and a virtual
    device resolves to the first real device it lists (``AUTO`` skips absent ones, ``HETERO``, ``MULTI``
    and ``BATCH`` need them all; a bare ``AUTO`` prefers accelerators to the CPU)."""
    text = requested.strip()
    if engine == "openvino" and text.upper().split(":", 1)[0] in _OPENVINO_VIRTUAL:
        listed = text.split(":", 1)[1].split(",") if ":" in text else []
        if not listed:  # AUTO's own preference: accelerators first, then the CPU
            listed = [d.id for d in discovery.devices if d.kind != "cpu" and engine in d.runtimes] + ["cpu"]
        found = [_lookup(discovery, name, engine) for name in listed if name.strip()]
        usable = [d for d in found if d is not None and engine in d.runtimes]
        if not text.upper().startswith("AUTO") and len(usable) < len(found):
            return None  # HETERO, MULTI and BATCH need every device they list
        return usable[0] if usable else None
    wanted = canonical_device_id(text, engine)
    device = discovery.device(wanted)
    if device is None and wanted.startswith("openvino:"):
        alias = wanted[: -len(".0")] if wanted.endswith(".0") else f"{wanted}.0" if "." not in wanted else ""
        device = discovery.device(alias) if alias else None
    return device


def resolve_device(requested: str, runtime: str, discovery: Discovery) -> Device:
    """The device ``requested`` for ``runtime``, or ``InvalidConfig`` naming what this machine offers."""
    engine = RUNTIME_ENGINES.get(runtime, runtime)
    if engine not in ENGINES:
        known = sorted({*ENGINES, *RUNTIME_ENGINES})
        raise InvalidConfig(f"runtime '{runtime}' has no device support; known: {', '.join(known)}")
    device = _lookup(discovery, requested, engine)
    if device is not None and engine in device.runtimes:
        return device
    offered = ", ".join(d.id for d in discovery.devices if engine in d.runtimes) or "none"
    message = (
        f"device '{requested}' is not available to runtime '{runtime}' on this machine; available: {offered}"
    )
    if device is not None:
        message += f" ({device.id} is usable by: {', '.join(device.runtimes) or 'no runtime'})"
    if engine != runtime:
        message += f" (runtime '{runtime}' runs on {engine})"
    problems = [p for p in discovery.problems if p.split(":", 1)[0] in (engine, "nvml", "torch.cuda")]
    if problems:
        message += "; probe problems: " + "; ".join(problems)
    raise InvalidConfig(message)
