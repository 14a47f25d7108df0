"""Quality floors of the trained example models, and the record a build leaves in its config.

Each trained example is scored on held-out synthetic data when it is built; ``check_floors`` fails
the build (the model is never written) when a figure misses its documented floor for the profile
built, naming the model, the metric, the value reached and the floor. ``record_build`` writes what
the build measured into ``metadata`` of the model's ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medserve.demo.models._profile import TRAINING_THREADS, Profile
from medserve.demo.models._spec import ExampleModel
from medserve.demo.models.config_file import write_config


@dataclass(frozen=True)
class Floor:
    """A bound one held-out figure must reach: at least ``minimum`` and/or at most ``maximum``."""

    metric: str
    minimum: float | None = None
    maximum: float | None = None

    def missed(self, value: float) -> bool:
        """Whether ``value`` is outside the bound (a NaN always misses)."""
        if value != value:
            return True
        return (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        )

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum} and {self.maximum}"
        if self.minimum is not None:
            return f">= {self.minimum}"
        return f"<= {self.maximum}"


class QualityFloorMissed(RuntimeError):
    """A trained example model scored below a documented floor on its held-out data."""

    def __init__(self, model: str, profile: Profile, misses: Sequence[tuple[Floor, float]]) -> None:
        self.model = model
        self.profile = profile
        self.misses = tuple(misses)
        parts = [f"held-out {floor.metric} {value:.4f} is not {floor.describe()}" for floor, value in misses]
        super().__init__(
            f"example model {model} (profile {profile}) missed its quality floor: {'; '.join(parts)}; "
            "the model was not written"
        )

    def __reduce__(
        self,
    ) -> tuple[type[QualityFloorMissed], tuple[str, Profile, tuple[tuple[Floor, float], ...]]]:
        return (QualityFloorMissed, (self.model, self.profile, self.misses))  # back from a worker process


def check_floors(model: str, profile: Profile, figures: Mapping[str, float], floors: Sequence[Floor]) -> None:
    """Raise ``QualityFloorMissed`` listing every floor ``figures`` miss. A floor whose metric is
    not among ``figures`` is a programming error (``KeyError``)."""
    misses = [(floor, figures[floor.metric]) for floor in floors if floor.missed(figures[floor.metric])]
    if misses:
        raise QualityFloorMissed(model, profile, misses)


def floors_metadata(floors: Sequence[Floor]) -> dict[str, str]:
    """``{metric: ">= 0.8"}`` for the config's metadata."""
    return {floor.metric: floor.describe() for floor in floors}


@dataclass(frozen=True)
class BuildRecord:
    """What one build of a trained example did and measured."""

    profile: Profile
    seed: int
    steps: int
    training_seconds: float
    figures: Mapping[str, float]
    floors: Sequence[Floor]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "seed": self.seed,
            "steps": self.steps,
            "threads": TRAINING_THREADS,
            "training_seconds": round(self.training_seconds, 1),
            "held_out": {name: round(float(value), 4) for name, value in self.figures.items()},
            "floors": floors_metadata(self.floors),
        }


def record_build(
    model_path: Path, example: ExampleModel, record: BuildRecord, updates: Mapping[str, Any] | None = None
) -> None:
    """Merge ``{"build": record}`` and ``updates`` into ``metadata`` of the ``config.yaml`` beside the
    version folder of ``model_path``, when the build writes one (a repository build writes the config
    first, from ``example.config``, then each version's model)."""
    config_path = model_path.parent.parent / "config.yaml"
    if not config_path.is_file():
        return
    config = dict(example.config)
    config["metadata"] = {
        **dict(example.config.get("metadata", {})),
        **dict(updates or {}),
        "build": record.as_metadata(),
    }
    write_config(config_path, replace(example, config=config))
