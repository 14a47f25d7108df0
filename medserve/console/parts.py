"""What the console reads from: the server's parts, handed over by ``medserve.server`` at start-up.

The pages call the same public methods the JSON doors call (``InferenceService``, ``JobManager``,
``ImagingService``, ``AlertHub``, the patient monitor's ward board), with the signed-in operator's
``Caller``, so roles and grants apply as they do on the API; the metrics are read from the server's
own Prometheus registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from medserve.console.live import LiveWindow
from medserve.core.service import InferenceService
from medserve.hardware.devices import Discovery
from medserve.imaging.service import ImagingService
from medserve.jobs.manager import JobManager
from medserve.store.database import Database
from medserve.streaming.alerts import AlertHub
from medserve.streaming.monitor import PatientMonitor
from medserve.values.access import Action, Caller
from medserve.values.errors import MedserveError

#: the pipeline model name alerts and the ward are authorised under (as on the streaming door)
MONITOR_MODEL = "patient_monitor"


class AuditTrailLike(Protocol):
    journal_dir: Path

    def flush(self, timeout_s: float = 10.0) -> bool: ...


@dataclass
class ConsoleParts:
    service: InferenceService
    registry: CollectorRegistry
    database: Database
    audit: AuditTrailLike | None = None
    jobs: JobManager | None = None
    imaging: ImagingService | None = None
    monitor: PatientMonitor | None = None
    alerts: AlertHub | None = None
    discovery: Callable[[], Discovery] | None = None
    replica_stale_after_s: float = 15.0
    """A replica whose heartbeat is older than this is shown lost (three heartbeats by default)."""
    live: LiveWindow = field(init=False)
    _devices: Discovery | None = field(init=False, default=None)
    _discovering: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.live = LiveWindow(self.registry)

    def devices(self) -> Discovery | None:
        """The machine's devices once discovered; the first call starts the discovery in the background
        (it imports the optional engines, seconds on a small machine) and pages show ids until then."""
        if self._devices is None and self.discovery is not None and self._discovering is None:
            discover = self.discovery

            def run() -> None:
                self._devices = discover()

            self._discovering = threading.Thread(target=run, name="console-device-discovery", daemon=True)
            self._discovering.start()
        return self._devices


def visible_models(parts: ConsoleParts, caller: Caller) -> list[str]:
    """The loaded models the caller may see (their names, once each)."""
    rows = parts.service.repository_index(True, caller)
    return sorted({row.name for row in rows})


def placement_of(parts: ConsoleParts, caller: Caller, model: str) -> dict[str, Any]:
    """The placement the serving version of ``model`` runs with (source, explanation, instances)."""
    try:
        metadata = parts.service.model_metadata(model, "", caller)
    except MedserveError:
        return {}
    placement = metadata.parameters.get("placement")
    return placement if isinstance(placement, dict) else {}


def device_groups(parts: ConsoleParts, caller: Caller, models: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Each model's (device, instances) pairs, from its configuration's instance groups."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for model in models:
        try:
            config = parts.service.model_config(model, "", caller)
        except MedserveError:
            continue
        pairs = []
        for group in config.get("instance_group", []):
            name = str(group.get("name", ""))
            device = name[len(model) + 1 :] if name.startswith(f"{model}_") else "cpu"
            pairs.append((device, int(group.get("count", 1))))
        groups[model] = pairs
    return groups


def may(caller: Caller, action: Action, model: str | None = None) -> bool:
    return caller.principal.may(action, model)
