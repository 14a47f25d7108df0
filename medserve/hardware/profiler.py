"""``medserve profile``: measure a model on every runtime × device × batch size this machine offers.

For each candidate runtime (the configured one, and every other runtime that can read an artifact in
the version folder: an ONNX file runs on ONNX Runtime and OpenVINO, ``.pt``/``.pt2`` on torch) and each
device that runtime can use here, one instance is loaded (``runtime_options.device`` set to the
device), warmed up, and run back to back on random inputs shaped by the declared tensors for
``seconds_per_point`` at each batch size. A point records p50/p99 latency, throughput (batch items per
second of that one instance), peak memory and joules per inference.

Peak memory: on the CPU, the rise of the process's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before the instance loads) over the
resident set before it, so it covers the loaded model and the largest batch so far; for torch on CUDA,
``torch.cuda.max_memory_allocated``. Otherwise None (not measured).

Energy: the device's meter (:func:`medserve.hardware.energy.meter_for`), NVML or RAPL where readable,
else busy time × the watts given, labelled ``estimated``. RAPL and NVML count the whole package or
board: run profiles on an otherwise idle machine.

A combination that fails (it cannot load, or a batch size fails) is recorded ``unusable`` with the
error, and the other combinations are still profiled. Variable dimensions (-1) are given size 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medserve.hardware.devices import (
    RUNTIME_ENGINES,
    Device,
    Discovery,
    canonical_device_id,
    discover_devices,
    hardware_fingerprint,
)
from medserve.hardware.energy import EnergyAccount, meter_for
from medserve.hardware.memory import MemoryProbe
from medserve.hardware.profile import (
    ModelProfile,
    ProfilePoint,
    artifact_digest,
    device_option,
    readable_artifacts,
)
from medserve.repository.config import ModelConfig, TensorConfig
from medserve.repository.repository import ModelRepository
from medserve.runtimes import Runtime, runtime_class, runtime_names
from medserve.runtimes.base import Declaration
from medserve.values.datatypes import numpy_dtype
from medserve.values.errors import InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

#: nominal power used when no energy counter can be read (the result is labelled ``estimated``)
DEFAULT_CPU_WATTS = 65.0
DEFAULT_GPU_WATTS = 300.0
_MIN_SAMPLES = 3
_MAX_SAMPLES = 100_000

RuntimeLoader = Callable[[str], type[Runtime]]
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class _Target:
    runtime: str
    device: Device
    artifact: str  # file name in the version folder; "" when the runtime can read none


def random_array(spec: TensorConfig, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random values of ``spec``'s datatype: normal floats, small integers, booleans, short bytes."""
    if spec.datatype == "BYTES":
        array = np.empty(tuple(shape), dtype=object)
        array.fill(b"medserve")
        return array
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=tuple(shape)).astype(bool)
    if spec.datatype == "BF16":  # raw bfloat16 bits: the upper half of a float32
        floats = rng.standard_normal(tuple(shape)).astype(np.float32)
        return (floats.view(np.uint32) >> 16).astype(np.uint16)
    dtype = numpy_dtype(spec.datatype)
    if dtype.kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dtype)
    return rng.integers(0, 8, size=tuple(shape)).astype(dtype)


