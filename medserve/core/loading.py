"""Loading a model version: digest and check the artifact, plan its instances (config.yaml or automatic
placement), create them with what config.yaml declares, warm them up, and resolve its tensors against
config.yaml."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medserve.hardware.model_devices import options_for_devices
from medserve.repository.config import ModelConfig, TensorConfig
from medserve.runtimes import Runtime, runtime_class
from medserve.runtimes.base import Declaration, EngineTensor
from medserve.scheduling.execution import ExecutionTimes, Metered
from medserve.scheduling.failover import slot_for
from medserve.scheduling.plan import InstanceGroup, InstancePlan
from medserve.scheduling.pool import Slot
from medserve.values.datatypes import numpy_dtype
from medserve.values.digest import sha256_file
from medserve.values.errors import MedserveError, ModelLoadError

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
    """What loading a version yields, before it is attached to the event loop. ``slots`` say where each
    instance runs (None: as its runtime says, with the config's batch limit); ``plan`` how they were
    chosen (None: from config.yaml)."""

    name: str
    version: int
    config: ModelConfig
    artifact: Path
    sha256: str
    instances: list[Runtime]
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    lineage: dict[str, Any] = field(default_factory=dict)
    plan: InstancePlan | None = None
    slots: list[Slot] | None = None


#: Checks an artifact before it is loaded (lineage, signature); returns what model metadata shows.
ArtifactCheck = Callable[[str, int, Path, str], dict[str, Any]]


class Placer(Protocol):
    """What loading and serving need of automatic placement (``medserve.hardware.placer``)."""

    def plan(
        self, name: str, version: int, config: ModelConfig, artifact: Path, digest: str
    ) -> InstancePlan | None:
        """The instances to create (None: config.yaml places the model; no groups: fall back to it)."""
        ...

    def failover(
        self, name: str, config: ModelConfig, plan: InstancePlan, device: str, reason: str
    ) -> InstancePlan | None:
        """The next-best plan without ``device``; None when no other device can take the model."""
        ...

    def is_device_fault(self, error: BaseException) -> bool: ...

    def energy(self, slot: Slot) -> AbstractContextManager[Metered]:
        """Meters one engine run on ``slot``'s device."""
        ...

    def observe(self, plan: InstancePlan, execution: ExecutionTimes) -> None:
        """A live execution of a model placed from a profile (the profile's estimates follow it)."""
        ...

    def flush(self) -> None:
        """Blocking: write the live measurements not yet stored."""
        ...


def _config_group(name: str, config: ModelConfig, artifact: Path) -> InstanceGroup:
    options = dict(config.runtime_options)
    if config.devices:
        options = options_for_devices(name, config.runtime, config.devices, options)
    return InstanceGroup(
        config.runtime, "", artifact.name, options, config.instance_count, config.max_batch_size
    )


def declaration(config: ModelConfig, artifact: Path) -> Declaration:
    """What ``config`` declares, for the engine instances of ``artifact``, its configured artifact in
    ``<model>/<version>/``: errors then name ``<model>/config.yaml``."""
    parents = artifact.resolve().parents
    depth = len(Path(config.artifact).parts)
    model_dir = parents[depth] if depth < len(parents) else artifact.parent
    return Declaration.of(
        str(model_dir / "config.yaml"), config.max_batch_size, config.inputs, config.outputs
    )


def build_group(
    group: InstanceGroup,
    artifact: Path,
    specs: tuple[list[TensorConfig], list[TensorConfig]] | None,
    config: ModelConfig,
) -> tuple[list[Runtime], list[TensorConfig], list[TensorConfig]]:
    """Blocking: load and warm up ``group``'s instances (of the group's artifact beside the version's
    ``artifact``, given what config.yaml declares); the tensors are ``specs`` (inputs, outputs) or,
    when None, resolved from the first instance against config.yaml."""
    cls = runtime_class(group.runtime)
    declared = declaration(config, artifact)
    instances: list[Runtime] = []
    try:
        for _ in range(group.count):
            instance = cls(artifact.parent / group.artifact, dict(group.options), declared=declared)
            instance.load()
            instances.append(instance)
        if specs is None:
            inputs = _resolve("inputs", config.inputs, instances[0].inputs(), config)
            outputs = _resolve("outputs", config.outputs, instances[0].outputs(), config)
        else:
            inputs, outputs = specs
        names = [o.name for o in outputs]
        for instance in instances:
            _warm_up(instance, inputs, config.max_batch_size > 0, names)
    except BaseException:
        for instance in instances:
            instance.unload()
        raise
    return instances, inputs, outputs


def _build_plan(
    groups: tuple[InstanceGroup, ...], artifact: Path, config: ModelConfig
) -> tuple[list[Slot], list[TensorConfig], list[TensorConfig]]:
    slots: list[Slot] = []
    specs: tuple[list[TensorConfig], list[TensorConfig]] | None = None
    try:
        for group in groups:
            instances, inputs, outputs = build_group(group, artifact, specs, config)
            specs = (inputs, outputs)
            if not group.device:
                group = replace(group, device=instances[0].device())
            slots += [slot_for(instance, group) for instance in instances]
    except BaseException:
        for slot in slots:
            slot.instance.unload()
        raise
    if specs is None:
        raise ModelLoadError(f"{config.name}: the instance plan has no instance group")
    return slots, specs[0], specs[1]


def load_version(
    name: str,
    version: int,
    config: ModelConfig,
    artifact: Path,
    check: ArtifactCheck | None = None,
    placer: Placer | None = None,
) -> LoadedVersion:
    """Blocking: digest and check the artifact, create and warm up the engine instances: as
    ``placer`` plans them when config.yaml asks for automatic placement, else ``instance_count``
    instances of the configured runtime. A plan whose instances fail to load falls back to config.yaml
    (logged, and said in the model's metadata)."""
    if not artifact.is_file():
        raise ModelLoadError(f"{name} version {version}: artifact {artifact} does not exist")
    digest = sha256_file(artifact)
    lineage = check(name, version, artifact, digest) if check is not None else {}
    plan = placer.plan(name, version, config, artifact, digest) if placer is not None else None

    def loaded(plan: InstancePlan, groups: tuple[InstanceGroup, ...]) -> LoadedVersion:
        slots, inputs, outputs = _build_plan(groups, artifact, config)
        if plan.decision is None and not plan.groups:  # placed by config.yaml: record where it landed
            plan = replace(plan, groups=tuple(replace(g, device=slots[0].device) for g in groups))
        instances = [s.instance for s in slots]
        return LoadedVersion(
            name, version, config, artifact, digest, instances, inputs, outputs, lineage, plan, slots
        )

    if plan is not None and plan.groups:
        try:
            return loaded(plan, plan.groups)
        except MedserveError as exc:
            if plan.source == "cluster":  # a door process serves nothing itself: no local fallback
                raise
            why = f"{plan.explanation}; but its instances failed to load ({exc}): config.yaml's values used"
            log.warning("model %s version %s: %s", name, version, why)
            plan = InstancePlan("config", why)
    group = _config_group(name, config, artifact)
    why = plan.explanation if plan is not None else "placed by config.yaml"
    return loaded(InstancePlan("config", why, (), decision=None), (group,))
