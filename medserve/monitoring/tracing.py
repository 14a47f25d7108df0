"""Request tracing: OpenTelemetry spans from door to queue, batch, engine and audit, with W3C
``traceparent`` in and out, and Triton's trace extension settings (level, rate, count).

With ``trace_level`` ``TENSORS`` (as in Triton) a traced request's ``medserve.inference`` span also
carries its tensors: one ``TENSOR_QUEUE_INPUT`` event per input and one ``TENSOR_BACKEND_OUTPUT`` event
per output, each with the tensor's name, datatype, shape, element count and its first
:data:`TENSOR_VALUES` values (BYTES elements: their lengths only, never their text). That is patient
data in a clinical deployment: a warning is logged whenever the level is set to ``TENSORS``.

A request is traced when its client sent a sampled ``traceparent`` (the hospital's router traces it:
its spans go on under that trace) or when the trace settings pick it (``trace_level`` not ``OFF``,
one request in ``trace_rate``, while ``trace_count`` lasts). A traced request's door span is the parent
of ``medserve.infer`` (the dataplane), whose children are ``queue``, ``batch`` (with ``engine`` inside)
and ``audit``; the door answers with the ``traceparent`` of its span. Spans are exported over OTLP/HTTP
only when an endpoint is configured (off by default); tests read them with the SDK's in-memory exporter.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from medserve.values.errors import InvalidInput
from medserve.values.types import Tensor

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "medserve"

#: Triton's trace settings with their defaults; every value is a list of strings on the wire.
DEFAULTS: dict[str, list[str]] = {
    "trace_level": ["OFF"],
    "trace_rate": ["1000"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
    "trace_file": [""],
    "trace_mode": ["opentelemetry"],
}
LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
#: How many leading elements of each tensor a ``TENSORS`` trace records.
TENSOR_VALUES = 16


class TraceSettings:
    """Triton's trace extension: global settings, optionally overridden per model."""

    def __init__(self) -> None:
        self._global: dict[str, list[str]] = {k: list(v) for k, v in DEFAULTS.items()}
        self._models: dict[str, dict[str, list[str]]] = {}
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def reset(self, level: str = "OFF", rate: int = 1000) -> None:
        with self._lock:
            self._global = {k: list(v) for k, v in DEFAULTS.items()}
            self._models.clear()
        self.update("", {"trace_level": [level], "trace_rate": [str(rate)]})

    def settings(self, model: str = "") -> dict[str, list[str]]:
        with self._lock:
            return {**self._global, **self._models.get(model, {})}

    def update(self, model: str, changes: Mapping[str, list[str] | None]) -> dict[str, list[str]]:
        """Apply ``changes`` (a setting's empty list or None clears a model's override, or resets a
        global one to its default) and return the settings now in force for ``model``."""
        checked: dict[str, list[str] | None] = {}
        for key, value in changes.items():
            if key not in DEFAULTS:
                raise InvalidInput(f"unknown trace setting '{key[:64]}'; known: {', '.join(DEFAULTS)}")
            checked[key] = _checked(key, value) if value else None
        if "TENSORS" in (checked.get("trace_level") or ()):
            log.warning(
                "trace level TENSORS%s: traced requests record their input and output tensors (shapes "
                "and the first %d values) in their spans; do not use it with patient data",
                f" for model '{model}'" if model else "",
                TENSOR_VALUES,
            )
        with self._lock:
            target = self._models.setdefault(model, {}) if model else self._global
            for key, value in checked.items():
                if value is None:
                    if model:
                        target.pop(key, None)
                    else:
                        target[key] = list(DEFAULTS[key])
                else:
                    target[key] = value
        return self.settings(model)

    def sample(self, model: str) -> bool:
        """Whether to trace the next request to ``model`` (uses up one of ``trace_count``)."""
        current = self.settings(model)
        if current["trace_level"] == ["OFF"]:
            return False
        rate = int(current["trace_rate"][0])
        if rate <= 0 or next(self._counter) % rate != 0:
            return False
        count = int(current["trace_count"][0])
        if count == 0:
            return False
        if count > 0:
            with self._lock:
                target = self._models[model] if "trace_count" in self._models.get(model, {}) else self._global
                target["trace_count"] = [str(count - 1)]
        return True


def _checked(key: str, value: list[str]) -> list[str]:
    if key == "trace_level":
        levels = [v.upper() for v in value]
        bad = [v for v in levels if v not in LEVELS]
        if bad:
            raise InvalidInput(f"trace_level {bad[0][:32]!r} is not one of {', '.join(LEVELS)}")
        return levels
    if key in ("trace_rate", "trace_count", "log_frequency"):
        if len(value) != 1 or not value[0].lstrip("-").isdigit():
            raise InvalidInput(f"{key} must be one integer, got {value!r:.64}")
        if int(value[0]) < (-1 if key == "trace_count" else 0):
            raise InvalidInput(f"{key} {value[0]} is out of range")
        return [str(int(value[0]))]
    if key == "trace_mode" and value != ["opentelemetry"]:
        raise InvalidInput("trace_mode must be 'opentelemetry' (the only mode medserve has)")
    return list(value)


