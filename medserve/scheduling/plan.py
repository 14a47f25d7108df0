"""Instance plans (plain data): which engine instances a model version runs, on which devices.

A plan comes from ``config.yaml`` (``runtime``, ``devices``/``runtime_options``, ``instance_count``,
``max_batch_size``) or from automatic placement over a measured profile
(:mod:`medserve.hardware.placer`). Each group is a number of identical instances of one runtime on
one device, with the batch size they may run and the share of traffic they should take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PlanSource = Literal["config", "profile", "cluster"]


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """``count`` instances of ``runtime`` on ``device`` reading ``artifact`` (a file name in the version
    folder) with ``options``; they run batches of at most ``max_batch_size`` (0: the model does not
    batch) and should take ``share`` of the traffic. ``latency_ms`` is the measured p50 execution time
    per batch size on this device (seeds the scheduler's estimates before live traffic); ``device`` ""
    means "where the runtime says it runs" (config.yaml without ``devices``)."""

    runtime: str
    device: str
    artifact: str
    options: Mapping[str, Any]
    count: int
    max_batch_size: int
    share: float = 1.0
    latency_ms: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"an instance group needs at least one instance, not {self.count}")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, not {self.max_batch_size}")
        if not 0 <= self.share <= 1:
            raise ValueError(f"share must be within [0, 1], not {self.share}")

    def describe(self) -> dict[str, Any]:
        """The group as model metadata shows it."""
        return {
            "device": self.device,
            "runtime": self.runtime,
            "artifact": self.artifact,
            "instances": self.count,
            "max_batch_size": self.max_batch_size,
            "share": round(self.share, 4),
        }


@dataclass(frozen=True, slots=True)
class ProfileKey:
    """Which stored profile a plan came from: live measurements are folded back into it."""

    model: str
    digest: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """The instances of a model version and why. ``groups`` empty: use ``config.yaml``'s values
    (``explanation`` says why automatic placement did not decide). ``decision`` is the placement
    decision the plan came from, kept for failover (opaque here)."""

    source: PlanSource
    explanation: str
    groups: tuple[InstanceGroup, ...] = ()
    profile: ProfileKey | None = None
    decision: object | None = field(default=None, compare=False, repr=False)

    @property
    def devices(self) -> list[str]:
        return list(dict.fromkeys(g.device for g in self.groups))

    def describe(self) -> dict[str, Any]:
        """The plan as model metadata shows it."""
        return {
            "source": self.source,
            "explanation": self.explanation,
            "instances": [g.describe() for g in self.groups],
        }