def random_inputs(
    specs: Sequence[TensorConfig], batch_size: int, batching: bool, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A feed of ``batch_size`` random items (no batch dimension when the model does not batch)."""
    feed = {}
    for spec in specs:
        dims = [d if d > 0 else 1 for d in spec.dims]
        feed[spec.name] = random_array(spec, ([batch_size] if batching else []) + dims, rng)
    return feed


def _tensor_specs(config: ModelConfig, instance: Runtime) -> tuple[list[TensorConfig], list[str]]:
    """Declared inputs (or the engine's, batch dimension dropped) and the output names."""
    batching = config.max_batch_size > 0
    inputs = config.inputs
    if inputs is None:
        inputs = [
            TensorConfig(name=t.name, datatype=t.datatype, dims=list(t.shape[1:] if batching else t.shape))
            for t in instance.inputs()
        ]
    outputs = [t.name for t in config.outputs] if config.outputs else [t.name for t in instance.outputs()]
    return list(inputs), outputs


def _select_devices(discovery: Discovery, devices: Sequence[str] | None) -> list[Device]:
    if devices is None:
        return list(discovery.devices)
    chosen: list[Device] = []
    for requested in devices:
        found = discovery.device(canonical_device_id(requested, "")) or discovery.device(
            canonical_device_id(requested, "openvino")
        )
        if found is None:
            offered = ", ".join(d.id for d in discovery.devices) or "none"
            raise InvalidInput(f"device '{requested}' is not on this machine; available: {offered}")
        if found not in chosen:
            chosen.append(found)
    return chosen


def _select_runtimes(config: ModelConfig, version_dir: Path, runtimes: Sequence[str] | None) -> list[str]:
    known = runtime_names()
    if runtimes is not None:
        unknown = [r for r in runtimes if r not in known]
        if unknown:
            raise InvalidInput(f"unknown runtime(s) {', '.join(unknown)}; available: {', '.join(known)}")
        return list(dict.fromkeys(runtimes))
    others = [
        r
        for r in known
        if r != config.runtime and readable_artifacts(r, version_dir, config.artifact, config.runtime)
    ]
    return [config.runtime, *others]


def _batch_sizes(config: ModelConfig, batch_sizes: Sequence[int], notes: list[str]) -> list[int]:
    bad = [b for b in batch_sizes if b < 1]
    if bad or not batch_sizes:
        raise InvalidInput(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    if config.max_batch_size == 0:
        notes.append("the model does not batch (max_batch_size 0): batch size 1 only")
        return [1]
    sizes = sorted(set(batch_sizes))
    kept = [b for b in sizes if b <= config.max_batch_size]
    if len(kept) < len(sizes):
        dropped = ", ".join(str(b) for b in sizes if b > config.max_batch_size)
        notes.append(f"batch size(s) {dropped} exceed max_batch_size {config.max_batch_size}: not profiled")
    return kept or [config.max_batch_size]


def runtime_options_for(config: ModelConfig, runtime: str, device_id: str) -> dict[str, Any]:
    """The options an instance of ``runtime`` on ``device_id`` gets: config.yaml's ``runtime_options``
    when it is the configured runtime (none for another), with the device set."""
    base = dict(config.runtime_options) if runtime == config.runtime else {}
    return {**base, "device": device_option(runtime, device_id)}


def _options(config: ModelConfig, runtime: str, device: Device) -> dict[str, Any]:
    return runtime_options_for(config, runtime, device.id)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _measure(
    instance: Runtime,
    feed: dict[str, np.ndarray],
    outputs: list[str],
    seconds: float,
    warmup: int,
) -> list[int]:
    """Run ``warmup`` times, then back to back for ``seconds`` (at least a few runs); latencies in ns."""
    for _ in range(warmup):
        instance.run(feed, outputs)
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < _MIN_SAMPLES or (time.perf_counter() < deadline and len(samples) < _MAX_SAMPLES):
        started = time.perf_counter_ns()
        instance.run(feed, outputs)
        samples.append(time.perf_counter_ns() - started)
    return samples


def median_point(rounds: Sequence[ProfilePoint]) -> ProfilePoint:
    """Of one point measured in several rounds, the usable round with the median throughput and the
    highest peak memory of them (an unusable one only when no round was usable)."""
    usable = sorted((p for p in rounds if p.usable), key=lambda p: p.throughput or 0.0)
    if not usable:
        return rounds[-1]
    peaks = [p.peak_memory_bytes for p in usable if p.peak_memory_bytes is not None]
    # the first round's load shows the memory; later rounds find it already taken from the system
    return replace(usable[len(usable) // 2], peak_memory_bytes=max(peaks) if peaks else None)


def summarise(samples: Sequence[int], batch_size: int) -> tuple[float, float, float]:
    """p50 and p99 latency in ms and throughput in items/s of back-to-back runs taking ``samples`` ns."""
    values = np.asarray(samples, dtype=np.float64) / 1e6
    total_s = float(values.sum()) / 1e3
    throughput = batch_size * len(values) / total_s if total_s > 0 else float("inf")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), throughput


class _Profiler:
    def __init__(
        self,
        config: ModelConfig,
        declared: Declaration,
        version_dir: Path,
        batch_sizes: list[int],
        seconds: float,
        warmup: int,
        loader: RuntimeLoader,
        watts: tuple[float, float],
        progress: Progress | None,
    ) -> None:
        self.config = config
        self.declared = declared
        self.version_dir = version_dir
        self.batch_sizes = batch_sizes
        self.seconds = seconds
        self.warmup = warmup
        self.loader = loader
        self.watts = watts
        self.progress = progress
        self.accounts: dict[str, EnergyAccount] = {}
        self.rng = np.random.default_rng(0)

    def _account(self, device: Device) -> EnergyAccount:
        if device.id not in self.accounts:
            meter = meter_for(device, cpu_watts=self.watts[0], gpu_watts=self.watts[1])
            self.accounts[device.id] = EnergyAccount(meter)
        return self.accounts[device.id]

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def profile(self, target: _Target) -> list[ProfilePoint]:
        blank = [
            ProfilePoint(target.runtime, target.device.id, b, artifact=target.artifact)
            for b in self.batch_sizes
        ]
        if not target.artifact:
            error = f"no artifact {target.runtime} can read in {self.version_dir}"
            return [p.unusable(error) for p in blank]
        self.say(f"profiling {target.runtime} on {target.device.id} ...")
        instance: Runtime | None = None
        try:
            probe = MemoryProbe(target.runtime, target.device)
            instance = self.loader(target.runtime)(
                self.version_dir / target.artifact,
                _options(self.config, target.runtime, target.device),
                declared=self.declared,
            )
            instance.load()
            inputs, outputs = _tensor_specs(self.config, instance)
        except Exception as exc:  # any engine failure makes this combination unusable, not the run
            log.warning("%s on %s cannot load: %s", target.runtime, target.device.id, exc)
            if instance is not None:
                instance.unload()
            return [p.unusable(f"cannot load: {_error_text(exc)}") for p in blank]
        account = self._account(target.device)
        try:
            return [self._point(instance, point, inputs, outputs, probe, account) for point in blank]
        finally:
            instance.unload()

    def _point(
        self,
        instance: Runtime,
        point: ProfilePoint,
        inputs: list[TensorConfig],
        outputs: list[str],
        probe: MemoryProbe,
        account: EnergyAccount,
    ) -> ProfilePoint:
        device = point.device
        feed = random_inputs(inputs, point.batch_size, self.config.max_batch_size > 0, self.rng)
        try:
            with account.measure() as energy:
                samples = _measure(instance, feed, outputs, self.seconds, self.warmup)
        except Exception as exc:  # e.g. out of memory at this batch size
            log.warning("%s on %s at batch %d failed: %s", point.runtime, device, point.batch_size, exc)
            return point.unusable(f"batch {point.batch_size} failed: {_error_text(exc)}")
        p50, p99, throughput = summarise(samples, point.batch_size)
        runs = self.warmup + len(samples)
        return ProfilePoint(
            point.runtime,
            device,
            point.batch_size,
            p50_ms=p50,
            p99_ms=p99,
            throughput=throughput,
            peak_memory_bytes=probe.peak_bytes(),
            joules_per_inference=energy.joules / (runs * point.batch_size),
            energy_source=energy.source,
            artifact=point.artifact,
            samples=len(samples),
        )


def profile_model(
    model_dir: Path,
    *,
    runtimes: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    seconds_per_point: float = 1.0,
    warmup: int = 3,
    version: int | None = None,
    discovery: Discovery | None = None,
    cpu_watts: float = DEFAULT_CPU_WATTS,
    gpu_watts: float = DEFAULT_GPU_WATTS,
    runtime_loader: RuntimeLoader = runtime_class,
    progress: Progress | None = None,
    rounds: int = 1,
) -> ModelProfile:
    """Profile the model in repository folder ``model_dir`` (its newest selected version by default).

    ``runtimes`` and ``devices`` narrow the candidates (an unknown name raises ``InvalidInput`` naming
    what there is); a runtime that cannot use a device is skipped, or recorded unusable when the device
    was asked for by name. ``rounds`` > 1 measures every combination that many times, the combinations
    taking turns, and keeps for each point the round with the median throughput (on a shared machine a
    burst of other work then spoils one round, not the profile). Blocking; loads and runs the model in
    this process.
    """
    if rounds < 1:
        raise InvalidInput(f"rounds must be >= 1, got {rounds}")
    if seconds_per_point < 0 or warmup < 0:
        raise InvalidInput("seconds per point and warm-up runs must be >= 0")
    repository = ModelRepository(model_dir.parent)
    config = repository.config(model_dir.name)
    selected = repository.artifacts(model_dir.name, config)
    if version is not None:
        selected = [a for a in selected if a.version == version]
    if not selected:
        raise ModelLoadError(f"model '{model_dir.name}': no version folder to profile")
    chosen = selected[-1]
    version_dir = chosen.path.parent
    if not chosen.path.exists():
        raise ModelLoadError(
            f"model '{model_dir.name}' version {chosen.version}: {chosen.path} does not exist"
        )
    discovery = discover_devices() if discovery is None else discovery
    notes: list[str] = []
    sizes = _batch_sizes(config, batch_sizes, notes)
    names = _select_runtimes(config, version_dir, runtimes)
    targets: list[_Target] = []
    unavailable: list[ProfilePoint] = []
    for device in _select_devices(discovery, devices):
        for name in names:
            readable = readable_artifacts(name, version_dir, config.artifact, config.runtime)
            if RUNTIME_ENGINES.get(name, name) in device.runtimes:
                targets.append(_Target(name, device, readable[0] if readable else ""))
            elif devices is not None:
                error = f"{name} cannot use {device.id} here (it is usable by: {', '.join(device.runtimes)})"
                unavailable += [ProfilePoint(name, device.id, b).unusable(error) for b in sizes]
    declared = Declaration.of(
        str(model_dir.resolve() / "config.yaml"), config.max_batch_size, config.inputs, config.outputs
    )
    profiler = _Profiler(
        config,
        declared,
        version_dir,
        sizes,
        seconds_per_point,
        warmup,
        runtime_loader,
        (cpu_watts, gpu_watts),
        progress,
    )
    measured: dict[tuple[str, str, int], list[ProfilePoint]] = {}
    for round_no in range(rounds):
        if rounds > 1:
            profiler.say(f"round {round_no + 1} of {rounds}")
        for target in targets:
            for point in profiler.profile(target):
                measured.setdefault((point.runtime, point.device, point.batch_size), []).append(point)
    points: list[ProfilePoint] = list(unavailable) + [median_point(p) for p in measured.values()]
    if rounds > 1:
        notes.append(f"{rounds} rounds per point; each point is the round with the median throughput")
    estimated = [a.meter for a in profiler.accounts.values() if a.meter.estimated]
    for meter in estimated:
        notes.append(f"energy estimated from busy time: {getattr(meter, 'reason', '') or 'no counter'}")
    return ModelProfile(
        model=model_dir.name,
        version=chosen.version,
        artifact_digest=artifact_digest(chosen.path),
        fingerprint=hardware_fingerprint(discovery),
        measured_at=datetime.now(UTC),
        points=tuple(points),
        notes=tuple(dict.fromkeys(notes)),
    )
