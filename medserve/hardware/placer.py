"""Placement applied while serving: the ``Placer`` that :mod:`medserve.core.loading` and the served
model call, built by the server over the profile store.

* **At load** (``placement: auto`` in config.yaml): the newest stored profile for this artifact digest
  on this machine's hardware fingerprint goes through :func:`medserve.hardware.placement.decide`;
  the instances it chose (runtime, device(s), instance count, max batch size, each device's share of
  traffic) are what the model version runs. No current profile (never profiled, the artifact or the
  machine changed, the store unavailable) → config.yaml's values, with the reason logged and shown in
  the model's metadata; ``profile_at_load: true`` profiles the model first instead.
* **Failover**: the next-best placement without a failed device
  (:func:`medserve.hardware.placement.failover`); a model placed by config.yaml moves to the CPU.
* **Energy**: each engine run is metered on its device's shared :class:`EnergyAccount` (NVML, RAPL,
  else busy time × the configured watts, labelled ``estimated``).
* **Live profiles**: engine times of a profile-placed model's executions go back to its profile
  (:class:`medserve.hardware.live.LiveProfiles`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from medserve.hardware.devices import Discovery, canonical_device_id, hardware_fingerprint
from medserve.hardware.energy import (
    EnergyAccount,
    EnergyMeasurement,
    EnergyMeter,
    EstimatedEnergyMeter,
    MeterUnavailable,
    RaplEnergyMeter,
    meter_for,
)
from medserve.hardware.live import LiveProfiles
from medserve.hardware.placement import (
    PlacementDecision,
    PlacementRequest,
    decide,
    failover,
    is_device_fault,
)
from medserve.hardware.profile import ModelProfile, device_option
from medserve.hardware.profile_store import ProfileStore
from medserve.hardware.profiler import (
    DEFAULT_CPU_WATTS,
    DEFAULT_GPU_WATTS,
    profile_model,
    runtime_options_for,
)
from medserve.repository.config import ModelConfig
from medserve.scheduling.execution import ExecutionTimes
from medserve.scheduling.plan import InstanceGroup, InstancePlan, ProfileKey
from medserve.scheduling.pool import Slot
from medserve.values.errors import MedserveError, StoreUnavailable

log = logging.getLogger(__name__)

#: ONNX Runtime options that pin providers (a CUDA provider list must go when moving to the CPU)
_PROVIDER_OPTIONS = ("providers", "execution_providers")


def device_ids(names: Sequence[str] | None, discovery: Discovery) -> tuple[str, ...] | None:
    """config.yaml device names as discovery ids (``CUDA`` → ``cuda:0``, ``GPU`` → ``openvino:GPU``)."""
    if names is None:
        return None
    ids = []
    for name in names:
        found = discovery.device(canonical_device_id(name, "")) or discovery.device(
            canonical_device_id(name, "openvino")
        )
        ids.append(found.id if found is not None else canonical_device_id(name, ""))
    return tuple(ids)


def placement_request(
    name: str, config: ModelConfig, discovery: Discovery, costs: Mapping[str, float] | None = None
) -> PlacementRequest:
    """What config.yaml asks of placement: objective (default latency), slo, devices, and up to
    ``instance_count`` instances per device."""
    return PlacementRequest(
        name,
        objective=config.objective or "latency",
        slo_p99_ms=config.slo_p99_ms,
        max_instances_per_device=config.instance_count,
        cost_per_hour=dict(costs or {}),
        devices=device_ids(config.devices, discovery),
    )


def plan_from_decision(
    decision: PlacementDecision, config: ModelConfig, key: ProfileKey | None
) -> InstancePlan:
    """The instances a placement decision chose, with each device's measured p50 per batch size."""
    groups = []
    for chosen in decision.chosen:
        latency = {
            p.batch_size: p.p50_ms
            for p in decision.points
            if p.runtime == chosen.runtime and p.device == chosen.device and p.usable and p.p50_ms is not None
        }
        groups.append(
            InstanceGroup(
                runtime=chosen.runtime,
                device=chosen.device,
                artifact=chosen.artifact or config.artifact,
                options=runtime_options_for(config, chosen.runtime, chosen.device),
                count=chosen.instances,
                max_batch_size=chosen.max_batch_size if config.max_batch_size > 0 else 0,
                share=chosen.share,
                latency_ms=latency,
            )
        )
    return InstancePlan("profile", decision.explanation, tuple(groups), key, decision)


