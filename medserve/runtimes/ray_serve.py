"""Engine instances on a Ray cluster: the instances of one instance group run as one Ray Serve
deployment (its replicas are Ray actors, placed by their resources, health-checked and re-created by
Ray Serve), and the server holds one ``RayServeEngine`` per replica it may keep busy, each calling the
deployment through a deployment handle. No Ray Serve HTTP proxy is on the path: medserve's doors stay
the front, and medserve's batcher forms the batches before they cross.

The replica runs the model's own engine (``engine`` option: ``onnxruntime``, ``torch``, ...) on the
artifact at the same path, which every node must see (a shared volume, as KubeRay mounts one): the
replica checks the file's SHA-256 against the digest the server loaded and refuses a different file.

A batch whose replica is lost (its actor or node died) is sent once more; Ray Serve routes it to a
live replica and re-creates the lost one. Ray is imported when a cluster engine is first made, so the
server runs without the ``ray`` extra when no cluster is configured.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medserve.runtimes import runtime_class
from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.values.digest import sha256_file
from medserve.values.errors import InferenceFailed, MedserveError, ModelLoadError

log = logging.getLogger(__name__)

#: Ray namespace every door process joins: deployments are found by name across doors
NAMESPACE = "medserve"


class EngineReplica:
    """One replica of a deployment: one loaded engine instance on the node Ray placed it on. Errors
    of the engine come back as values (name, message), so the server re-raises the same error without
    a remote traceback."""

    def __init__(
        self, engine: str, artifact: str, options: dict[str, Any], declared: Declaration | None, digest: str
    ) -> None:
        path = Path(artifact)
        if not path.is_file():
            raise ModelLoadError(f"artifact {artifact} is not on this node ({_node()}); mount the repository")
        found = sha256_file(path)
        if digest and found != digest:
            raise ModelLoadError(
                f"artifact {artifact} on node {_node()} has SHA-256 {found[:12]}…, the server loaded "
                f"{digest[:12]}…: the nodes see different files"
            )
        self.engine = runtime_class(engine)(path, options, declared=declared)
        self.engine.load()

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> tuple[str, Any]:
        try:
            return "ok", self.engine.run(inputs, output_names)
        except MedserveError as exc:
            return type(exc).__name__, str(exc)

    def describe(self) -> dict[str, Any]:
        return {
            "inputs": [(t.name, t.datatype, t.shape) for t in self.engine.inputs()],
            "outputs": [(t.name, t.datatype, t.shape) for t in self.engine.outputs()],
            "device": self.engine.device(),
            "node": _node(),
            "engine": self.engine.describe(),
        }

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.unload()


def _node() -> str:
    """The Ray node id of this replica's node (nodes on one host share an IP address)."""
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - only a label
        return "unknown node"


@dataclass
class _Deployment:
    """A deployment shared by the engines of one instance group in this process: ``by_value`` and
    ``by_reference`` are its handle's two ways of sending a batch, ``retries`` the batches sent again."""

    app: str
    by_value: Any = None
    by_reference: Any = None
    users: int = 0
    #: held while the deployment is made or found (the engines of one group wait for the first)
    lock: threading.Lock = field(default_factory=threading.Lock)
    retries: int = 0
    #: the replicas' states as last asked of Ray Serve, and when (monotonic seconds)
    counts: dict[str, int] = field(default_factory=dict)
    asked_at: float = float("-inf")

    def replicas(self) -> dict[str, int]:
        """The replicas by state, asked of Ray Serve at most once a second (probes may come often)."""
        now = time.monotonic()
        if now - self.asked_at >= 1.0:
            self.counts, self.asked_at = replica_counts(self.app), now
        return self.counts


_deployments: dict[str, _Deployment] = {}
_lock = threading.Lock()
_keep = threading.Event()
_submitting = threading.Lock()

#: A batch of at most this many bytes goes straight to the replica over Ray Serve's gRPC channel; a
#: larger one (a CT volume) goes through the object store, which the replica reads without a copy.
BY_VALUE_MAX_BYTES = 1 << 20

#: The replica runs the engine on its own event loop rather than handing each call to a thread: a
#: replica takes one batch at a time (``max_ongoing_requests`` 1), and the two thread hops cost more
#: than the engine on a small model (docs/BENCHMARKS.md "Cluster mode").
_REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_SYNC_IN_THREADPOOL": "0"}


#: How Ray Serve scales a deployment with ``cluster_autoscaling``: one batch a replica is the target
#: (a replica runs one at a time); it adds replicas after 2 s above it and removes them after 60 s below.
AUTOSCALING = {"target_ongoing_requests": 1, "upscale_delay_s": 2.0, "downscale_delay_s": 60.0}


_STAYS = (
    " (the deployment stays, pending, so a cluster autoscaler can add a node; load the model again once "
    "one has joined)"
)


def keep_deployments() -> None:
    """From now on, unloading leaves the deployments running (a door process stopping: another door,
    or this one started again, goes on using them); only an unload before this deletes one."""
    _keep.set()


