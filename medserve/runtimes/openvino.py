"""OpenVINO engine: an OpenVINO IR (``model.xml`` + ``model.bin``) or ONNX file compiled for one device.

Install with the ``openvino`` extra (``pip install medserve[openvino]``). ``config.yaml``::

    runtime: openvino
    artifact: model.xml               # read with openvino.Core().read_model (the .bin lies beside it);
                                      # a .onnx file works too
    runtime_options:
      device: CPU                     # CPU (default), GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, HETERO:..., ...
      performance_hint: LATENCY       # LATENCY (default), THROUGHPUT or CUMULATIVE_THROUGHPUT
      num_requests: 4                 # infer requests per instance (default: 1 under LATENCY, else the
                                      # compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS)
      precision: fp32                 # INFERENCE_PRECISION_HINT: fp32, fp16, bf16 or auto (the device's
                                      # choice). Default fp32 on CPU, for parity with ONNX Runtime (CPUs
                                      # with AMX/AVX512-BF16 otherwise compute in bf16), auto elsewhere
      intra_op_threads: 4             # INFERENCE_NUM_THREADS of this compiled model (0: device default)
      num_streams: 2                  # NUM_STREAMS (an integer or AUTO)
      dynamic_batch: auto             # auto: give a fixed first dimension a variable size when the
                                      # model's config.yaml batches (max_batch_size > 0); true / false
      cache_dir: /var/cache/ov        # CACHE_DIR: compiled blobs are reused on the next load

Tensors come from the model itself (names, element types, partial shapes). Each instance (see
``instance_count``) has its own compiled model and infer requests. ``run`` is synchronous: with one
request it calls ``infer``; with several and a batch dimension it splits the batch into as many parts,
runs them at once on an ``AsyncInferQueue`` and concatenates the outputs (throughput on multi-stream
devices). OpenVINO releases the GIL while it computes. Unknown or unavailable options fail the load with
``InvalidConfig`` naming ``core.available_devices``; the artifact digest covers ``model.xml`` only.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.values.errors import InferenceFailed, InvalidConfig, ModelLoadError

log = logging.getLogger(__name__)

_OV_TO_OIP = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
}
OPTIONS = (
    "device",
    "performance_hint",
    "num_requests",
    "precision",
    "intra_op_threads",
    "num_streams",
    "dynamic_batch",
    "cache_dir",
)
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISIONS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "auto": None}
_VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")


def check_device(core: ov.Core, device: str, where: str) -> str:
    """``device`` as OpenVINO names it, if this machine has it (and every device a virtual one lists)."""
    available = list(core.available_devices)
    names = set(available) | {d.split(".")[0] for d in available}
    text = device.strip().upper()
    virtual, _, listed = text.partition(":")
    wanted = [re.sub(r"\(.*\)$", "", d.strip()) for d in listed.split(",") if d.strip()]
    if virtual not in _VIRTUAL:
        wanted = [text]
    missing = [d for d in wanted if d not in names]
    if missing or (virtual in ("MULTI", "HETERO", "BATCH") and not wanted):
        raise InvalidConfig(
            f"{where} 'device': device '{device}' is not available; core.available_devices: "
            f"{', '.join(available) or 'none'} (or AUTO)"
        )
    return text


def _int_option(options: dict[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidConfig(f"{where} '{key}': must be an integer >= {minimum}, got {value!r}")
    return value


class OpenVinoRuntime(Runtime):
    name = "openvino"
    platform = "openvino"

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        self._compiled: Any = None
        self._request: Any = None
        self._queue: Any = None
        self._device = "CPU"
        self._hint = "LATENCY"
        self._inputs: list[EngineTensor] = []
        self._outputs: list[EngineTensor] = []
        self._split = False
        self._bf16_outputs: set[str] = set()
        self._results: list[Any] = []
        self._lock = threading.Lock()

    def _config(self, core: ov.Core, where: str) -> dict[str, Any]:
        options = self.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InvalidConfig(f"{where}: unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
        self._device = check_device(core, str(options.get("device", "CPU")), where)
        self._hint = str(options.get("performance_hint", "LATENCY")).upper()
        if self._hint not in HINTS:
            given = options["performance_hint"]
            raise InvalidConfig(f"{where} 'performance_hint': '{given}' is not one of {', '.join(HINTS)}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": self._hint}
        default = "fp32" if self._device.split(".")[0] == "CPU" else "auto"
        precision = str(options.get("precision", default)).lower()
        if precision not in PRECISIONS:
            raise InvalidConfig(
                f"{where} 'precision': '{options['precision']}' is not one of {', '.join(PRECISIONS)}"
            )
        if PRECISIONS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
        threads = _int_option(options, "intra_op_threads", where, 0)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        streams = options.get("num_streams")
        if streams is not None:
            if str(streams).upper() != "AUTO":
                _int_option(options, "num_streams", where, 1)
            config["NUM_STREAMS"] = str(streams).upper()
        _int_option(options, "num_requests", where, 1)
        if options.get("dynamic_batch", "auto") not in ("auto", True, False):
            raise InvalidConfig(f"{where} 'dynamic_batch': must be auto, true or false")
        cache_dir = options.get("cache_dir")
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        return config

    def load(self) -> None:
        declared = self.declared
        where = self.options_source("openvino runtime option")
        core = ov.Core()
        config = self._config(core, where)
        if not self.artifact.is_file():
            raise ModelLoadError(f"artifact {self.artifact} does not exist")
        try:
            model = core.read_model(str(self.artifact))
        except Exception as exc:  # OpenVINO raises RuntimeError with the parser's message
            raise ModelLoadError(f"openvino cannot read {self.artifact}: {exc}") from None
        mode = self.options.get("dynamic_batch", "auto")
        batching = mode is True or (mode == "auto" and declared is not None and declared.max_batch_size > 0)
        if batching:
            self._variable_batch(model)
        try:
            self._compiled = core.compile_model(model, self._device, config)
        except Exception as exc:  # unsupported operations or properties on this device
            raise ModelLoadError(
                f"openvino cannot compile {self.artifact} for {self._device}: {exc}"
            ) from None
        self._inputs = [self._tensor(p) for p in self._compiled.inputs]
        self._outputs = [self._tensor(p) for p in self._compiled.outputs]
        self._bf16_outputs = {t.name for t in self._outputs if t.datatype == "BF16"}
        count = _int_option(self.options, "num_requests", where, 1)
        if count is None:
            count = (
                1
                if self._hint == "LATENCY"
                else int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            )
        self._split = batching and all(t.shape and t.shape[0] == -1 for t in (*self._inputs, *self._outputs))
        if count > 1:
            self._queue = ov.AsyncInferQueue(self._compiled, count)
            self._queue.set_callback(self._finished)
        self._request = self._compiled.create_infer_request()

    def _variable_batch(self, model: Any) -> None:
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_static and shape.rank.get_length() >= 1 and shape[0].is_static:
                dims = [ov.Dimension(-1), *list(shape)[1:]]
                shapes[port.get_any_name()] = ov.PartialShape(dims)
        if not shapes:
            return
        try:
            model.reshape(shapes)
        except Exception as exc:  # a graph with the batch size baked into its operations
            raise ModelLoadError(
                f"{self.artifact}: cannot give inputs {sorted(shapes)} a variable batch dimension: {exc}"
            ) from None

    def _tensor(self, port: Any) -> EngineTensor:
        try:
            name = port.get_any_name()
        except RuntimeError:
            raise ModelLoadError(f"{self.artifact}: a model input or output has no tensor name") from None
        kind = port.get_element_type().get_type_name()
        if kind not in _OV_TO_OIP:
            raise ModelLoadError(f"{self.artifact}: tensor '{name}' has unsupported element type {kind}")
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else -1 for d in shape) if shape.rank.is_static else (-1,)
        return EngineTensor(name, _OV_TO_OIP[kind], dims)

    def inputs(self) -> list[EngineTensor]:
        return list(self._inputs)

    def outputs(self) -> list[EngineTensor]:
        return list(self._outputs)

    def device(self) -> str:
        return self._execution_devices()[0].lower() if self._compiled is not None else self._device.lower()

    def _execution_devices(self) -> list[str]:
        try:
            return [str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")] or [self._device]
        except RuntimeError:
            return [self._device]

    def describe(self) -> dict[str, Any]:
        if self._compiled is None:
            return {}
        try:
            value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            precision = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except RuntimeError:
            precision = "device default"
        return {
            "openvino_device": self._device,
            "execution_devices": self._execution_devices(),
            "performance_hint": self._hint,
            "inference_precision": precision,
            "num_requests": len(self._queue) if self._queue is not None else 1,
            "openvino": ov.__version__,
        }

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        feed: dict[str, Any] = {}
        for spec in self._inputs:
            array = np.ascontiguousarray(inputs[spec.name])
            if spec.datatype == "BF16":
                tensor = ov.Tensor(ov.Type.bf16, list(array.shape))
                tensor.data.view(np.uint16)[...] = array
                feed[spec.name] = tensor
            else:
                feed[spec.name] = array
        return feed

    def _collect(self, request: Any, names: list[str]) -> dict[str, np.ndarray]:
        results = {}
        for name in names:
            data = request.get_tensor(name).data
            results[name] = (data.view(np.uint16) if name in self._bf16_outputs else data).copy()
        return results

    def _finished(self, request: Any, slot: tuple[int, list[str]]) -> None:
        index, names = slot
        try:
            self._results[index] = self._collect(request, names)
        except Exception as exc:  # reported by run() on the calling thread
            self._results[index] = exc

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise InferenceFailed("model instance is not loaded")
        try:
            batch = len(next(iter(inputs.values()))) if inputs and self._split else 0
            if self._queue is None or batch < 2:
                self._request.infer(self._feed(inputs), share_inputs=True, share_outputs=True)
                return self._collect(self._request, output_names)
            return self._run_split(inputs, batch, output_names)
        except InferenceFailed:
            raise
        except Exception as exc:  # the engine's own error text is what the client needs
            raise InferenceFailed(f"openvino: {exc}") from exc

    def _run_split(
        self, inputs: dict[str, np.ndarray], batch: int, names: list[str]
    ) -> dict[str, np.ndarray]:
        """Run ``parts`` slices of the batch at once on the request queue; outputs in batch order."""
        parts = min(len(self._queue), batch)
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        with self._lock:
            self._results = [None] * parts
            for index in range(parts):
                start, stop = bounds[index], bounds[index + 1]
                chunk = self._feed({k: v[start:stop] for k, v in inputs.items()})
                self._queue.start_async(chunk, (index, names))  # copies the inputs (share_inputs=False)
            self._queue.wait_all()
            results = list(self._results)
        for result in results:
            if isinstance(result, Exception) or result is None:
                raise InferenceFailed(f"openvino: {result or 'a batch part produced no result'}")
        return {name: np.concatenate([r[name] for r in results]) for name in names}

    def unload(self) -> None:
        self._queue = self._request = self._compiled = None
