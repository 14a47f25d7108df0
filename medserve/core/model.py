"""A loaded model version: its engine instances, resolved tensors, batcher and statistics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medserve.core.classification import classify
from medserve.core.datatypes import TRITON_CONFIG_TYPES, numpy_dtype
from medserve.core.errors import DeadlineExceeded, MedserveError, ModelLoadError, Overloaded
from medserve.core.metrics import ServingMetrics, failure_reason
from medserve.core.statistics import VersionStatistics
from medserve.core.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)
from medserve.core.validation import validate_inputs, validate_outputs
from medserve.repository.config import ModelConfig, TensorConfig
from medserve.repository.repository import sha256_file
from medserve.runtimes import Runtime, runtime_class
from medserve.runtimes.base import EngineTensor
from medserve.scheduling.batcher import DynamicBatcher, ExecutionTimes
from medserve.scheduling.pool import InstancePool
from medserve.scheduling.priority import (
    DEFAULT_CLASSES,
    PriorityClass,
    PriorityClasses,
    resolve_request_class,
)

log = logging.getLogger(__name__)


def _resolve(
    kind: str, declared: list[TensorConfig] | None, engine: list[EngineTensor], config: ModelConfig
) -> list[TensorConfig]:
    """The model's tensors: as declared in config.yaml (checked against the engine), or the engine's."""
    batching = config.max_batch_size > 0
    source = f"{config.name}/config.yaml"
    for tensor in engine:
        if batching and (not tensor.shape or tensor.shape[0] not in (-1, config.max_batch_size)):
            raise ModelLoadError(
                f"{source}: max_batch_size is {config.max_batch_size} but the model's {kind[:-1]} "
                f"'{tensor.name}' has a fixed first dimension {list(tensor.shape)[:1]}; "
                "set max_batch_size: 0 or export the model with a dynamic batch dimension"
            )
    if declared is None:
        return [
            TensorConfig(name=t.name, datatype=t.datatype, dims=list(t.shape[1:] if batching else t.shape))
            for t in engine
        ]
    by_name = {t.name: t for t in engine}
    if set(by_name) != {t.name for t in declared}:
        raise ModelLoadError(
            f"{source}: field '{kind}' names {sorted(t.name for t in declared)} but the model has "
            f"{sorted(by_name)}"
        )
    for index, spec in enumerate(declared):
        actual = by_name[spec.name]
        if actual.datatype != spec.datatype:
            raise ModelLoadError(
                f"{source}: field '{kind}[{index}].datatype' is {spec.datatype} but the model's "
                f"'{spec.name}' is {actual.datatype}"
            )
        rank = len(actual.shape) - (1 if batching else 0)
        if len(spec.dims) != rank:
            raise ModelLoadError(
                f"{source}: field '{kind}[{index}].dims' has {len(spec.dims)} dimension(s) but the "
                f"model's '{spec.name}' has {rank} (shape {list(actual.shape)}"
                f"{', batch dimension excluded' if batching else ''})"
            )
    return list(declared)


def _warm_up(instance: Runtime, inputs: list[TensorConfig], batching: bool, outputs: list[str]) -> None:
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = ([1] if batching else []) + [d if d > 0 else 1 for d in spec.dims]
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(b"")
        else:
            array = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
        feed[spec.name] = array
    try:
        instance.run(feed, outputs)
    except MedserveError as exc:
        log.warning("warm-up of %s failed (the model may need real data): %s", instance.artifact, exc)


@dataclass(slots=True)
class LoadedVersion:
    """What loading a version yields, before it is attached to the event loop."""

    name: str
    version: int
    config: ModelConfig
    artifact: Path
    sha256: str
    instances: list[Runtime]
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    lineage: dict[str, Any] = field(default_factory=dict)


#: Checks an artifact before it is loaded (lineage, signature); returns what model metadata shows.
ArtifactCheck = Callable[[str, int, Path, str], dict[str, Any]]


def load_version(
    name: str, version: int, config: ModelConfig, artifact: Path, check: ArtifactCheck | None = None
) -> LoadedVersion:
    """Blocking: digest and check the artifact, create and warm up ``instance_count`` engine instances."""
    if not artifact.is_file():
        raise ModelLoadError(f"{name} version {version}: artifact {artifact} does not exist")
    digest = sha256_file(artifact)
    lineage = check(name, version, artifact, digest) if check is not None else {}
    cls = runtime_class(config.runtime)
    options = dict(config.runtime_options)
    if config.devices:
        from medserve.hardware.model_devices import options_for_devices

        options = options_for_devices(name, config.runtime, config.devices, options)
    instances: list[Runtime] = []
    try:
        for _ in range(config.instance_count):
            instance = cls(artifact, dict(options))
            instance.load()
            instances.append(instance)
        inputs = _resolve("inputs", config.inputs, instances[0].inputs(), config)
        outputs = _resolve("outputs", config.outputs, instances[0].outputs(), config)
        names = [o.name for o in outputs]
        for instance in instances:
            _warm_up(instance, inputs, config.max_batch_size > 0, names)
    except BaseException:
        for instance in instances:
            instance.unload()
        raise
    return LoadedVersion(name, version, config, artifact, digest, instances, inputs, outputs, lineage)


class ServedModel:
    """A model version ready to serve: requests are validated, queued, batched and run."""

    def __init__(
        self, loaded: LoadedVersion, metrics: ServingMetrics, classes: PriorityClasses = DEFAULT_CLASSES
    ) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.version = str(loaded.version)
        self.config = loaded.config
        self.classes = classes
        self.stats = VersionStatistics()
        self._metrics = metrics
        self._labels = (self.name, self.version)
        self.device = loaded.instances[0].device()
        batching = self.config.dynamic_batching
        self.pool = InstancePool(loaded.instances, f"{self.name}-{self.version}")
        self.batcher = DynamicBatcher(
            self.pool,
            [o.name for o in loaded.outputs],
            batching=batching is not None,
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_us=batching.max_queue_delay_us if batching else 0,
            preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
            on_execution=self._executed,
            max_queue_size=self.config.max_queue_size,
            label=f"model '{self.name}' version {self.version}",
        )
        metrics.watch_queue(self.name, self.version, self.batcher.queue_depth)
        metrics.watch_class_queues(self.name, self.version, classes.names, self.batcher.queue_depth)

    def _executed(self, execution: ExecutionTimes) -> None:
        self.stats.executed(execution)
        m = self._metrics
        m.execution_count.labels(*self._labels).inc()
        m.batch_size.labels(*self._labels).observe(execution.batch_size)
        total = execution.input_ns + execution.infer_ns + execution.output_ns
        m.compute_duration.labels(*self._labels).observe(total / 1e9)

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue by priority class and deadline, run (batched), and answer.

        The class and deadline come from the request parameters ``priority``, ``priority_class`` and
        ``timeout`` (see :mod:`medserve.scheduling.priority`).
        """
        started = time.perf_counter_ns()
        request_class: PriorityClass | None = None
        deadline_ns: int | None = None
        try:
            request_class, deadline_ns = resolve_request_class(request.parameters, self.classes, started)
            arrays, batch_size = validate_inputs(
                self.name, self.loaded.inputs, self.config.max_batch_size, request.inputs
            )
            requested = validate_outputs(self.name, self.loaded.outputs, request.outputs)
            result = await self.batcher.submit(
                arrays, batch_size, request_class=request_class, deadline_ns=deadline_ns
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
        m = self._metrics
        m.request_success.labels(*self._labels).inc()
        m.inference_count.labels(*self._labels).inc(batch_size)
        m.request_duration.labels(*self._labels).observe(elapsed / 1e9)
        m.queue_duration.labels(*self._labels).observe(result.queue_ns / 1e9)
        return InferenceResponse(self.name, self.version, request.id, outputs)

    def _outputs(self, arrays: dict[str, np.ndarray], requested: list[RequestedOutput]) -> list[Tensor]:
        specs = {o.name: o for o in self.loaded.outputs}
        tensors: list[Tensor] = []
        for output in requested:
            array = arrays[output.name]
            datatype = specs[output.name].datatype
            count = output.parameters.get("classification")
            if count is not None:
                labels = [str(v) for v in self.config.metadata.get("labels", [])]
                array = classify(output.name, array, int(count), labels, self.config.max_batch_size > 0)
                datatype = "BYTES"
            tensors.append(Tensor(output.name, datatype, tuple(array.shape), array))
        return tensors

    def ready(self) -> bool:
        return True

    def tensor_metadata(self, specs: list[TensorConfig]) -> list[TensorMetadata]:
        prefix = [-1] if self.config.max_batch_size > 0 else []
        return [TensorMetadata(s.name, s.datatype, prefix + list(s.dims)) for s in specs]

    def metadata(self, versions: list[str]) -> ModelMetadata:
        first = self.loaded.instances[0]
        parameters: dict[str, Any] = {
            "version": self.version,
            "sha256": self.loaded.sha256,
            "runtime": self.config.runtime,
            **first.describe(),
            "device": self.device,
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
            "instance_group": [{"name": self.name, "kind": "KIND_CPU", "count": config.instance_count}],
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

    async def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, then release the engine instances."""
        self._metrics.forget(self.name, self.version)
        await self.batcher.close(timeout)
        self.pool.shutdown()
