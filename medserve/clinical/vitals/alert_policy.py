"""When a stream of NEWS2 scores should raise, escalate and clear an alert: hysteresis, no storms.

A deterioration *episode* starts on the first sample that triggers (total >= ``raise_at``, or a red
score when ``raise_on_red``) and ends only after ``min_clear_samples`` consecutive *calm* samples:
total < ``clear_below`` and, when ``raise_on_red``, no red score. Samples between the two
thresholds, or a single calm sample among triggering ones, neither raise nor clear, so a score
fluctuating around ``raise_at`` gives exactly one RAISED per episode.

Within an episode, ESCALATED is emitted each time the risk band exceeds the highest band the
episode has reached so far (MEDIUM -> HIGH); falling back and rising again to a band already
reached is not a new escalation.

The policy is a small state machine on values: no clock, no I/O; the caller passes each sample's
time, which must not go backwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from medserve.clinical.vitals.news2 import ClinicalRisk, NEWS2Score


class AlertKind(Enum):
    RAISED = "raised"
    ESCALATED = "escalated"
    CLEARED = "cleared"


@dataclass(frozen=True)
class AlertEvent:
    """One transition of the alert state, caused by the sample ``score`` taken at ``t``."""

    kind: AlertKind
    t: float
    score: NEWS2Score
    risk: ClinicalRisk  # the episode's highest band so far (for CLEARED: the highest it reached)
    episode_started_at: float


class AlertPolicy:
    """Hysteresis over NEWS2 totals; feed every sample of one patient to ``update``, in time order."""

    def __init__(
        self,
        raise_at: int = 5,
        clear_below: int = 3,
        raise_on_red: bool = True,
        min_clear_samples: int = 3,
    ) -> None:
        if not 1 <= raise_at <= 20:
            raise ValueError(f"raise_at must be an aggregate NEWS2 score from 1 to 20, got {raise_at}")
        if not 1 <= clear_below <= raise_at:
            raise ValueError(f"clear_below must be from 1 to raise_at ({raise_at}), got {clear_below}")
        if min_clear_samples < 1:
            raise ValueError(f"min_clear_samples must be at least 1, got {min_clear_samples}")
        self.raise_at = raise_at
        self.clear_below = clear_below
        self.raise_on_red = raise_on_red
        self.min_clear_samples = min_clear_samples
        self._episode_start: float | None = None
        self._peak = ClinicalRisk.LOW
        self._calm_samples = 0
        self._last_t: float | None = None

    @property
    def active(self) -> bool:
        """Whether a deterioration episode is under way."""
        return self._episode_start is not None

    @property
    def peak_risk(self) -> ClinicalRisk | None:
        """The highest band the current episode has reached; None between episodes."""
        return self._peak if self.active else None

    def _triggers(self, score: NEWS2Score) -> bool:
        return score.total >= self.raise_at or (self.raise_on_red and score.any_single_parameter_3)

    def _calm(self, score: NEWS2Score) -> bool:
        return score.total < self.clear_below and not (self.raise_on_red and score.any_single_parameter_3)

    def update(self, score: NEWS2Score, t: float) -> AlertEvent | None:
        """Take the sample ``score`` at time ``t``; the transition it causes, if any."""
        if not math.isfinite(t):
            raise ValueError(f"sample time must be finite, got {t!r}")
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"sample time {t} is before the previous sample's {self._last_t}")
        self._last_t = t

        if self._episode_start is None:
            if not self._triggers(score):
                return None
            self._episode_start = t
            self._peak = score.risk
            self._calm_samples = 0
            return AlertEvent(AlertKind.RAISED, t, score, self._peak, t)

        start = self._episode_start
        if self._calm(score):
            self._calm_samples += 1
            if self._calm_samples < self.min_clear_samples:
                return None
            peak = self._peak
            self._episode_start = None
            self._peak = ClinicalRisk.LOW
            self._calm_samples = 0
            return AlertEvent(AlertKind.CLEARED, t, score, peak, start)

        self._calm_samples = 0
        if score.risk.rank > self._peak.rank:
            self._peak = score.risk
            return AlertEvent(AlertKind.ESCALATED, t, score, self._peak, start)
        return None
