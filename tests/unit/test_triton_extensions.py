"""Triton's extensions as plain values: shared memory regions (bounds, owners, cleanup), a load's
config override, the raw binary request, trace settings, log lines, Accept-Encoding q-values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medserve.core.classification import output_labels
from medserve.core.shared_memory import SystemSharedMemory
from medserve.logs import JsonFormatter, LogSettings, bind_request
from medserve.monitoring import tracing
from medserve.protocol.raw_binary import decode_raw_request
from medserve.protocol.repository_load import load_config_override
from medserve.repository.config import ModelConfig
from medserve.repository.triton_config import apply_triton_config
from medserve.transport.http import _accepted_encodings
from medserve.values.access import Caller, Principal, Role
from medserve.values.errors import InvalidConfig, InvalidInput, PermissionDenied, Unsupported
from medserve.values.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)


def _caller(name: str, role: Role = Role.SERVICE) -> Caller:
    return Caller(Principal(name, role), "http", "r1", "")


@pytest.fixture()
def regions(tmp_path: Path) -> SystemSharedMemory:
    (tmp_path / "ct").write_bytes(np.arange(32, dtype=np.float32).tobytes())  # 128 bytes
    return SystemSharedMemory(root=tmp_path)


def _placed(name: str, offset: int, size: int) -> dict[str, object]:
    return {"shared_memory_region": name, "shared_memory_offset": offset, "shared_memory_byte_size": size}


def test_an_input_is_read_from_its_window_and_an_output_written_to_its_window(
    regions: SystemSharedMemory, tmp_path: Path
) -> None:
    ward = _caller("ward")
    regions.register("volume", "/ct", 0, 128, ward)
    request = InferenceRequest(
        "m",
        inputs=[Tensor("x", "FP32", (4,), np.empty(0, np.uint8), _placed("volume", 16, 16))],
        outputs=[RequestedOutput("y", _placed("volume", 64, 16))],
    )
    regions.resolve_inputs(request, ward)
    np.testing.assert_array_equal(request.inputs[0].data, [4, 5, 6, 7])
    assert request.inputs[0].parameters == {}
    refs = regions.output_refs(request, ward)
    response = InferenceResponse("m", "1", outputs=[Tensor("y", "FP32", (4,), np.full(4, 9, np.float32))])
    regions.place_outputs(response, refs, ward)
    written = np.frombuffer((tmp_path / "ct").read_bytes(), np.float32)
    np.testing.assert_array_equal(written[16:20], [9, 9, 9, 9])
    assert response.outputs[0].parameters["shared_memory_byte_size"] == 16


def test_windows_are_bounds_checked(regions: SystemSharedMemory) -> None:
    ward = _caller("ward")
    with pytest.raises(InvalidInput, match="passes the end of '/ct'"):
        regions.register("volume", "/ct", 64, 65, ward)
    regions.register("volume", "/ct", 64, 64, ward)  # the last 64 bytes
    request = InferenceRequest(
        "m", inputs=[Tensor("x", "FP32", (4,), np.empty(0), _placed("volume", 56, 16))]
    )
    with pytest.raises(InvalidInput, match="passes the end of region 'volume' \\(64 bytes\\)"):
        regions.resolve_inputs(request, ward)
    short = InferenceRequest("m", inputs=[Tensor("x", "FP32", (8,), np.empty(0), _placed("volume", 0, 16))])
    with pytest.raises(InvalidInput):
        regions.resolve_inputs(short, ward)  # 16 bytes cannot hold 8 FP32 values
    with pytest.raises(InvalidInput, match="already registered"):
        regions.register("volume", "/ct", 0, 8, ward)


@pytest.mark.parametrize("key", ["../etc/passwd", "/a/b", "..", "/"])
def test_only_shared_memory_objects_can_be_mapped(regions: SystemSharedMemory, key: str) -> None:
    with pytest.raises(InvalidInput, match="not a POSIX shared memory name|cannot open"):
        regions.register("r", key, 0, 8, _caller("ward"))


def test_a_region_belongs_to_the_principal_who_registered_it(regions: SystemSharedMemory) -> None:
    regions.register("volume", "/ct", 0, 128, _caller("ward"))
    other = _caller("lab")
    assert regions.status("", other) == []
    with pytest.raises(InvalidInput, match="not registered"):
        regions.status("volume", other)
    request = InferenceRequest("m", inputs=[Tensor("x", "FP32", (4,), np.empty(0), _placed("volume", 0, 16))])
    with pytest.raises(InvalidInput, match="not registered"):
        regions.resolve_inputs(request, other)
    regions.unregister("", other)  # unregisters only the lab's (none)
    assert [r["name"] for r in regions.status("", _caller("ward"))] == ["volume"]
    with pytest.raises(PermissionDenied):
        regions.register("v2", "/ct", 0, 8, _caller("reader", Role.VIEWER))
    regions.close()
    assert regions.status("", _caller("ward")) == []


def test_a_config_override_changes_batching_and_instances_only() -> None:
    base = ModelConfig(name="simple", max_batch_size=8)
    changed = apply_triton_config(
        base,
        {
            "name": "simple",
            "platform": "onnxruntime_onnx",
            "max_batch_size": "4",
            "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [2, 4]},
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}],
        },
    )
    assert (changed.max_batch_size, changed.instance_count) == (4, 3)
    assert changed.dynamic_batching is not None and changed.dynamic_batching.preferred_batch_sizes == [2, 4]
    camel = apply_triton_config(
        base, {"maxBatchSize": 2, "instanceGroup": [{"count": 2}], "dynamicBatching": {}}
    )
    assert (camel.max_batch_size, camel.instance_count) == (2, 2)
    with pytest.raises(InvalidConfig, match="sequence_batching"):
        apply_triton_config(base, {"sequence_batching": {}})
    with pytest.raises(InvalidConfig, match="'name' is 'other'"):
        apply_triton_config(base, {"name": "other"})
    with pytest.raises(InvalidConfig, match="exceed max_batch_size"):
        apply_triton_config(base, {"dynamic_batching": {"preferred_batch_size": [16]}})


def test_load_parameters() -> None:
    assert load_config_override({}) is None
    assert load_config_override({"config": '{"max_batch_size": 2}'}) == {"max_batch_size": 2}
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_config_override({"config": "{"})
    with pytest.raises(Unsupported, match="file:1/model.onnx"):
        load_config_override({"config": "{}", "file:1/model.onnx": "AAAA"})
    with pytest.raises(InvalidInput, match="unknown load parameter"):
        load_config_override({"colour": "red"})


def test_raw_binary_request_takes_its_shape_from_the_model() -> None:
    metadata = ModelMetadata("m", ["1"], "onnx", [TensorMetadata("x", "FP16", [-1, 4])], [])
    request = decode_raw_request(np.arange(8, dtype=np.float16).tobytes(), metadata)
    assert request.inputs[0].shape == (2, 4) and request.parameters == {"binary_data_output": True}
    with pytest.raises(InvalidInput, match="whole number"):
        decode_raw_request(b"abc", metadata)
    two = ModelMetadata("m", ["1"], "onnx", [TensorMetadata("x", "FP32", [-1, -1])], [])
    with pytest.raises(InvalidInput, match="2 variable dimensions"):
        decode_raw_request(bytes(16), two)


def test_trace_settings_rate_count_and_model_overrides() -> None:
    settings = tracing.TraceSettings()
    assert not settings.sample("m")  # OFF
    settings.update("m", {"trace_level": ["timestamps"], "trace_rate": ["1"], "trace_count": ["2"]})
    assert settings.settings("m")["trace_level"] == ["TIMESTAMPS"]
    assert settings.settings("")["trace_level"] == ["OFF"]
    assert [settings.sample("m") for _ in range(3)] == [True, True, False]
    settings.update("m", {"trace_count": None})
    assert settings.settings("m")["trace_count"] == ["-1"]
    with pytest.raises(InvalidInput, match="unknown trace setting"):
        settings.update("", {"trace_colour": ["red"]})
    with pytest.raises(InvalidInput, match="trace_rate"):
        settings.update("", {"trace_rate": ["fast"]})


def test_spans_door_to_engine_and_audit_share_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing(exporter=exporter)
    try:
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        with tracing.door_span("POST infer", "http", "m", {"traceparent": parent}) as span:
            with tracing.child_span("medserve.inference"):
                tracing.record_execution(1_000, 9_000, 2_000, 4, 5_000, 500)
            with tracing.child_span("audit"):
                pass
            answer = tracing.traceparent(span)
        assert answer is not None and answer.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert set(spans) == {"POST infer", "medserve.inference", "queue", "batch", "engine", "audit"}
        assert {s.context.trace_id for s in spans.values()} == {0x4BF92F3577B34DA6A3CE929D0E0E4736}
        assert spans["engine"].parent.span_id == spans["batch"].context.span_id
        assert spans["batch"].attributes["medserve.batch_size"] == 4
        assert spans["queue"].parent.span_id == spans["medserve.inference"].context.span_id
        with tracing.door_span("POST infer", "http", "m", {}) as untraced:
            assert untraced is None  # trace level OFF and no sampled parent
    finally:
        tracing.shutdown_tracing()


def test_json_log_lines_carry_request_trace_and_principal() -> None:
    bind_request("req-7", "ward")
    record = logging.LogRecord("medserve.x", logging.INFO, __file__, 1, "served %s", ("m",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "served m"
    assert (line["request_id"], line["principal"], line["level"]) == ("req-7", "ward", "INFO")
    assert "trace_id" in line
    settings = LogSettings()
    with pytest.raises(InvalidInput, match="unknown log setting"):
        settings.update({"log_colour": True})
    with pytest.raises(Unsupported):
        settings.update({"log_file": "/tmp/x"})
    with pytest.raises(InvalidInput, match="log_file must be a string"):
        settings.update({"log_file": 1.5})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip;q=0", set()),
        ("gzip;q=0.0, deflate", {"deflate"}),
        ("gzip; q=0.5", {"gzip"}),
        ("br, gzip", {"br", "gzip"}),
    ],
)
def test_accept_encoding_q_values(header: str, expected: set[str]) -> None:
    assert _accepted_encodings(header) == expected


def test_classification_labels_belong_to_the_outputs_that_have_them() -> None:
    assert output_labels(["a", "b"], "probabilities", "probabilities") == ["a", "b"]
    assert output_labels(["a", "b"], "embedding", "probabilities") == []  # not every output
    assert output_labels({"embedding": ["x"]}, "embedding", "probabilities") == ["x"]
    assert output_labels({"embedding": ["x"]}, "probabilities", "probabilities") == []
    assert output_labels(None, "probabilities", "probabilities") == []
