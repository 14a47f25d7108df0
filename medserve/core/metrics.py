"""Prometheus metrics of the serving core, per model and version."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medserve.hardware.metrics import EnergyMetrics, PlacementMetrics
from medserve.scheduling.queue import DROP_REASONS

# Latency buckets from 100 µs to 60 s: clinical models range from tiny tabular ones to 3D volumes.
_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_LABELS = ("model", "version")

#: Outcomes of a request as its priority class's deadline sees it: attainment of a class is
#: met_deadline / (met_deadline + missed_deadline + expired + rejected).
CLASS_OUTCOMES = ("met_deadline", "missed_deadline", "expired", "rejected")


def failure_reason(exc: BaseException) -> str:
    """``InvalidInput`` → ``invalid_input``: the reason label of a failed request."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class AuditGauges(Protocol):
    @property
    def backlog(self) -> int: ...

    @property
    def database_healthy(self) -> bool: ...

    @property
    def written_total(self) -> int: ...


class DriftScores(Protocol):
    def scores(self) -> Iterable[tuple[str, str, str, str, float]]: ...


class _DriftCollector(Collector):
    """``medserve_model_drift_score{model,version,tensor,kind}`` from the model monitor."""

    def __init__(self, drift: DriftScores) -> None:
        self._drift = drift

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "medserve_model_drift_score",
            "Drift of the current window against the reference window: PSI for output distributions "
            "(kind=psi; > 0.25 significant), standardised mean shift for inputs (kind=mean_shift).",
            labels=["model", "version", "tensor", "kind"],
        )
        for model, version, tensor, kind, value in self._drift.scores():
            family.add_metric([model, version, tensor, kind], value)
        yield family


