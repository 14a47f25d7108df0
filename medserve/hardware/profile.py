"""Performance profiles of a model: one point per runtime × device × batch size, and their table.

A profile is measured by :func:`medserve.hardware.profiler.profile_model`, kept by
:class:`medserve.hardware.profile_store.ProfileStore` and read by :mod:`medserve.hardware.placement`.
Everything here is plain data and pure functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from medserve.hardware.devices import RUNTIME_ENGINES
from medserve.hardware.report import format_bytes

PointStatus = Literal["ok", "unusable"]
PointSource = Literal["profiler", "live"]

#: artifact suffixes each runtime can read (the configured runtime reads its configured artifact too)
RUNTIME_SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx", ".ort"),
    "openvino": (".xml", ".onnx"),
    "torch": (".pt2", ".pt"),
}


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """What one runtime on one device did at one batch size.

    ``status`` ``unusable`` means the combination failed (``error`` says how) and its numbers are None.
    ``throughput`` is inferences (batch items) per second of one instance run back to back;
    ``energy_source`` is the meter's (``nvml``, ``rapl`` or ``estimated``).
    """

    runtime: str
    device: str
    batch_size: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    peak_memory_bytes: int | None = None
    joules_per_inference: float | None = None
    energy_source: str = ""
    status: PointStatus = "ok"
    error: str = ""
    artifact: str = ""
    samples: int = 0
    source: PointSource = "profiler"

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.p99_ms is not None

    def unusable(self, error: str) -> ProfilePoint:
        """This point marked unusable with ``error`` (its measurements dropped)."""
        return ProfilePoint(
            self.runtime, self.device, self.batch_size, status="unusable", error=error, artifact=self.artifact
        )


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A model version's profile on one machine (``fingerprint``) for one artifact (``artifact_digest``)."""

    model: str
    version: int
    artifact_digest: str
    fingerprint: str
    measured_at: datetime
    points: tuple[ProfilePoint, ...]
    notes: tuple[str, ...] = field(default=())

    def with_points(self, points: Sequence[ProfilePoint]) -> ModelProfile:
        return replace(self, points=tuple(points))


def artifact_digest(path: Path) -> str:
    """SHA-256 of the artifact (as ``medserve models`` shows it); of a folder: of its files' names and
    digests, so a MONAI bundle changes digest when any of its files does."""
    from medserve.values.digest import sha256_file

    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{sha256_file(item)}\n".encode())
    return digest.hexdigest()


def readable_artifacts(
    runtime: str, version_dir: Path, configured: str, configured_runtime: str
) -> list[str]:
    """File names in ``version_dir`` that ``runtime`` can load: the configured artifact for the configured
    runtime; for another runtime, files with a suffix it reads, the configured artifact first, then in
    the order of ``RUNTIME_SUFFIXES`` (``.pt2`` before ``.pt``)."""
    if runtime == configured_runtime:
        return [configured] if (version_dir / configured).exists() else []
    suffixes = RUNTIME_SUFFIXES.get(runtime, ())
    names = [p.name for p in version_dir.iterdir() if p.is_file() and p.suffix in suffixes]
    return sorted(names, key=lambda name: (name != configured, suffixes.index(Path(name).suffix), name))


def device_option(runtime: str, device_id: str) -> str:
    """How ``runtime``'s ``runtime_options.device`` spells the device id ``device_id``.

    ``cpu`` and ``cuda:N`` as they are for ONNX Runtime and torch; OpenVINO's ``CPU`` and ``GPU.0``.
    """
    engine = RUNTIME_ENGINES.get(runtime, runtime)
    if engine == "openvino":
        return "CPU" if device_id == "cpu" else device_id.split(":", 1)[-1]
    return device_id


def _number(value: float | None) -> str:
    """Three significant digits; thousands whole, with separators; None → ``-``."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


_HEADER = ("RUNTIME", "DEVICE", "BATCH", "P50 MS", "P99 MS", "INF/S", "PEAK MEM", "J/INF", "STATUS")


def format_profile(profile: ModelProfile) -> str:
    """The profile as a text table; estimated energy is marked ``~`` and explained below the table."""
    rows: list[tuple[str, ...]] = []
    estimated = False
    for point in profile.points:
        joules = _number(point.joules_per_inference)
        if point.energy_source == "estimated" and point.joules_per_inference is not None:
            joules, estimated = f"~{joules}", True
        status = point.status if point.status == "ok" else f"unusable: {point.error}"
        rows.append(
            (
                point.runtime,
                point.device,
                str(point.batch_size),
                _number(point.p50_ms),
                _number(point.p99_ms),
                _number(point.throughput),
                format_bytes(point.peak_memory_bytes),
                joules,
                status,
            )
        )
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER) - 1)]
    lines = [
        f"model {profile.model} version {profile.version}, artifact sha256 {profile.artifact_digest[:16]}, "
        f"hardware {profile.fingerprint[:16]}, measured {profile.measured_at.isoformat(timespec='seconds')}",
        "  ".join(h.ljust(w) for h, w in zip(_HEADER, widths)) + "  " + _HEADER[-1],
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    if estimated:
        lines.append("~ energy estimated on this machine (busy time x configured watts), not measured")
    lines += [f"note: {note}" for note in profile.notes]
    return "\n".join(lines)
