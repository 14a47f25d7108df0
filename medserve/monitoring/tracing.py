"""Request tracing: OpenTelemetry spans from door to queue, batch, engine and audit, with W3C
``traceparent`` in and out, and Triton's trace extension settings (level, rate, count).

A request is traced when its client sent a sampled ``traceparent`` (the hospital's router traces it:
its spans go on under that trace) or when the trace settings pick it (``trace_level`` not ``OFF``,
one request in ``trace_rate``, while ``trace_count`` lasts). A traced request's door span is the parent
of ``medserve.infer`` (the dataplane), whose children are ``queue``, ``batch`` (with ``engine`` inside)
and ``audit``; the door answers with the ``traceparent`` of its span. Spans are exported over OTLP/HTTP
only when an endpoint is configured (off by default); tests read them with the SDK's in-memory exporter.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from medserve.values.errors import InvalidInput

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
    parent = _PROPAGATOR.extract({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
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