def _lost_replica_errors() -> tuple[type[BaseException], ...]:
    """What Ray raises when a replica, its worker or its node is gone (the batch may be sent again)."""
    import ray.exceptions as rx
    from ray.serve.exceptions import DeploymentUnavailableError

    return (
        rx.RayActorError,
        rx.WorkerCrashedError,
        rx.NodeDiedError,
        rx.ObjectLostError,
        DeploymentUnavailableError,
    )


class RayServeEngine(Runtime):
    """Calls one replica of a Ray Serve deployment at a time (``runtime_options``: ``engine``,
    ``engine_options``, ``app``, ``replicas``, ``actor`` (Ray actor options), ``digest``,
    ``load_timeout_s``, ``run_timeout_s``)."""

    name = "ray_serve"
    platform = "ray_serve"

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        if "app" not in options or "engine" not in options:
            raise ModelLoadError(
                "runtime 'ray_serve' is chosen by cluster placement (the cluster_address setting), "
                "not in config.yaml: name the model's own engine there"
            )
        self.app = str(options["app"])
        self.engine = str(options["engine"])
        self._deployment: _Deployment | None = None
        self._described: dict[str, Any] = {}
        self._note = ""

    # -- load / unload ---------------------------------------------------------------------------------
    def load(self) -> None:
        with _lock:  # held only to find or create the entry: deployments of other models start meanwhile
            deployment = _deployments.setdefault(self.app, _Deployment(self.app))
            deployment.users += 1
        try:
            with deployment.lock:
                if deployment.by_value is None:
                    handle = self._deploy()
                    deployment.by_value = handle.options(method_name="run", _by_reference=False)
                    deployment.by_reference = handle.options(method_name="run", _by_reference=True)
        except BaseException as exc:
            with _lock:
                deployment.users -= 1
                if deployment.users <= 0:
                    _deployments.pop(self.app, None)
            if isinstance(exc, MedserveError) or not isinstance(exc, Exception):
                raise
            raise ModelLoadError(f"cluster deployment {self.app}: {_short(exc)}") from None  # Ray's own
        self._deployment = deployment
        handle = deployment.by_reference.options(method_name="describe")
        self._described = self._send(handle, ())

    def _deploy(self) -> Any:
        from ray import serve

        timeout_s = float(self.options.get("load_timeout_s", 120.0))
        for attempt in range(3):
            try:
                with _submitting:  # Ray Serve's deploy call is not safe from two threads
                    missing = self._submit()
                break
            except ValueError as exc:
                # Ray Serve pickles its router and autoscaling classes by value, registering their
                # module with cloudpickle and unregistering it after; its handles' background thread
                # does the same, and when the two interleave one of them fails. It is transient.
                if "pickle by value" not in str(exc) or attempt == 2:
                    raise
                time.sleep(0.2)
        if missing:  # no node can host a replica until one joins: say so now rather than after the wait
            raise ModelLoadError(f"cluster deployment {self.app} is pending: {missing}{_STAYS}")
        self._wait_running(timeout_s)
        return serve.get_deployment_handle("engine", self.app)

    def _submit(self) -> str:
        """Ask Ray Serve for the deployment unless it is there (made by another door, or before a
        restart); returns why no node can host a replica ('' when one can, or it was there)."""
        from ray import serve
        from ray.serve.api import RunTarget, run_many

        if self.app in serve.status().applications:
            log.info("cluster deployment %s is already there: using it", self.app)
            return ""
        actor = dict(self.options.get("actor") or {})
        actor["runtime_env"] = {"env_vars": dict(_REPLICA_ENV)}
        scaling = self.options.get("autoscaling")
        count: dict[str, Any] = {"num_replicas": int(self.options.get("replicas", 1))}
        if scaling:  # Ray Serve adds a replica while more than one batch a replica is waiting or running
            count = {"autoscaling_config": {**AUTOSCALING, **scaling}}
        replica = serve.deployment(
            name="engine",
            **count,
            ray_actor_options=actor,
            max_ongoing_requests=1,  # one batch at a time, as a local engine instance runs
            health_check_period_s=2,
            health_check_timeout_s=30,
        )(EngineReplica)
        app = replica.bind(
            self.engine,
            str(self.artifact),
            dict(self.options.get("engine_options") or {}),
            self.declared,
            str(self.options.get("digest", "")),
        )
        run_many(
            [RunTarget(target=app, name=self.app, route_prefix=None)],
            wait_for_applications_running=False,
        )
        return _unplaceable(actor)

    def _wait_running(self, timeout_s: float) -> None:
        from ray import serve

        deadline = time.monotonic() + timeout_s
        message = "not yet deployed"
        while True:
            app = serve.status().applications.get(self.app)
            if app is not None:
                status = str(app.status.value if hasattr(app.status, "value") else app.status)
                deployments = list(app.deployments.values())
                message = "; ".join(d.message for d in deployments if d.message) or app.message or status
                if status == "RUNNING":
                    return
                if status == "DEPLOY_FAILED":
                    serve.delete(self.app, _blocking=False)
                    raise ModelLoadError(f"cluster deployment {self.app} failed: {message}")
            if time.monotonic() >= deadline:
                raise ModelLoadError(
                    f"cluster deployment {self.app} is still pending after {timeout_s:.0f} s: "
                    f"{message}{_STAYS}"
                )
            time.sleep(0.5)

    def unload(self) -> None:
        deployment, self._deployment = self._deployment, None
        if deployment is None:
            return
        with _lock:
            deployment.users -= 1
            last = deployment.users <= 0
            if last:
                _deployments.pop(self.app, None)
        if last and not _keep.is_set():
            from ray import serve

            try:
                serve.delete(self.app, _blocking=False)
            except Exception as exc:  # noqa: BLE001 - the cluster may be gone at shutdown
                log.warning("could not delete cluster deployment %s: %s", self.app, exc)

    # -- running ---------------------------------------------------------------------------------------
    def _send(self, handle: Any, args: tuple[Any, ...]) -> Any:
        """Call the deployment through ``handle``; a batch whose replica was lost is sent once more."""
        deployment = self._deployment
        if deployment is None:
            raise InferenceFailed(f"cluster deployment {self.app} is not loaded")
        timeout = float(self.options.get("run_timeout_s", 300.0))
        lost = _lost_replica_errors()
        for attempt in (1, 2):
            try:
                return handle.remote(*args).result(timeout_s=timeout)
            except lost as exc:
                if attempt == 2:
                    raise InferenceFailed(
                        f"cluster deployment {self.app}: the replica was lost twice ({_short(exc)})"
                    ) from None
                with _lock:
                    deployment.retries += 1
                self._note = f"sent twice: the first replica was lost ({_short(exc)})"
                log.warning(
                    "cluster deployment %s: replica lost (%s); sending the batch once more",
                    self.app,
                    _short(exc),
                )
            except TimeoutError:
                raise InferenceFailed(
                    f"cluster deployment {self.app}: no answer within {timeout:.0f} s"
                ) from None
        raise AssertionError("unreachable")

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        deployment = self._deployment
        if deployment is None:
            raise InferenceFailed(f"cluster deployment {self.app} is not loaded")
        self._note = ""
        size = sum(a.nbytes for a in inputs.values())
        handle = deployment.by_value if size <= BY_VALUE_MAX_BYTES else deployment.by_reference
        kind, value = self._send(handle, (inputs, output_names))
        if kind == "ok":
            return dict(value)
        from medserve.values import errors

        error = getattr(errors, kind, None)
        if isinstance(error, type) and issubclass(error, MedserveError):
            raise error(value)
        raise InferenceFailed(f"{kind}: {value}")

    def ready(self) -> bool:
        """A replica of the deployment is running."""
        deployment = self._deployment
        return deployment is not None and deployment.replicas().get("running", 0) > 0

    def take_note(self) -> str:
        note, self._note = self._note, ""
        return note

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor(n, d, tuple(s)) for n, d, s in self._described.get("inputs", [])]

    def outputs(self) -> list[EngineTensor]:
        return [EngineTensor(n, d, tuple(s)) for n, d, s in self._described.get("outputs", [])]

    def device(self) -> str:
        """The deployment: the scheduler's device arbiter then never makes one model's batches wait for
        another's, whose replicas run on other actors."""
        return f"ray:{self.app}"

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_deployment": self.app,
            "engine": self.engine,
            "replicas": self._deployment.replicas() if self._deployment is not None else {},
            "retried_batches": self._deployment.retries if self._deployment is not None else 0,
            "replica_device": self._described.get("device", ""),
            **{k: v for k, v in self._described.items() if k in ("engine", "node")},
        }


