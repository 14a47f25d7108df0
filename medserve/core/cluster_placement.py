"""Placement on a Ray cluster (``cluster_address``): every model version's instances become a Ray Serve
deployment on the cluster instead of engine instances in this process.

This server joins the cluster as a driver in the ``medserve`` namespace and starts Ray Serve without its
HTTP proxy. A version's instance group (config.yaml's runtime, options and ``instance_count``) becomes
``instance_count`` replicas of the model's own engine, each a Ray actor asking for its resources: the CPUs
of its engine threads, a GPU when config.yaml's ``devices`` names one, and the custom resources
``cluster_resources`` gives the model (an NPU or FPGA node declares them with ``ray start --resources``).
Ray places the replicas on the nodes that have them, or leaves them pending with the reason. This
server keeps one engine a replica (``runtimes/ray_serve.py``), so its batcher keeps every replica busy
with one batch and its admission control counts the replicas there are.

The placement lives here rather than in ``hardware/``: it decides nothing from this machine's devices
or profiles (the nodes' hardware is Ray's to match), it only rewrites the instance plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medserve.hardware.profile import device_option
from medserve.repository.config import ModelConfig
from medserve.scheduling.execution import ExecutionTimes, Metered
from medserve.scheduling.plan import InstanceGroup, InstancePlan
from medserve.scheduling.pool import Slot
from medserve.values.errors import InvalidConfig

log = logging.getLogger("medserve")

#: runtime options naming an engine's CPU threads, per engine
_THREAD_OPTIONS = (
    "intra_op_threads",
    "intra_op_num_threads",
    "num_threads",
    "threads",
    "inference_num_threads",
)


@dataclass(frozen=True, slots=True)
class _Unmetered:
    """A replica's energy is measured on its node, not here."""

    joules: float = 0.0
    source: str = "not metered (Ray cluster replica)"


class ClusterPlacer:
    """Plans every version's instances as a Ray Serve deployment on the cluster at ``address``."""

    def __init__(
        self,
        address: str,
        resources: Mapping[str, Mapping[str, float]] | None = None,
        autoscaling: Mapping[str, tuple[int, int]] | None = None,
        *,
        load_timeout_s: float = 120.0,
    ) -> None:
        try:
            import ray
            from ray import serve
        except ImportError:
            raise InvalidConfig(
                "cluster_address is set but Ray is not installed: install medserve's 'ray' extra"
            ) from None
        from medserve.runtimes.ray_serve import NAMESPACE

        self.address = address
        self.resources = {k: dict(v) for k, v in (resources or {}).items()}
        self.autoscaling = dict(autoscaling or {})
        for model, (low, high) in self.autoscaling.items():
            if not 1 <= low <= high:
                raise InvalidConfig(
                    f"cluster_autoscaling: {model}: [min, max] needs 1 <= min <= max, not [{low}, {high}]"
                )
        self.load_timeout_s = load_timeout_s
        _reachable(address)  # Ray itself would retry an unreachable head for minutes, silently
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InvalidConfig(f"cluster_address {address!r}: cannot join the Ray cluster: {exc}") from None
        serve.start(proxy_location="Disabled")  # medserve's doors are the front; no Serve HTTP proxy
        nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        log.info("joined the Ray cluster at %s: %d nodes", address, len(nodes))

    # -- the Placer protocol ---------------------------------------------------------------------------
    def plan(self, name: str, version: int, config: ModelConfig, artifact: Path, digest: str) -> InstancePlan:
        group = self.group(name, version, config, artifact, digest)
        actor = group.options["actor"]
        scaling = group.options.get("autoscaling")
        replicas = (
            f"{scaling['min_replicas']} to {scaling['max_replicas']} replicas (scaled on queue length)"
            if scaling
            else f"{group.count} replica(s)"
        )
        return InstancePlan(
            "cluster",
            f"a Ray Serve deployment of {replicas} on the cluster at {self.address}, "
            f"each asking for {_asked(actor)}",
            (group,),
        )

    def group(
        self, name: str, version: int, config: ModelConfig, artifact: Path, digest: str
    ) -> InstanceGroup:
        """config.yaml's one instance group, as replicas of a deployment."""
        options: dict[str, Any] = dict(config.runtime_options)
        actor: dict[str, Any] = {"num_cpus": _threads(options)}
        gpus = [d for d in config.devices or () if d.lower().startswith(("cuda", "gpu"))]
        if gpus:
            actor["num_gpus"] = 1  # Ray makes the replica's GPU its cuda:0
            options.setdefault("device", device_option(config.runtime, "cuda:0"))
        if self.resources.get(name):
            actor["resources"] = dict(self.resources[name])
        count, scaling = config.instance_count, None
        if name in self.autoscaling:  # one engine here per replica there may be
            low, count = self.autoscaling[name]
            scaling = {"min_replicas": low, "max_replicas": count}
        # one name for one deployment: another door (or a job) loading the same model with the same
        # engine, options and resources finds it and shares it instead of redeploying it
        same = repr((config.runtime, sorted(options.items()), sorted(actor.items()), count, scaling))
        app = f"medserve.{name}.v{version}.{digest[:8]}{hashlib.sha256(same.encode()).hexdigest()[:8]}"
        return InstanceGroup(
            "ray_serve",
            "",
            artifact.name,
            {
                "engine": config.runtime,
                "engine_options": options,
                "app": app,
                "replicas": count,
                "autoscaling": scaling,
                "actor": actor,
                "digest": digest,
                "load_timeout_s": self.load_timeout_s,
            },
            count,
            config.max_batch_size,
        )

    def failover(
        self, name: str, config: ModelConfig, plan: InstancePlan, device: str, reason: str
    ) -> InstancePlan | None:
        return None  # Ray Serve re-creates a lost replica; a lost batch is sent once more

    def is_device_fault(self, error: BaseException) -> bool:
        return False

    def energy(self, slot: Slot) -> AbstractContextManager[Metered]:
        return contextlib.nullcontext(_Unmetered())

    def observe(self, plan: InstancePlan, execution: ExecutionTimes) -> None:
        return None

    def flush(self) -> None:
        return None

    def stopping(self) -> None:
        """The server is stopping: its models' deployments stay on the cluster for the other doors, or
        for this one started again (an explicit unload deletes a model's deployment)."""
        from medserve.runtimes.ray_serve import keep_deployments

        keep_deployments()

    def close(self) -> None:
        """Leave the cluster."""
        import ray

        ray.shutdown()


def _reachable(address: str) -> None:
    """Raise ``InvalidConfig`` unless the head at ``address`` (``host:port`` or ``ray://host:port``;
    ``auto`` is found by Ray on this machine) accepts a TCP connection within 5 s."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise InvalidConfig(
            f"cluster_address {address!r}: cannot reach the Ray cluster's head: {exc}"
        ) from None


def _threads(options: Mapping[str, Any]) -> float:
    for key in _THREAD_OPTIONS:
        value = options.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return 1.0


def _asked(actor: Mapping[str, Any]) -> str:
    parts = [f"{actor.get('num_cpus', 1):g} CPU"]
    if actor.get("num_gpus"):
        parts.append(f"{actor['num_gpus']:g} GPU")
    parts += [f"{v:g} {k}" for k, v in (actor.get("resources") or {}).items()]
    return ", ".join(parts)