class ServingMetrics:
    """The metric families; one instance per server, each with its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_success = Counter(
            "medserve_inference_request_success", "Successful inference requests.", _LABELS, registry=r
        )
        self.request_failure = Counter(
            "medserve_inference_request_failure",
            "Failed inference requests, by reason.",
            (*_LABELS, "reason"),
            registry=r,
        )
        self.inference_count = Counter(
            "medserve_inference_count",
            "Inferences performed (a request with batch size N counts N).",
            _LABELS,
            registry=r,
        )
        self.execution_count = Counter(
            "medserve_inference_exec_count",
            "Model executions (inference_count / exec_count is the average batch size).",
            _LABELS,
            registry=r,
        )
        self.request_duration = Histogram(
            "medserve_request_duration_seconds",
            "End-to-end time of an inference request inside the server.",
            _LABELS,
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "medserve_queue_duration_seconds",
            "Time a request waited in the batcher's queue.",
            _LABELS,
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "medserve_compute_duration_seconds",
            "Time of one model execution (merge, engine run, split).",
            _LABELS,
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "medserve_batch_size",
            "Batch size of each model execution.",
            _LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge(
            "medserve_queue_depth", "Requests waiting in the batcher's queue.", _LABELS, registry=r
        )
        self.requests_by_class = Counter(
            "medserve_requests_by_class",
            "Inference requests by priority class and deadline outcome: met_deadline (answered in time; "
            "always for a class without deadline), missed_deadline (answered late), expired (deadline "
            "passed while queued, HTTP 504) or rejected (refused by admission control or a full queue, "
            "HTTP 503). Requests failing for other reasons are not counted.",
            (*_LABELS, "class", "outcome"),
            registry=r,
        )
        self.requests_dropped = Counter(
            "medserve_requests_dropped",
            "Inference requests that left the batcher's queue without running, by reason: deadline "
            "(its deadline passed while queued), client_gone (the client disconnected or cancelled the "
            "call while it was queued) or shed (a full queue made room for a more urgent request).",
            (*_LABELS, "reason"),
            registry=r,
        )
        self.class_queue_depth = Gauge(
            "medserve_queue_depth_by_class",
            "Requests waiting in the batcher's queue, by priority class.",
            (*_LABELS, "class"),
            registry=r,
        )
        self._watched_classes: dict[tuple[str, str], list[str]] = {}
        #: joules per model, version and device, labelled measured (nvml, rapl) or estimated
        self.energy = EnergyMetrics(r)
        #: model instances moved off a failed device
        self.placement = PlacementMetrics(r)

        self.monitor_samples = Counter(
            "medserve_monitor_samples",
            "Patient monitor samples, by verdict (accepted, duplicate, out_of_order, refused).",
            ("verdict",),
            registry=r,
        )
        self.monitor_alerts = Counter(
            "medserve_monitor_alerts", "Patient monitor alerts, by kind.", ("kind",), registry=r
        )
        self.monitor_streams = Gauge(
            "medserve_monitor_open_streams", "Open patient streams (sequences).", registry=r
        )

    def watch_trust(self, audit: AuditGauges, drift: DriftScores) -> None:
        """Audit trail health and model drift scores, read when metrics are scraped."""
        r = self.registry
        Gauge(
            "medserve_audit_backlog", "Audit records journaled but not yet in the database.", registry=r
        ).set_function(lambda: float(audit.backlog))
        Gauge(
            "medserve_audit_database_up", "1 while the audit database accepts records, else 0.", registry=r
        ).set_function(lambda: 1.0 if audit.database_healthy else 0.0)
        Gauge(
            "medserve_audit_records_written", "Audit records written to the journal since start.", registry=r
        ).set_function(lambda: float(audit.written_total))
        r.register(_DriftCollector(drift))

    def watch_queue(self, model: str, version: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model, version).set_function(lambda: float(depth()))

    def watch_class_queues(
        self, model: str, version: str, classes: Iterable[str], depth: Callable[[str], int]
    ) -> None:
        """Queue length per priority class, read when metrics are scraped; outcome counters start at 0."""
        names = list(classes)
        self._watched_classes[(model, version)] = names

        def reader(name: str) -> Callable[[], float]:
            return lambda: float(depth(name))

        for name in names:
            self.class_queue_depth.labels(model, version, name).set_function(reader(name))
            for outcome in CLASS_OUTCOMES:
                self.requests_by_class.labels(model, version, name, outcome)

    def dropper(self, model: str, version: str) -> Callable[[str], None]:
        """The batcher's ``on_drop`` for one model version; its counters start at 0."""
        for reason in DROP_REASONS:
            self.requests_dropped.labels(model, version, reason)

        def dropped(reason: str) -> None:
            self.requests_dropped.labels(model, version, reason).inc()

        return dropped

    def class_outcome(self, model: str, version: str, class_name: str, outcome: str) -> None:
        self.requests_by_class.labels(model, version, class_name, outcome).inc()

    def forget(self, model: str, version: str) -> None:
        """Stop watching the queue of an unloaded version (its counters keep their totals)."""
        with contextlib.suppress(KeyError):
            self.queue_depth.remove(model, version)
        for name in self._watched_classes.pop((model, version), []):
            with contextlib.suppress(KeyError):
                self.class_queue_depth.remove(model, version, name)

    def exposition(self, models: frozenset[str] | None = None) -> bytes:
        """The Prometheus text; with ``models`` (a principal's grants) only their samples and the
        samples of no model: a caller never sees figures of a model it is not granted."""
        text = generate_latest(self.registry)
        if models is None:
            return text
        kept = [line for line in text.split(b"\n") if _model_of(line) in (None, *models)]
        return b"\n".join(kept)


_MODEL_LABEL = re.compile(rb'[{,]model="((?:[^"\\]|\\.)*)"')


def _model_of(line: bytes) -> str | None:
    """The ``model`` label of one exposition line; None for comments and samples without one."""
    if line.startswith(b"#"):
        return None
    found = _MODEL_LABEL.search(line)
    return found.group(1).decode("utf-8", "replace") if found else None
