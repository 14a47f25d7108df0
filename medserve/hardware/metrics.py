"""Prometheus metrics of energy use: ``medserve_energy_joules_total{model,version,device,source}``."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter

ENERGY_LABELS = ("model", "version", "device", "source")


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