def replica_counts(app: str) -> dict[str, int]:
    """Running and wanted replicas of ``app`` (a lost node shows as fewer running than wanted)."""
    from ray import serve

    try:
        status = serve.status().applications.get(app)
    except Exception:  # noqa: BLE001 - the cluster may be unreachable: say nothing rather than fail
        return {}
    if status is None:
        return {}
    counts: dict[str, int] = {}
    for deployment in status.deployments.values():
        for state, n in (deployment.replica_states or {}).items():
            key = str(getattr(state, "value", state)).lower()
            counts[key] = counts.get(key, 0) + int(n)
    return counts


def _unplaceable(actor: dict[str, Any]) -> str:
    """Why no node of the cluster can ever host a replica needing ``actor``'s resources ('' if one can)."""
    import ray

    needed = {k: float(v) for k, v in (actor.get("resources") or {}).items()}
    if actor.get("num_gpus"):
        needed["GPU"] = float(actor["num_gpus"])
    if actor.get("num_cpus"):
        needed["CPU"] = float(actor["num_cpus"])
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    if any(all(node.get(k, 0.0) >= v for k, v in needed.items()) for node in nodes):
        return ""
    offered = sorted({k for node in nodes for k in node if not k.startswith("node:") and "memory" not in k})
    return f"no node of the cluster offers {needed} (its nodes offer {', '.join(offered) or 'nothing'})"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
