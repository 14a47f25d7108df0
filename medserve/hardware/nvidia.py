"""NVIDIA GPUs: NVML (the ``nvidia-ml-py`` package's ``pynvml``, the ``gpu`` extra) first, else torch.cuda.

NVML numbers every GPU of the machine in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA,
and so torch and ONNX Runtime, number only the visible ones. ``visible_nvml_indices`` maps one onto
the other so that ``cuda:N`` here is ``cuda:N`` in the engines. (With ``CUDA_DEVICE_ORDER`` left at
CUDA's default, mixed GPU models may be ordered fastest first instead; identical GPUs are not affected.)
Both libraries are imported only when probed, and nothing here raises: failures become problems.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any

#: where NVML comes from; named in messages when it is missing
NVML_HINT = "the 'gpu' extra, nvidia-ml-py"


@dataclass(frozen=True, slots=True)
class Gpu:
    """One visible NVIDIA GPU; ``index`` is its CUDA ordinal (``cuda:index``)."""

    index: int
    name: str
    memory_bytes: int | None
    compute_capability: tuple[int, int] | None
    multiprocessors: int | None = None
    nvml_index: int | None = None
    uuid: str | None = None
    details: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class CudaProbe:
    """GPUs found, which library found them (``nvml``, ``torch`` or ``""``), and what went wrong."""

    gpus: list[Gpu] = field(default_factory=list)
    source: str = ""
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def compute_features(capability: tuple[int, int] | None) -> tuple[str, ...]:
    """``sm_XY`` and the tensor-core precisions a compute capability offers."""
    if capability is None:
        return ()
    major, minor = capability
    features = [f"sm_{major}{minor}"]
    if capability >= (7, 0):
        features.append("fp16")
    if capability >= (7, 5):
        features.append("int8")
    if capability >= (8, 0):
        features += ["bf16", "tf32"]
    if capability >= (8, 9):
        features.append("fp8")
    return tuple(features)


def visible_nvml_indices(env: str | None, uuids: list[str]) -> tuple[list[int], str | None]:
    """NVML indices in CUDA order under ``CUDA_VISIBLE_DEVICES`` = ``env`` (None: unset).

    Follows CUDA: entries are ordinals or ``GPU-`` UUID prefixes, and enumeration stops at the first
    entry that names no GPU (or one already listed). Returns the indices and, when it stopped early,
    why.
    """
    if env is None:
        return list(range(len(uuids))), None
    indices: list[int] = []
    for raw in env.split(","):
        token = raw.strip()
        if not token:
            break
        if token.startswith("-") and token[1:].isdigit():
            break  # a negative ordinal deliberately ends the list
        match: int | None = None
        if token.isdigit():
            match = int(token) if int(token) < len(uuids) else None
        elif token.startswith("GPU-"):
            found = [i for i, uuid in enumerate(uuids) if uuid.startswith(token)]
            match = found[0] if len(found) == 1 else None
        if match is None or match in indices:
            kind = "MIG instance" if token.startswith("MIG-") else "entry"
            return indices, (
                f"CUDA_VISIBLE_DEVICES {kind} '{token}' names no GPU that NVML can map; "
                f"later entries are ignored, as CUDA does"
            )
        indices.append(match)
    return indices, None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_quiet(nvml: Any, exc: Exception) -> bool:
    """No NVIDIA driver at all: not a problem, just nothing to find."""
    codes = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9),
    }
    return getattr(exc, "value", None) in codes


def _nvml_gpu(nvml: Any, nvml_index: int, cuda_index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability: tuple[int, int] | None = (int(major), int(minor))
    except nvml.NVMLError:
        capability = None
    details: dict[str, object] = {"nvml_index": nvml_index}
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        details["energy_counter"] = True
    except nvml.NVMLError:
        details["energy_counter"] = False
    with contextlib.suppress(nvml.NVMLError):
        details["power_limit_watts"] = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    return Gpu(
        index=cuda_index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        compute_capability=capability,
        nvml_index=nvml_index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        details=details,
    )


def probe_nvml(cuda_visible_devices: str | None) -> CudaProbe:
    """GPUs through NVML; an absent ``pynvml`` or driver is ``skipped``, other failures are problems."""
    probe = CudaProbe()
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        probe.skipped.append(f"nvml: pynvml is not installed ({NVML_HINT})")
        return probe
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        target = probe.skipped if _nvml_quiet(nvml, exc) else probe.problems
        target.append(f"nvml: cannot initialise: {exc}")
        return probe
    probe.source = "nvml"
    try:
        probe.versions["nvidia_driver"] = _text(nvml.nvmlSystemGetDriverVersion())
        count = int(nvml.nvmlDeviceGetCount())
        uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
        visible, problem = visible_nvml_indices(cuda_visible_devices, uuids)
        if problem:
            probe.problems.append(f"nvml: {problem}")
        for cuda_index, nvml_index in enumerate(visible):
            try:
                probe.gpus.append(_nvml_gpu(nvml, nvml_index, cuda_index))
            except nvml.NVMLError as exc:
                probe.problems.append(f"nvml: GPU {nvml_index} cannot be queried: {exc}")
    except nvml.NVMLError as exc:
        probe.problems.append(f"nvml: cannot list GPUs: {exc}")
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    return probe


def probe_torch_cuda(torch: Any) -> CudaProbe:
    """GPUs through ``torch.cuda`` (initialises CUDA in this process); ``torch`` is the imported module."""
    probe = CudaProbe()
    try:
        if not torch.cuda.is_available():
            return probe
        probe.source = "torch"
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            uuid = getattr(props, "uuid", None)
            probe.gpus.append(
                Gpu(
                    index=index,
                    name=str(props.name),
                    memory_bytes=int(props.total_memory),
                    compute_capability=(int(props.major), int(props.minor)),
                    multiprocessors=int(props.multi_processor_count),
                    uuid=f"GPU-{uuid}" if uuid is not None else None,
                )
            )
    except Exception as exc:  # torch raises RuntimeError, AssertionError or driver errors here
        probe.problems.append(f"torch.cuda: cannot list GPUs: {exc}")
    return probe


def torch_cuda_count(torch: Any) -> tuple[int, str | None]:
    """How many GPUs torch can use, without creating a CUDA context; a failure is (0, why)."""
    try:
        return (int(torch.cuda.device_count()) if torch.cuda.is_available() else 0), None
    except Exception as exc:  # as above
        return 0, f"torch.cuda: {exc}"