class HardwarePlacer:
    """Placement at load, failover, energy metering and live profiles (see the module).

    ``store`` None: no profiles (every ``placement: auto`` model falls back to config.yaml).
    ``discovery`` (default: this machine, discovered on first use) is what placement and meters see.
    """

    def __init__(
        self,
        store: ProfileStore | None,
        *,
        discovery: Discovery | Callable[[], Discovery] | None = None,
        cpu_watts: float = DEFAULT_CPU_WATTS,
        gpu_watts: float = DEFAULT_GPU_WATTS,
        live_interval_s: float = 30.0,
        profile_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self._discovery = discovery
        self.cpu_watts = cpu_watts
        self.gpu_watts = gpu_watts
        self.profile_seconds = profile_seconds
        self.live = LiveProfiles(store, interval_s=live_interval_s) if store is not None else None
        self._accounts: dict[str, EnergyAccount] = {}
        self._lock = threading.Lock()

    def discovery(self) -> Discovery:
        if isinstance(self._discovery, Discovery):
            return self._discovery
        if self._discovery is None:
            from medserve.hardware.model_devices import machine_discovery

            self._discovery = machine_discovery
        return self._discovery()

    # -- at load --------------------------------------------------------------------------------
    def _profile(
        self, name: str, version: int, config: ModelConfig, artifact: Path, digest: str
    ) -> tuple[ModelProfile | None, str]:
        """The current profile (profiled now when config.yaml allows it), or None and why not."""
        if self.store is None:
            return None, "no profile store"
        discovery = self.discovery()
        fingerprint = hardware_fingerprint(discovery)
        try:
            profile = self.store.latest(name, digest, fingerprint)
            if profile is not None:
                return profile, ""
            why = self.store.staleness(name, digest, fingerprint) or "no current profile"
            if not config.profile_at_load:
                return None, why
            log.info("model %s version %s: %s; profiling it now (profile_at_load)", name, version, why)
            profile = profile_model(
                artifact.parent.parent,
                version=version,
                seconds_per_point=self.profile_seconds,
                discovery=discovery,
            )
            self.store.save(profile)
            return profile, ""
        except StoreUnavailable as exc:
            return None, f"the profile store is unavailable: {exc}"
        except MedserveError as exc:
            return None, f"profiling at load failed: {exc}"

    def plan(
        self, name: str, version: int, config: ModelConfig, artifact: Path, digest: str
    ) -> InstancePlan | None:
        """None unless config.yaml says ``placement: auto``; then the placed instances, or no groups
        (config.yaml's values) and the reason."""
        if config.placement != "auto":
            return None
        profile, why = self._profile(name, version, config, artifact, digest)
        fallback = "config.yaml's runtime, devices, instance_count and max_batch_size used"
        if profile is None:
            text = f"placement auto: no current profile ({why}); {fallback}; run 'medserve profile {name}'"
            log.warning("model %s version %s: %s", name, version, text)
            return InstancePlan("config", text)
        decision = decide(profile.points, placement_request(name, config, self.discovery()))
        if not decision.chosen:
            text = f"placement auto: {decision.explanation}; {fallback}"
            log.warning("model %s version %s: %s", name, version, text)
            return InstancePlan("config", text)
        log.info("model %s version %s placed: %s", name, version, decision.explanation)
        key = ProfileKey(name, profile.artifact_digest, profile.fingerprint)
        return plan_from_decision(decision, config, key)

    # -- failover -------------------------------------------------------------------------------
    def is_device_fault(self, error: BaseException) -> bool:
        return is_device_fault(error)

    def failover(
        self, name: str, config: ModelConfig, plan: InstancePlan, device: str, reason: str
    ) -> InstancePlan | None:
        """The next-best placement without ``device``; a config.yaml placement moves to the CPU."""
        if isinstance(plan.decision, PlacementDecision):
            moved = failover(plan.decision, device, reason)
            if not moved.chosen:
                return None
            return plan_from_decision(moved, config, plan.profile)
        failed = [g for g in plan.groups if g.device == device]
        if device == "cpu" or not failed:
            return None
        group = failed[0]
        options = {k: v for k, v in group.options.items() if k not in _PROVIDER_OPTIONS}
        options["device"] = device_option(group.runtime, "cpu")
        cpu = InstanceGroup(group.runtime, "cpu", group.artifact, options, group.count, group.max_batch_size)
        explanation = (
            f"failover: {device} failed ({reason}); config.yaml's {group.runtime} instances moved to cpu"
        )
        return InstancePlan("config", explanation, (cpu,))

    # -- energy ---------------------------------------------------------------------------------
    def _meter(self, device: str) -> EnergyMeter:
        if device == "cpu":
            try:
                return RaplEnergyMeter()
            except MeterUnavailable as exc:
                return EstimatedEnergyMeter(self.cpu_watts, reason=str(exc))
        found = self.discovery().device(canonical_device_id(device, ""))
        if found is None:
            return EstimatedEnergyMeter(self.gpu_watts, reason=f"{device} is not a discovered device")
        return meter_for(found, cpu_watts=self.cpu_watts, gpu_watts=self.gpu_watts)

    def account(self, device: str) -> EnergyAccount:
        """The energy account shared by everything that runs on ``device`` in this process."""
        with self._lock:
            account = self._accounts.get(device)
            if account is None:
                account = self._accounts[device] = EnergyAccount(self._meter(device))
            return account

    def energy(self, slot: Slot) -> AbstractContextManager[EnergyMeasurement]:
        """Meters one engine run on ``slot``'s device."""
        return self.account(slot.device).measure()

    # -- live profiles --------------------------------------------------------------------------
    def observe(self, plan: InstancePlan, execution: ExecutionTimes) -> None:
        if self.live is not None and plan.profile is not None and execution.device:
            self.live.record(
                plan.profile,
                execution.runtime,
                execution.device,
                execution.batch_size,
                execution.infer_ns / 1e6,
            )

    def flush(self) -> None:
        if self.live is not None:
            self.live.flush()

    def close(self) -> None:
        """Write pending live measurements and stop the writer."""
        if self.live is not None:
            self.live.close()