#: The process's trace settings, read by the doors and changed through the trace extension.
TRACE_SETTINGS = TraceSettings()


def configure_tracing(
    otlp_endpoint: str = "", *, exporter: SpanExporter | None = None, service_name: str = "medserve"
) -> TracerProvider:
    """Install the tracer provider: OTLP/HTTP export to ``otlp_endpoint`` when given (batched),
    ``exporter`` when given (synchronous, for tests), otherwise spans are made but not exported."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    global _provider
    _provider = provider
    return provider


_provider: TracerProvider | None = None


def shutdown_tracing() -> None:
    """Flush and stop the exporters (server shutdown)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def _tracer() -> trace.Tracer:
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer(_TRACER_NAME)


@contextmanager
def door_span(name: str, door: str, model: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """The span of one request at a door, current inside the block; None when it is not traced.

    ``headers``: the request's headers or gRPC metadata (lower-case keys), read for ``traceparent``.
    """
    carrier = {}  # two look-ups, not a walk over every header (every request comes through here)
    for key in ("traceparent", "tracestate"):
        value = headers.get(key)
        if value is not None:
            carrier[key] = value
    parent = _PROPAGATOR.extract(carrier)
    parent_span = trace.get_current_span(parent).get_span_context()
    if not (parent_span.is_valid and parent_span.trace_flags.sampled) and not TRACE_SETTINGS.sample(model):
        yield None
        return
    attributes = {"medserve.door": door, "medserve.model": model}
    with _tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def traceparent(span: Span | None) -> str | None:
    """The W3C ``traceparent`` header naming ``span``, for the answer; None when not traced."""
    if span is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def current_trace_id() -> str:
    """The current trace's id in hex, or "" (for log lines)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


@contextmanager
def child_span(name: str, **attributes: Any) -> Iterator[None]:
    """A span under the current one (none when the request is not traced)."""
    if not trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with _tracer().start_as_current_span(name, attributes=attributes):
        yield


def record_execution(
    submitted_ns: int, finished_ns: int, queue_ns: int, batch_size: int, infer_ns: int, input_ns: int
) -> None:
    """Add ``queue``, ``batch`` and ``engine`` spans, after the fact, under the current span.

    Times are ``time.perf_counter_ns`` readings and durations from the scheduler's measurement.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        return
    to_wall = time.time_ns() - time.perf_counter_ns()
    tracer = _tracer()
    queue_end = submitted_ns + queue_ns
    tracer.start_span("queue", start_time=submitted_ns + to_wall).end(end_time=queue_end + to_wall)
    batch = tracer.start_span(
        "batch", start_time=queue_end + to_wall, attributes={"medserve.batch_size": batch_size}
    )
    engine_start = queue_end + input_ns
    engine = tracer.start_span(
        "engine", context=trace.set_span_in_context(batch), start_time=engine_start + to_wall
    )
    engine.end(end_time=min(engine_start + infer_ns, finished_ns) + to_wall)
    batch.end(end_time=finished_ns + to_wall)


def record_tensors(model: str, activity: str, tensors: Iterable[Tensor]) -> None:
    """With trace level ``TENSORS`` for ``model``, add one ``activity`` event per tensor to the current
    span (a traced request's); nothing otherwise. Values are bounded to :data:`TENSOR_VALUES`."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid or "TENSORS" not in TRACE_SETTINGS.settings(model)["trace_level"]:
        return
    for tensor in tensors:
        span.add_event(activity, attributes=tensor_attributes(tensor))


def tensor_attributes(tensor: Tensor) -> dict[str, Any]:
    """A tensor's name, datatype, shape, element count and first values as span attributes."""
    flat = tensor.data.reshape(-1)[:TENSOR_VALUES]
    attributes: dict[str, Any] = {
        "medserve.tensor.name": tensor.name,
        "medserve.tensor.datatype": tensor.datatype,
        "medserve.tensor.shape": [int(d) for d in tensor.shape],
        "medserve.tensor.elements": int(tensor.data.size),
        "medserve.tensor.truncated": int(tensor.data.size) > TENSOR_VALUES,
    }
    if tensor.datatype == "BYTES":  # free text is where identifiers hide: lengths only
        attributes["medserve.tensor.byte_lengths"] = [
            len(v.encode() if isinstance(v, str) else v) for v in flat
        ]
    elif tensor.datatype == "BOOL":
        attributes["medserve.tensor.values"] = [bool(v) for v in flat]
    elif tensor.datatype in ("FP16", "BF16", "FP32", "FP64"):
        attributes["medserve.tensor.values"] = [float(v) for v in flat.astype("float64")]
    elif tensor.datatype == "UINT64":  # past int64, which OTLP attributes carry
        attributes["medserve.tensor.values"] = [str(int(v)) for v in flat]
    else:
        attributes["medserve.tensor.values"] = [int(v) for v in flat]
    return attributes
