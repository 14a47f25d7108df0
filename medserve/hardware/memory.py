"""Peak memory of a model instance while it is profiled.

On the CPU: the rise of this process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``)
over the resident set before the instance loaded; the mark is reset first through
``/proc/self/clear_refs`` (Linux), else the rise over the previous mark is taken (then 0 when the
process was larger before). For torch on CUDA: ``torch.cuda.max_memory_allocated`` over what was
allocated before. Anything else is not measured (None). The whole process is counted: profile in a
process doing nothing else.
"""

from __future__ import annotations

from medserve.hardware.devices import RUNTIME_ENGINES, Device


def proc_status_bytes(key: str) -> int | None:
    """``VmHWM``/``VmRSS`` of this process in bytes; None where ``/proc`` is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux ``clear_refs`` 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """Peak memory of one engine instance on ``device``, from before it loads: CUDA allocations for
    torch on CUDA, the process's resident-set high-water rise on the CPU, else None (not measured)."""

    def __init__(self, runtime: str, device: Device) -> None:
        self._cuda_index: int | None = None
        if device.kind == "cuda" and RUNTIME_ENGINES.get(runtime, runtime) == "torch":
            self._cuda_index = int(device.id.split(":", 1)[1])
        self._baseline: int | None = None
        if self._cuda_index is not None:
            import torch

            torch.cuda.reset_peak_memory_stats(self._cuda_index)
            self._baseline = int(torch.cuda.memory_allocated(self._cuda_index))
        elif device.kind == "cpu":
            rss = proc_status_bytes("VmRSS")
            self._baseline = rss if reset_rss_peak() else proc_status_bytes("VmHWM")

    def peak_bytes(self) -> int | None:
        if self._baseline is None:
            return None
        if self._cuda_index is not None:
            import torch

            return max(0, int(torch.cuda.max_memory_allocated(self._cuda_index)) - self._baseline)
        peak = proc_status_bytes("VmHWM")
        return None if peak is None else max(0, peak - self._baseline)
