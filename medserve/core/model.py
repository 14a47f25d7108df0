"""A model version ready to serve: its instance pool, batcher, statistics, metadata and failover."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from medserve.core.classification import classify, output_labels
from medserve.core.loading import ArtifactCheck, LoadedVersion, Placer, build_group, load_version
from medserve.core.metrics import ServingMetrics, failure_reason
from medserve.core.statistics import VersionStatistics
from medserve.core.validation import validate_inputs, validate_outputs
from medserve.monitoring.tracing import record_execution
from medserve.repository.config import TensorConfig
from medserve.runtimes import Runtime
from medserve.scheduling.arbiter import DeviceArbiter
from medserve.scheduling.batcher import DynamicBatcher
from medserve.scheduling.execution import ExecutionTimes
from medserve.scheduling.failover import Failover
from medserve.scheduling.plan import InstanceGroup, InstancePlan
from medserve.scheduling.pool import InstancePool, Slot
from medserve.scheduling.priority import (
    DEFAULT_CLASSES,
    PriorityClass,
    PriorityClasses,
    resolve_request_class,
)
from medserve.values.datatypes import TRITON_CONFIG_TYPES
from medserve.values.errors import DeadlineExceeded, MedserveError, Overloaded
from medserve.values.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)

__all__ = ["ArtifactCheck", "LoadedVersion", "Placer", "ServedModel", "load_version"]

log = logging.getLogger(__name__)


class ServedModel:
    """A model version ready to serve: requests are validated, queued, batched and run."""

    def __init__(
        self,
        loaded: LoadedVersion,
        metrics: ServingMetrics,
        classes: PriorityClasses = DEFAULT_CLASSES,
        placer: Placer | None = None,
        arbiter: DeviceArbiter | None = None,
    ) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.version = str(loaded.version)
        self.config = loaded.config
        self.classes = classes
        self.stats = VersionStatistics()
        self._metrics = metrics
        self._labels = (self.name, self.version)
        # the labelled series of this version, looked up once rather than on every request
        self._execution_count = metrics.execution_count.labels(*self._labels)
        self._batch_size = metrics.batch_size.labels(*self._labels)
        self._compute_duration = metrics.compute_duration.labels(*self._labels)
        self._request_success = metrics.request_success.labels(*self._labels)
        self._inference_count = metrics.inference_count.labels(*self._labels)
        self._request_duration = metrics.request_duration.labels(*self._labels)
        self._queue_duration = metrics.queue_duration.labels(*self._labels)
        self._placer = placer
        label = f"model '{self.name}' version {self.version}"
        batching = self.config.dynamic_batching
        slots = loaded.slots or [
            Slot(i, i.device(), self.config.runtime, self.config.max_batch_size) for i in loaded.instances
        ]
        self._plan = loaded.plan or InstancePlan("config", "placed by config.yaml")
        self.pool = InstancePool([s.instance for s in slots], f"{self.name}-{self.version}", slots)
        self.failover: Failover | None = None
        if placer is not None:
            self.failover = Failover(
                self.pool,
                self._plan,
                is_fault=placer.is_device_fault,
                replan=lambda plan, device, reason: placer.failover(
                    self.name, self.config, plan, device, reason
                ),
                build=self._build,
                on_moved=lambda device, to, reason: metrics.placement.failed_over(
                    self.name, device, to, reason
                ),
                label=label,
            )
        self.batcher = DynamicBatcher(
            self.pool,
            [o.name for o in loaded.outputs],
            batching=batching is not None,
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_us=batching.max_queue_delay_us if batching else 0,
            preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
            on_execution=self._executed,
            max_queue_size=self.config.max_queue_size,
            label=label,
            faults=self.failover,
            meter=placer.energy if placer is not None else None,
            arbiter=arbiter,
            on_drop=metrics.dropper(self.name, self.version),
        )
        self._seed_estimates()
        metrics.watch_queue(self.name, self.version, self.batcher.queue_depth)
        metrics.watch_class_queues(self.name, self.version, classes.names, self.batcher.queue_depth)

    @property
    def plan(self) -> InstancePlan:
        """How the instances now serving were chosen (after a failover: the plan it moved to)."""
        return self.failover.plan if self.failover is not None else self._plan

    @property
    def device(self) -> str:
        """The device(s) serving, comma-separated."""
        return ",".join(self.pool.devices())

    def _seed_estimates(self) -> None:
        """Start the scheduler's service-time estimates from the profile of the main group, so admission
        control works from the first request instead of after the first executions."""
        groups = [g for g in self.plan.groups if g.latency_ms]
        if groups:
            main = max(groups, key=lambda g: g.share)
            self.batcher.service_times.seed({b: int(ms * 1e6) for b, ms in main.latency_ms.items()})

    def _build(self, group: InstanceGroup) -> list[Runtime]:
        specs = (self.loaded.inputs, self.loaded.outputs)
        return build_group(group, self.loaded.artifact, specs, self.config)[0]

    def _executed(self, execution: ExecutionTimes) -> None:
        self.stats.executed(execution)
        self._execution_count.inc()
        self._batch_size.observe(execution.batch_size)
        total = execution.input_ns + execution.infer_ns + execution.output_ns
        self._compute_duration.observe(total / 1e9)
        if execution.joules is not None:
            self._metrics.energy.record(
                self.name, self.version, execution.device, execution.joules, execution.energy_source
            )
        if self._placer is not None and self.plan.profile is not None:
            self._placer.observe(self.plan, execution)

    async def infer(
        self, request: InferenceRequest, facts: dict[str, str] | None = None
    ) -> InferenceResponse:
        """Validate, queue by priority class and deadline, run (batched), and answer.

        The class and deadline come from the request parameters ``priority``, ``priority_class`` and
        ``timeout`` and the client's deadline at the door, ``request.deadline_ns`` (see
        :mod:`medserve.scheduling.priority`). ``facts`` (the audit record's) get what the engine
        said of the run as ``detail``, e.g. that a cluster replica was lost and the batch sent again.
        """
        started = time.perf_counter_ns()
        request_class: PriorityClass | None = None
        deadline_ns: int | None = None
        try:
            request_class, deadline_ns = resolve_request_class(
                request.parameters, self.classes, started, request.deadline_ns
            )
            arrays, batch_size = validate_inputs(
                self.name, self.loaded.inputs, self.config.max_batch_size, request.inputs
            )
            requested = validate_outputs(self.name, self.loaded.outputs, request.outputs)
            submitted = time.perf_counter_ns()
            result = await self.batcher.submit(
                arrays, batch_size, request_class=request_class, deadline_ns=deadline_ns
            )
            times = result.execution
            if facts is not None and times.note:
                facts["detail"] = times.note[:500]
            finished_ns = time.perf_counter_ns()
            record_execution(
                submitted, finished_ns, result.queue_ns, times.batch_size, times.infer_ns, times.input_ns
            )
            outputs = self._outputs(result.outputs, requested)
        except MedserveError as exc:
            elapsed = time.perf_counter_ns() - started
            self.stats.request_failed(elapsed)
            self._metrics.request_failure.labels(*self._labels, failure_reason(exc)).inc()
            if request_class is not None and isinstance(exc, (Overloaded, DeadlineExceeded)):
                outcome = "rejected" if isinstance(exc, Overloaded) else "expired"
                self._metrics.class_outcome(self.name, self.version, request_class.name, outcome)
            raise
        finished = time.perf_counter_ns()
        in_time = deadline_ns is None or finished <= deadline_ns
        outcome = "met_deadline" if in_time else "missed_deadline"
        self._metrics.class_outcome(self.name, self.version, request_class.name, outcome)
        elapsed = finished - started
        self.stats.request_succeeded(batch_size, elapsed, result.queue_ns, result.execution)
        self._request_success.inc()
        self._inference_count.inc(batch_size)
        self._request_duration.observe(elapsed / 1e9)
        self._queue_duration.observe(result.queue_ns / 1e9)
        return InferenceResponse(self.name, self.version, request.id, outputs)

    def _outputs(self, arrays: dict[str, np.ndarray], requested: list[RequestedOutput]) -> list[Tensor]:
        specs = {o.name: o for o in self.loaded.outputs}
        tensors: list[Tensor] = []
        for output in requested:
            array = arrays[output.name]
            datatype = specs[output.name].datatype
            count = output.parameters.get("classification")
            if count is not None:
                first = self.loaded.outputs[0].name
                labels = output_labels(self.config.metadata.get("labels"), output.name, first)
                array = classify(output.name, array, int(count), labels, self.config.max_batch_size > 0)
                datatype = "BYTES"
            tensors.append(Tensor(output.name, datatype, tuple(array.shape), array))
        return tensors

    def ready(self) -> bool:
        """Whether a request can be run now: some instance can run a batch (a model whose cluster
        replicas are all lost is not ready until Ray Serve has re-created one). During a device
        failover, with no instance in the pool until the replacement is built, requests wait for it:
        the model stays ready, as before."""
        instances = self.pool.instances
        return not instances or any(instance.ready() for instance in instances)

    def tensor_metadata(self, specs: list[TensorConfig]) -> list[TensorMetadata]:
        prefix = [-1] if self.config.max_batch_size > 0 else []
        return [TensorMetadata(s.name, s.datatype, prefix + list(s.dims)) for s in specs]

    def metadata(self, versions: list[str]) -> ModelMetadata:
        first = self.pool.instances[0] if len(self.pool) else self.loaded.instances[0]
        runtimes = list(dict.fromkeys(s.runtime for s in self.pool.slots)) or [self.config.runtime]
        parameters: dict[str, Any] = {
            "version": self.version,
            "sha256": self.loaded.sha256,
            "runtime": ",".join(runtimes),
            **first.describe(),
            "device": self.device,
            "placement": self.plan.describe(),
            **self.config.metadata,
        }
        if self.loaded.lineage:
            parameters["lineage"] = self.loaded.lineage
        return ModelMetadata(
            self.name,
            versions,
            first.platform,
            self.tensor_metadata(self.loaded.inputs),
            self.tensor_metadata(self.loaded.outputs),
            parameters,
        )

    def triton_config(self) -> dict[str, Any]:
        """The model's configuration in Triton's ModelConfig JSON form."""
        config = self.config

        def tensors(specs: list[TensorConfig]) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "data_type": TRITON_CONFIG_TYPES[s.datatype], "dims": list(s.dims)}
                for s in specs
            ]

        parameters = {"sha256": {"string_value": self.loaded.sha256}}
        for key, value in config.metadata.items():
            parameters[f"metadata.{key}"] = {"string_value": str(value)}
        result: dict[str, Any] = {
            "name": self.name,
            "platform": self.loaded.instances[0].platform,
            "backend": config.runtime,
            "version_policy": config.version_policy.to_triton(),
            "max_batch_size": config.max_batch_size,
            "input": tensors(self.loaded.inputs),
            "output": tensors(self.loaded.outputs),
            "instance_group": self._instance_groups(),
            "default_model_filename": config.artifact,
            "parameters": parameters,
        }
        if config.dynamic_batching is not None:
            result["dynamic_batching"] = {
                "preferred_batch_size": list(config.dynamic_batching.preferred_batch_sizes),
                "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_us,
                "priority_levels": max(c.priority for c in self.classes.classes),
                "default_priority_level": self.classes.default.priority,
                "default_queue_policy": {
                    "max_queue_size": config.max_queue_size,
                    "allow_timeout_override": True,
                },
            }
        return result

    def _instance_groups(self) -> list[dict[str, Any]]:
        """Triton's ``instance_group``: one entry per device serving, GPUs as ``KIND_GPU``."""
        groups: list[dict[str, Any]] = []
        for device in self.pool.devices() or ["cpu"]:
            count = sum(1 for s in self.pool.slots if s.device == device)
            entry: dict[str, Any] = {"name": f"{self.name}_{device}", "count": count}
            if device.startswith("cuda"):
                entry |= {"kind": "KIND_GPU", "gpus": [int(device.partition(":")[2] or 0)]}
            else:
                entry["kind"] = "KIND_CPU" if device == "cpu" else "KIND_MODEL"
            groups.append(entry)
        return groups

    async def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, then release the engine instances."""
        self._metrics.forget(self.name, self.version)
        if self.failover is not None:
            await self.failover.close()
        await self.batcher.close(timeout)
        self.pool.shutdown()
