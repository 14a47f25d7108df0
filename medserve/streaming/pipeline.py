"""The patient monitor as an Open Inference Protocol model (``patient_monitor``), so that gRPC
``ModelStreamInfer`` with Triton's sequence parameters, and plain ``ModelInfer``, reach it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from medserve.streaming.messages import (
    MONITOR_MODEL,
    NEWS2_FIELDS,
    VITAL_FIELDS,
    MonitorResult,
    MonitorSample,
    vitals_from_array,
)
from medserve.streaming.monitor import PatientMonitor
from medserve.values.access import Caller
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceRequest, InferenceResponse, ModelMetadata, Tensor, TensorMetadata

_INPUTS = {
    "SAMPLE_SEQ": ("INT64", [1]),
    "TIMESTAMP": ("FP64", [1]),
    "VITALS": ("FP32", [len(VITAL_FIELDS)]),
    "ECG": ("FP32", [-1]),
}
_OUTPUTS = {
    "VERDICT": ("BYTES", [1]),
    "NEWS2": ("INT32", [len(NEWS2_FIELDS) + 1]),
    "RISK": ("BYTES", [1]),
    "RHYTHM": ("BYTES", [1]),
    "RHYTHM_PROBABILITIES": ("FP32", [-1]),
    "ALERTS": ("BYTES", [-1]),
}


def _scalar(tensors: dict[str, Tensor], name: str) -> float:
    tensor = tensors.get(name)
    if tensor is None:
        raise InvalidInput(f"input '{name}' is required by '{MONITOR_MODEL}'")
    if tensor.data.size != 1:
        raise InvalidInput(f"input '{name}' must hold one value, got {tensor.data.size}")
    return float(tensor.data.reshape(-1)[0])


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{name}' must be a boolean")
    return value


def sample_from_request(request: InferenceRequest) -> MonitorSample:
    tensors: dict[str, Tensor] = {}
    for tensor in request.inputs:
        expected = _INPUTS.get(tensor.name)
        if expected is None:
            raise InvalidInput(
                f"'{MONITOR_MODEL}' has no input '{tensor.name}'; inputs: {', '.join(_INPUTS)}"
            )
        if tensor.datatype != expected[0]:
            raise InvalidInput(f"input '{tensor.name}' must be {expected[0]}, got {tensor.datatype}")
        tensors[tensor.name] = tensor
    sequence_id = request.parameters.get("sequence_id")
    if sequence_id is None:
        raise InvalidInput(f"'{MONITOR_MODEL}' needs the 'sequence_id' request parameter")
    seq = _scalar(tensors, "SAMPLE_SEQ")
    scale = request.parameters.get("spo2_scale", 1)
    return MonitorSample(
        sequence_id=sequence_id,
        sample_seq=int(seq),
        timestamp=_scalar(tensors, "TIMESTAMP"),
        start=_flag(request.parameters, "sequence_start"),
        end=_flag(request.parameters, "sequence_end"),
        vitals=vitals_from_array(tensors["VITALS"].data) if "VITALS" in tensors else {},
        spo2_scale=int(scale) if isinstance(scale, (int, str)) and str(scale).isdigit() else -1,
        ecg=tensors["ECG"].data.reshape(-1).astype(np.float32) if "ECG" in tensors else None,
    )


def _bytes_tensor(name: str, values: list[bytes]) -> Tensor:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return Tensor(name, "BYTES", (len(values),), array)


def result_to_response(result: MonitorResult, request: InferenceRequest) -> InferenceResponse:
    news2 = np.full(len(NEWS2_FIELDS) + 1, -1, dtype=np.int32)
    if result.news2 is not None:
        scores = result.news2.parameter_scores()
        news2[:-1] = [scores[name] for name in NEWS2_FIELDS]
        news2[-1] = result.news2.total
    probabilities = result.rhythm_probabilities
    if probabilities is None:
        probabilities = np.full(0, np.nan, dtype=np.float32)
    outputs = [
        _bytes_tensor("VERDICT", [result.verdict.encode()]),
        Tensor("NEWS2", "INT32", news2.shape, news2),
        _bytes_tensor("RISK", [result.news2.risk.value.encode() if result.news2 else b""]),
        _bytes_tensor("RHYTHM", [result.rhythm.encode()]),
        Tensor("RHYTHM_PROBABILITIES", "FP32", probabilities.shape, probabilities),
        _bytes_tensor("ALERTS", [json.dumps(a.to_json()).encode() for a in result.alerts]),
    ]
    wanted = {o.name for o in request.outputs}
    if wanted:
        unknown = wanted - set(_OUTPUTS)
        if unknown:
            raise InvalidInput(f"'{MONITOR_MODEL}' has no output(s) {sorted(unknown)}")
        outputs = [o for o in outputs if o.name in wanted]
    return InferenceResponse(MONITOR_MODEL, "1", request.id, outputs)


class MonitorPipeline:
    """Adapts ``PatientMonitor`` to the service's pipeline interface."""

    name = MONITOR_MODEL

    def __init__(self, monitor: PatientMonitor) -> None:
        self.monitor = monitor

    async def infer(self, request: InferenceRequest, caller: Caller) -> InferenceResponse:
        result = await self.monitor.handle(sample_from_request(request), caller)
        return result_to_response(result, request)

    def metadata(self) -> ModelMetadata:
        def tensors(spec: dict[str, tuple[str, list[int]]]) -> list[TensorMetadata]:
            return [TensorMetadata(name, dt, shape) for name, (dt, shape) in spec.items()]

        return ModelMetadata(
            MONITOR_MODEL,
            ["1"],
            "medserve_pipeline",
            tensors(_INPUTS),
            tensors(_OUTPUTS),
            {
                "task": "patient monitoring: NEWS2 and ECG rhythm alerts",
                "sequence_parameters": "sequence_id, sequence_start, sequence_end (Triton semantics)",
                "vitals_order": list(VITAL_FIELDS),
                "ecg_model": self.monitor.settings.ecg_model,
            },
        )
