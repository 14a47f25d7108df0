"""Prometheus metrics of energy use, ``medserve_energy_joules_total{model,version,device,source}``, and of
placement failovers, ``medserve_placement_failovers_total{model,from_device,to_device}``."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

ENERGY_LABELS = ("model", "version", "device", "source")
FAILOVER_LABELS = ("model", "from_device", "to_device")

log = logging.getLogger(__name__)


class EnergyMetrics:
    """Energy attributed to each model version on each device, labelled by how it was obtained.

    ``source`` is ``nvml`` or ``rapl`` for measured energy and ``estimated`` for busy time × watts,
    so dashboards can keep measurements and estimates apart.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.joules = Counter(
            "medserve_energy_joules",
            "Energy attributed to inference, in joules (source: nvml, rapl or estimated).",
            ENERGY_LABELS,
            registry=registry,
        )

    def record(self, model: str, version: str, device: str, joules: float, source: str) -> None:
        """Add ``joules`` (finite, >= 0; zero only creates the series) to the total on ``device``."""
        if not math.isfinite(joules) or joules < 0:
            raise ValueError(f"joules must be a finite number >= 0, not {joules!r}")
        self.joules.labels(model, version, device, source).inc(joules)


class PlacementMetrics:
    """Failovers: a model's instances moved off a faulty device (see ``placement.failover``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failovers = Counter(
            "medserve_placement_failovers",
            "Times a model's instances moved off a failed device (CUDA error, out of memory, ...).",
            FAILOVER_LABELS,
            registry=registry,
        )

    def failed_over(self, model: str, from_device: str, to_devices: Sequence[str], reason: str) -> None:
        """Log the event and count it; ``to_devices`` empty means nowhere was left to go."""
        target = ",".join(to_devices) or "none"
        log.warning(
            "model %s: device %s failed (%s); instances move to %s", model, from_device, reason, target
        )
        self.failovers.labels(model, from_device, target).inc()
