"""Trace level TENSORS: a traced request's span carries its tensors (name, datatype, shape, element
count, the first values; BYTES as lengths only), TIMESTAMPS and untraced requests carry none, and
turning TENSORS on logs a warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medserve.monitoring import tracing
from medserve.values.types import Tensor


@pytest.fixture()
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.configure_tracing(exporter=memory)
    yield memory
    tracing.shutdown_tracing()
    tracing.TRACE_SETTINGS.reset()


def tensor(name: str, datatype: str, data: np.ndarray) -> Tensor:
    return Tensor(name, datatype, tuple(data.shape), data)


def traced_request(model: str, inputs: list[Tensor], outputs: list[Tensor]) -> None:
    with tracing.door_span("POST infer", "http", model, {}) as span:
        assert span is not None
        with tracing.child_span("medserve.inference"):
            tracing.record_tensors(model, "TENSOR_QUEUE_INPUT", inputs)
            tracing.record_tensors(model, "TENSOR_BACKEND_OUTPUT", outputs)


def test_tensors_level_records_bounded_tensors(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medserve.monitoring.tracing"):
        tracing.TRACE_SETTINGS.update("m", {"trace_level": ["TENSORS"], "trace_rate": ["1"]})
    assert any("TENSORS" in r.getMessage() and "patient data" in r.getMessage() for r in caplog.records)
    image = np.arange(2 * 3 * 40, dtype=np.float32).reshape(2, 3, 40) / 4
    notes = np.array([b"Jane Doe, MRN 123", "é".encode()], dtype=object)
    inputs = [
        tensor("IMAGE", "FP32", image),
        tensor("NOTE", "BYTES", notes),
        tensor("HALF", "BF16", np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)),
        tensor("BIG", "UINT64", np.array([2**64 - 1], dtype=np.uint64)),
    ]
    outputs = [tensor("PROB", "FP64", np.array([[0.25, 0.75]])), tensor("FLAG", "BOOL", np.array([True]))]
    traced_request("m", inputs, outputs)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "medserve.inference"]
    events = {(e.name, e.attributes["medserve.tensor.name"]): dict(e.attributes) for e in span.events}  # type: ignore[index]
    assert set(events) == {
        ("TENSOR_QUEUE_INPUT", "IMAGE"),
        ("TENSOR_QUEUE_INPUT", "NOTE"),
        ("TENSOR_QUEUE_INPUT", "HALF"),
        ("TENSOR_QUEUE_INPUT", "BIG"),
        ("TENSOR_BACKEND_OUTPUT", "PROB"),
        ("TENSOR_BACKEND_OUTPUT", "FLAG"),
    }
    first = events[("TENSOR_QUEUE_INPUT", "IMAGE")]
    assert first["medserve.tensor.datatype"] == "FP32"
    assert tuple(first["medserve.tensor.shape"]) == (2, 3, 40)
    assert first["medserve.tensor.elements"] == 240 and first["medserve.tensor.truncated"] is True
    assert list(first["medserve.tensor.values"]) == [i / 4 for i in range(tracing.TENSOR_VALUES)]
    note = events[("TENSOR_QUEUE_INPUT", "NOTE")]
    assert list(note["medserve.tensor.byte_lengths"]) == [17, 2] and "medserve.tensor.values" not in note
    assert not any("Jane" in str(value) for attributes in events.values() for value in attributes.values())
    assert list(events[("TENSOR_QUEUE_INPUT", "HALF")]["medserve.tensor.values"]) == [1.5, -2.0]
    assert list(events[("TENSOR_QUEUE_INPUT", "BIG")]["medserve.tensor.values"]) == [str(2**64 - 1)]
    prob = events[("TENSOR_BACKEND_OUTPUT", "PROB")]
    assert list(prob["medserve.tensor.values"]) == [0.25, 0.75] and prob["medserve.tensor.truncated"] is False
    assert list(events[("TENSOR_BACKEND_OUTPUT", "FLAG")]["medserve.tensor.values"]) == [True]


def test_timestamps_level_and_untraced_requests_record_no_tensors(exporter: InMemorySpanExporter) -> None:
    tracing.TRACE_SETTINGS.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]})
    data = tensor("X", "INT32", np.array([1, 2, 3], dtype=np.int32))
    traced_request("m", [data], [data])
    assert all(not s.events for s in exporter.get_finished_spans())
    tracing.TRACE_SETTINGS.update("m", {"trace_level": ["TENSORS"]})
    tracing.record_tensors("m", "TENSOR_QUEUE_INPUT", [data])  # no span: not traced, nothing recorded
    tracing.TRACE_SETTINGS.update("other", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]})
    traced_request("m", [data], [])
    assert sum(len(s.events) for s in exporter.get_finished_spans()) == 1
    traced_request("other", [data], [data])  # the level is per model
    assert sum(len(s.events) for s in exporter.get_finished_spans()) == 1
