"""Options, dtype tables and CUDA graphs for the torch engine (``medserve.runtimes.torch``).

Imported only when a torch model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medserve.runtimes.base import EngineTensor
from medserve.values.errors import InvalidConfig

log = logging.getLogger(__name__)

OPTIONS = (
    "device",
    "precision",
    "compile",
    "compile_mode",
    "compile_backend",
    "cuda_graphs",
    "intra_op_threads",
    "format",
)
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FORMATS = ("auto", "torchscript", "torch_export")

#: OIP datatype -> torch dtype (BF16 travels as uint16 bits and is viewed as bfloat16)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
OIP_DATATYPES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}


@dataclass(frozen=True, slots=True)
class TorchOptions:
    """``runtime_options`` of a torch model, validated."""

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    cuda_graphs: tuple[int, ...] = ()
    intra_op_threads: int = 0
    format: str = "auto"

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype floating-point weights and inputs are cast to; None for fp32 (no cast)."""
        return None if self.precision == "fp32" else PRECISIONS[self.precision]


def available_devices() -> list[str]:
    """What this machine offers the torch engine."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def parse_device(value: Any, where: str) -> torch.device:
    """``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``, if this machine has it."""
    text = str(value).strip().lower()
    offered = ", ".join(available_devices())
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InvalidConfig(
            f"{where} 'device': '{value}' is not a device name; available: {offered}"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise InvalidConfig(
            f"{where} 'device': device '{value}' is not supported (cpu, cuda or cuda:N); available: {offered}"
        )
    if not torch.cuda.is_available():
        raise InvalidConfig(
            f"{where} 'device': device '{value}' is not available "
            f"(torch.cuda.is_available() is False); available: {offered}"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InvalidConfig(
            f"{where} 'device': device '{value}' is not available "
            f"({torch.cuda.device_count()} CUDA device(s)); available: {offered}"
        )
    return torch.device("cuda", index)


def parse_options(options: dict[str, Any], where: str) -> TorchOptions:
    """Validate ``runtime_options``; ``where`` prefixes errors (e.g. the config file and field)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidConfig(f"{where}: unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
    device = parse_device(options.get("device", "cpu"), where)
    precision = str(options.get("precision", "fp32")).lower()
    if precision not in PRECISIONS:
        raise InvalidConfig(
            f"{where} 'precision': '{options['precision']}' is not one of {', '.join(PRECISIONS)}"
        )
    compile_ = options.get("compile", False)
    if not isinstance(compile_, bool):
        raise InvalidConfig(f"{where} 'compile': must be true or false, got {compile_!r}")
    mode = options.get("compile_mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise InvalidConfig(f"{where} 'compile_mode': '{mode}' is not one of {', '.join(COMPILE_MODES)}")
    backend = options.get("compile_backend", "inductor")
    if not isinstance(backend, str) or not backend:
        raise InvalidConfig(f"{where} 'compile_backend': must be a backend name, got {backend!r}")
    sizes = options.get("cuda_graphs", [])
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes
    ):
        raise InvalidConfig(f"{where} 'cuda_graphs': must be a list of batch sizes >= 1, got {sizes!r}")
    if sizes and device.type != "cuda":
        raise InvalidConfig(f"{where} 'cuda_graphs': CUDA graphs need a CUDA device; device is '{device}'")
    if sizes and compile_ and mode in ("reduce-overhead", "max-autotune"):
        raise InvalidConfig(
            f"{where} 'cuda_graphs': compile_mode '{mode}' already captures CUDA graphs; use one or the other"
        )
    threads = options.get("intra_op_threads", 0)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InvalidConfig(f"{where} 'intra_op_threads': must be an integer >= 0, got {threads!r}")
    fmt = str(options.get("format", "auto"))
    if fmt not in FORMATS:
        raise InvalidConfig(f"{where} 'format': '{fmt}' is not one of {', '.join(FORMATS)}")
    return TorchOptions(device, precision, compile_, mode, backend, tuple(sorted(set(sizes))), threads, fmt)


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads``: process-wide, shared by every torch model in the server."""
    if threads and torch.get_num_threads() != threads:
        log.info("torch intra-op threads: %d -> %d (process-wide)", torch.get_num_threads(), threads)
        torch.set_num_threads(threads)


def example_inputs(
    specs: Sequence[EngineTensor], batch: int, device: torch.device, dtype: torch.dtype | None
) -> list[torch.Tensor]:
    """Zero tensors shaped like ``specs``: a leading -1 becomes ``batch``, other variable sizes 1."""
    tensors = []
    for spec in specs:
        shape = [batch if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        tensor = torch.zeros(shape, dtype=TORCH_DTYPES[spec.datatype], device=device)
        tensors.append(tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)
    return tensors


class CudaGraphs:
    """One CUDA graph per fixed batch size; smaller batches are zero-padded to the nearest captured size.

    Graphs are captured largest first and share one memory pool, which is safe because an instance
    replays one graph at a time and its outputs are copied out before the next replay. Padding rows are
    zeros: models whose items influence each other (batch statistics) must not use CUDA graphs.
    """

    def __init__(
        self,
        call: Callable[[list[torch.Tensor]], Any],
        specs: Sequence[EngineTensor],
        sizes: Sequence[int],
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}
        self.sizes = tuple(sorted(sizes))
        pool = None
        for size in sorted(sizes, reverse=True):
            static = example_inputs(specs, size, device, dtype)
            stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up outside capture: lazy initialisation, autotuning
                    call(static)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other models on other threads does not break this capture
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = call(static)
            pool = graph.pool()
            self._graphs[size] = (graph, static, out)
        torch.cuda.synchronize(device)

    def run(self, tensors: list[torch.Tensor]) -> Any | None:
        """Replay the graph for this batch; None when no captured size fits (run eagerly then)."""
        count = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        size = next((s for s in self.sizes if s >= count), None)
        if size is None or count == 0:
            return None
        graph, static, out = self._graphs[size]
        if any(t.shape[1:] != s.shape[1:] or t.dtype != s.dtype for t, s in zip(tensors, static)):
            return None
        for tensor, target in zip(tensors, static):
            target[:count].copy_(tensor)
            if count < size:
                target[count:].zero_()
        graph.replay()
        return _rows(out, count)


def _rows(value: Any, count: int) -> Any:
    """The first ``count`` rows of every tensor in a (nested) graph output: views of the static outputs,
    valid until the next replay (the engine copies them to host memory before that)."""
    if isinstance(value, torch.Tensor):
        return value[:count]
    if isinstance(value, dict):
        return {k: _rows(v, count) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rows(v, count) for v in value]
    return value
