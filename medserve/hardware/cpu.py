"""The host CPU: pure parsers of ``/proc/cpuinfo``, ``/proc/meminfo`` and cgroup v2 limits, and one probe.

The parsers take text and return values, so they are tested against canned files; ``probe_cpu`` reads
the real files and never raises: whatever it cannot read is returned as a problem.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

#: ISA features reported for x86 CPUs, lowest level first (the names ``/proc/cpuinfo`` uses)
X86_FEATURES = (
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
#: ISA features reported for Arm CPUs (the ``Features`` line), lowest level first
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says: model, every flag, logical processors, physical cores (if known)."""

    model: str
    flags: frozenset[str]
    logical: int
    physical_cores: int | None
    vendor: str = ""


@dataclass(frozen=True, slots=True)
class CpuProbe:
    """The CPU as the probe found it; ``cores`` is what this process may use."""

    model: str
    features: tuple[str, ...]
    cores: int | None
    memory_bytes: int | None
    details: dict[str, object] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _arm_model(block: dict[str, str]) -> str:
    implementer = block.get("CPU implementer", "")
    part = block.get("CPU part", "")
    return f"Arm implementer {implementer} part {part}" if implementer or part else ""


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` text (x86 ``flags`` or Arm ``Features``); unknown fields are ignored."""
    blocks = _blocks(text)
    processors = [b for b in blocks if "processor" in b]
    first = processors[0] if processors else (blocks[0] if blocks else {})
    globals_ = {k: v for b in blocks for k, v in b.items() if k not in first}
    model = (
        first.get("model name")
        or first.get("cpu model")
        or globals_.get("Hardware")
        or globals_.get("Model")
        or _arm_model(first)
    )
    flags = frozenset((first.get("flags") or first.get("Features") or "").split())
    pairs = {(b.get("physical id", "0"), b["core id"]) for b in processors if "core id" in b}
    return CpuInfo(
        model=model,
        flags=flags,
        logical=len(processors),
        physical_cores=len(pairs) if pairs else None,
        vendor=first.get("vendor_id", first.get("CPU implementer", "")),
    )


def cpu_features(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The ISA features among ``flags`` that matter for inference, lowest level first."""
    return tuple(f for f in (*X86_FEATURES, *ARM_FEATURES) if f in flags)


def parse_meminfo(text: str) -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in bytes, or None when absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            parts = value.split()
            if parts and parts[0].isdigit():
                factor = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                return int(parts[0]) * factor
    return None


def parse_cgroup_memory_max(text: str) -> int | None:
    """cgroup v2 ``memory.max``: a byte limit, or None for ``max`` (no limit) or unreadable text."""
    value = text.strip()
    return int(value) if value.isdigit() else None


def parse_cgroup_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``QUOTA PERIOD``): CPUs' worth of time allowed, None when unlimited."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max" or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    period = int(parts[1])
    return int(parts[0]) / period if period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def usable_cpus() -> int | None:
    """Processors this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def probe_cpu(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> CpuProbe:
    """Describe the host CPU; files that cannot be read become problems, never exceptions."""
    problems: list[str] = []
    details: dict[str, object] = {"architecture": platform.machine()}
    cpuinfo_text = _read(proc / "cpuinfo")
    if cpuinfo_text is None:
        problems.append(f"cpu: cannot read {proc / 'cpuinfo'}; model and ISA features unknown")
        info = CpuInfo(model=platform.processor(), flags=frozenset(), logical=0, physical_cores=None)
    else:
        info = parse_cpuinfo(cpuinfo_text)
    details["vendor"] = info.vendor
    details["logical_processors"] = info.logical or os.cpu_count()
    details["physical_cores"] = info.physical_cores
    cores = usable_cpus()
    details["affinity"] = cores
    quota_text = _read(cgroup / "cpu.max")
    quota = parse_cgroup_cpu_max(quota_text) if quota_text is not None else None
    if quota is not None:
        details["cgroup_cpu_quota"] = quota
        cores = min(cores, max(1, math.ceil(quota))) if cores is not None else max(1, math.ceil(quota))
    meminfo_text = _read(proc / "meminfo")
    memory = parse_meminfo(meminfo_text) if meminfo_text is not None else None
    if memory is None:
        problems.append(f"cpu: cannot read MemTotal from {proc / 'meminfo'}; memory unknown")
    details["host_memory_bytes"] = memory
    limit_text = _read(cgroup / "memory.max")
    limit = parse_cgroup_memory_max(limit_text) if limit_text is not None else None
    if limit is not None and (memory is None or limit < memory):
        details["cgroup_memory_limit"] = limit
        memory = limit
    return CpuProbe(
        model=info.model or "unknown CPU",
        features=cpu_features(info.flags),
        cores=cores,
        memory_bytes=memory,
        details=details,
        problems=tuple(problems),
    )
