"""ONNX Runtime engine: one ``InferenceSession`` per instance."""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.values.errors import InferenceFailed, InvalidConfig, InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

_ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16

#: providers tried in this order when a model does not name its own
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_KNOWN_OPTIONS = {
    "intra_op_threads",
    "inter_op_threads",
    "execution_providers",
    "providers",
    "device",
    "graph_optimization_level",
    "allow_spinning",
}
#: providers that run on a CUDA device and take a ``device_id`` provider option
_CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _shape(dims: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)


def _to_engine(value: ort.NodeArg) -> EngineTensor:
    try:
        datatype = _ORT_TO_OIP[value.type]
    except KeyError:
        raise ModelLoadError(f"tensor '{value.name}' has unsupported type {value.type}") from None
    return EngineTensor(value.name, datatype, _shape(value.shape))


def default_providers() -> list[str]:
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available]


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    platform = "onnxruntime_onnx"

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        self._session: ort.InferenceSession | None = None
        self._inputs: list[EngineTensor] = []
        self._outputs: list[EngineTensor] = []
        self._bf16_inputs: set[str] = set()
        self._bf16_outputs: set[str] = set()
        self._string_inputs: set[str] = set()
        self._string_outputs: set[str] = set()

    def _where(self) -> str:
        """Error prefix: the model's config.yaml field when the caller declared the model."""
        return self.options_source("onnxruntime option")

    def _providers(self) -> list[Any]:
        """Execution providers from ``providers`` / ``execution_providers`` and ``device``.

        ``device: cuda[:N]`` alone means CUDA (device N) then CPU; with a provider list, N becomes the
        ``device_id`` of its CUDA and TensorRT providers. Neither given: ``default_providers()``.
        """
        installed = ort.get_available_providers()
        if "providers" in self.options and "execution_providers" in self.options:
            raise InvalidConfig(f"{self._where()}: give 'providers' or 'execution_providers', not both")
        requested = self.options.get("providers", self.options.get("execution_providers"))
        if requested is not None and (
            not isinstance(requested, list) or not all(isinstance(p, str) for p in requested) or not requested
        ):
            raise InvalidConfig(
                f"{self._where()} 'providers': must be a list of provider names, got {requested!r}"
            )
        device = self.options.get("device")
        device_id: int | None = None
        if device is not None:
            text = str(device).strip().lower()
            match = re.fullmatch(r"cuda(?::(\d+))?", text)
            if text == "cpu":
                requested = requested or ["CPUExecutionProvider"]
            elif match:
                device_id = int(match.group(1) or 0)
                requested = requested or ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if not any(p in _CUDA_PROVIDERS for p in requested):
                    raise InvalidConfig(
                        f"{self._where()} 'device': '{device}' needs one of {list(_CUDA_PROVIDERS)} in "
                        f"'providers' (given {requested})"
                    )
            else:
                raise InvalidConfig(
                    f"{self._where()} 'device': '{device}' is not cpu, cuda or cuda:N; available "
                    f"providers: {installed} (ort.get_available_providers())"
                )
        if requested is None:
            return list(default_providers())
        missing = [p for p in requested if p not in installed]
        if missing:
            raise InvalidConfig(
                f"{self._where()} 'providers': execution provider(s) {missing} are not available; "
                f"available: {installed} (ort.get_available_providers())"
            )
        if device_id is None:
            return list(requested)
        return [(p, {"device_id": str(device_id)}) if p in _CUDA_PROVIDERS else p for p in requested]

    def _session_options(self) -> tuple[ort.SessionOptions, list[Any]]:
        unknown = set(self.options) - _KNOWN_OPTIONS
        if unknown:
            raise ModelLoadError(
                f"unknown onnxruntime option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}"
            )
        so = ort.SessionOptions()
        # the engine's errors reach the caller and the audit trail as InferenceFailed; its own coloured
        # lines on standard error would break the one-record-a-line log (JSON)
        so.log_severity_level = 4
        so.intra_op_num_threads = int(self.options.get("intra_op_threads", 0))
        so.inter_op_num_threads = int(self.options.get("inter_op_threads", 0))
        level = str(self.options.get("graph_optimization_level", "all"))
        if level not in _OPTIMIZATION_LEVELS:
            raise ModelLoadError(
                f"graph_optimization_level '{level}' is not one of {sorted(_OPTIMIZATION_LEVELS)}"
            )
        so.graph_optimization_level = _OPTIMIZATION_LEVELS[level]
        if not self.options.get("allow_spinning", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = self._providers()
        return so, providers

    def load(self) -> None:
        if not self.artifact.is_file():
            raise ModelLoadError(f"artifact {self.artifact} does not exist")
        so, providers = self._session_options()
        try:
            self._session = ort.InferenceSession(str(self.artifact), so, providers=providers)
        except Exception as exc:  # ORT raises several unrelated exception types for bad models
            raise ModelLoadError(f"onnxruntime cannot load {self.artifact}: {exc}") from exc
        if "providers" in self.options or "execution_providers" in self.options or "device" in self.options:
            wanted = [p if isinstance(p, str) else p[0] for p in providers]
            dropped = [p for p in wanted[:1] if p not in self._session.get_providers()]
            if dropped:  # ORT falls back to CPU when a GPU provider fails to initialise
                raise ModelLoadError(
                    f"onnxruntime could not initialise {dropped[0]} for {self.artifact} (the session "
                    f"has {self._session.get_providers()}); check the device and its libraries"
                )
        self._inputs = [_to_engine(v) for v in self._session.get_inputs()]
        self._outputs = [_to_engine(v) for v in self._session.get_outputs()]
        self._bf16_inputs = {t.name for t in self._inputs if t.datatype == "BF16"}
        self._bf16_outputs = {t.name for t in self._outputs if t.datatype == "BF16"}
        self._string_inputs = {t.name for t in self._inputs if t.datatype == "BYTES"}
        self._string_outputs = {t.name for t in self._outputs if t.datatype == "BYTES"}

    def inputs(self) -> list[EngineTensor]:
        return list(self._inputs)

    def outputs(self) -> list[EngineTensor]:
        return list(self._outputs)

    def device(self) -> str:
        providers = self._session.get_providers() if self._session else []
        first = providers[0] if providers else "CPUExecutionProvider"
        if first in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            device_id = self._session.get_provider_options().get(first, {}).get("device_id", "0")  # type: ignore[union-attr]
            return f"cuda:{device_id}"
        if first == "OpenVINOExecutionProvider":
            return "openvino"
        return "cpu"

    def describe(self) -> dict[str, Any]:
        session = self._session
        return {"providers": session.get_providers() if session else [], "onnxruntime": ort.__version__}

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        feed: dict[str, Any] = {}
        for name, array in inputs.items():
            if name in self._string_inputs:
                feed[name] = _utf8_strings(name, array)
            elif name in self._bf16_inputs:
                feed[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array, dtype=np.uint16), _ONNX_BFLOAT16
                )
            else:
                feed[name] = array
        return feed

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise InferenceFailed("model instance is not loaded")
        feed = self._feed(inputs)
        try:
            if self._bf16_inputs or self._bf16_outputs:
                values = session.run_with_ort_values(
                    output_names,
                    {
                        k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                        for k, v in feed.items()
                    },
                )
                results = [self._from_ort_value(n, v) for n, v in zip(output_names, values)]
            else:
                results = session.run(output_names, feed)
        except Exception as exc:  # the engine's own error text is what the client needs
            raise InferenceFailed(f"onnxruntime: {exc}") from exc
        outputs = dict(zip(output_names, results))
        for name in self._string_outputs.intersection(outputs):
            outputs[name] = _encode_strings(outputs[name])
        return outputs

    def _from_ort_value(self, name: str, value: ort.OrtValue) -> np.ndarray:
        if name not in self._bf16_outputs:
            array: np.ndarray = value.numpy()
            return array
        shape = tuple(value.shape())
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype=np.uint16)
        buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
        return np.ctypeslib.as_array(buffer).reshape(shape).copy()

    def unload(self) -> None:
        self._session = None


def _utf8_strings(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX string tensors hold UTF-8 text: decode BYTES elements, refusing invalid UTF-8."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, bytes):
            try:
                flat[i] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"input '{name}': element {i} is not valid UTF-8; ONNX string tensors hold text"
                ) from None
        else:
            flat[i] = str(item)
    return out


def _encode_strings(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out
