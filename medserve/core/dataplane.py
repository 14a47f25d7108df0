"""The one builder of the dataplane from settings: the model registry and the ``InferenceService`` over
it, with what both need wired in (the serving metrics, the priority classes, the device arbiter across
models, the lineage book, the audit trail unless it is turned off, pseudonyms) and, for a server,
placement at load and output monitoring.

``medserve.server`` (the server) and ``medserve.jobs.standalone`` (``medserve job run``) both build
here, so a job run without a server meets the same dataplane as one inside it. It lives in ``core``,
not beside the server: it reads ``medserve.settings`` and takes the parts ``medserve.trust`` opened,
which import only the floors below ``core`` (scheduling, store, security, audit, repository), so every
import here points down and the workflow floor (``jobs``) may call it. This is the one place outside
the service itself that holds the registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from medserve.core.cluster_placement import ClusterPlacer
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.hardware.placer import HardwarePlacer
from medserve.hardware.profile_store import ProfileStore
from medserve.monitoring.drift import ModelMonitor
from medserve.monitoring.fleet import FleetMonitor
from medserve.repository.repository import ModelRepository
from medserve.settings import Settings
from medserve.store.identity import replica_id
from medserve.trust import Trust

log = logging.getLogger("medserve")


@dataclass
class Dataplane:
    """What the builder made; ``close`` unloads the models and closes what the builder opened (the
    trust parts stay the caller's: the last audit records come after the models are unloaded)."""

    service: InferenceService
    metrics: ServingMetrics
    monitor: ModelMonitor | None = None
    """Output and input statistics per model (``None`` without monitoring)."""
    placer: HardwarePlacer | None = None
    """Placement at load, device failover, energy metering, live profiles (``None`` without placement)."""
    fleet_monitor: FleetMonitor | None = None
    """The monitor shared with the other replicas through the store (``None`` without monitoring)."""
    cluster: ClusterPlacer | None = None
    """Placement on a Ray cluster (``None`` unless ``cluster_address`` is set)."""

    async def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stopping()
        await self.service.close()
        self.service.readiness.close()
        if self.fleet_monitor is not None:
            await asyncio.to_thread(self.fleet_monitor.stop)
        if self.placer is not None:
            await asyncio.to_thread(self.placer.close)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.close)


def build_dataplane(
    settings: Settings, trust: Trust, *, placement: bool = True, monitoring: bool = True
) -> Dataplane:
    """The registry and service from ``settings`` over the opened ``trust`` parts.

    ``placement``: plan instances from the stored hardware profiles (``placement: auto``), fail over
    on device faults, meter energy and write live profiles back. ``monitoring``: keep output
    distributions per model (sampled at ``monitoring_max_per_s``; 0 keeps the monitor empty) and show
    them, with the audit trail's health, in the metrics. The server turns both on; ``medserve job run``
    turns both off (it serves no metrics, and places instances as config.yaml says).
    """
    metrics = ServingMetrics()
    cluster = None
    if settings.cluster_address:  # engines run on the cluster's nodes: nothing to place on this machine
        cluster = ClusterPlacer(
            settings.cluster_address,
            settings.cluster_resources,
            settings.cluster_autoscaling,
            load_timeout_s=settings.cluster_load_timeout_s,
        )
    placer = HardwarePlacer(ProfileStore(trust.database)) if placement and cluster is None else None
    registry = ModelRegistry(
        ModelRepository(settings.repository),
        metrics,
        trust.lineage,
        priority_classes=settings.priority_table(),
        cross_model_wait_s=settings.cross_model_wait_s,
        placer=cluster or placer,
    )
    monitor = ModelMonitor(window_s=settings.monitoring_window_s) if monitoring else None
    shared = None
    if monitor is not None:  # the endpoint answers for every replica sharing the store
        rid = replica_id(settings.replica_id, settings.data_dir)
        shared = FleetMonitor(monitor, trust.database, rid, share_every_s=settings.monitoring_share_s)
    service = InferenceService(
        registry,
        trust.authenticator,
        audit=None if settings.audit_disabled else trust.audit,
        pseudonyms=trust.pseudonyms,
        observer=shared if shared is not None and settings.monitoring_max_per_s > 0 else None,
        observe_per_s=settings.monitoring_max_per_s,
    )
    service.readiness.watch_store(trust.database.ping)  # a replica that cannot reach its store is not ready
    if monitor is not None:
        metrics.watch_trust(trust.audit, monitor)
    if settings.audit_disabled:
        log.warning("AUDIT IS DISABLED (audit_disabled=true): no inference is recorded. Benchmarks only.")
    if shared is not None:
        shared.start()
    return Dataplane(service, metrics, monitor, placer, shared, cluster)
