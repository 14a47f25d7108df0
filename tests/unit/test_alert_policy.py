"""Alert hysteresis: one RAISED per deterioration episode, escalation, clearing after calm samples."""

from __future__ import annotations

import math

import pytest

from medserve.clinical.vitals.alert_policy import AlertEvent, AlertKind, AlertPolicy
from medserve.clinical.vitals.news2 import ClinicalRisk, NEWS2Score


def total(n: int) -> NEWS2Score:
    """A score with aggregate ``n`` (0-10) and no red parameter: up to 2 points on each of five parameters."""
    if not 0 <= n <= 10:
        raise ValueError(n)
    names = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
    scores = {name: min(2, max(0, n - 2 * i)) for i, name in enumerate(names)}
    return NEWS2Score(air_or_oxygen=0, consciousness=0, **scores)  # type: ignore[arg-type]


def red(extra: int = 0) -> NEWS2Score:
    """A red score (new confusion, 3) plus ``extra`` points elsewhere."""
    return NEWS2Score(
        respiration_rate=min(extra, 2),
        spo2=max(0, extra - 2),
        air_or_oxygen=0,
        systolic_bp=0,
        pulse=0,
        consciousness=3,
        temperature=0,
    )


def run(policy: AlertPolicy, scores: list[NEWS2Score]) -> list[tuple[int, AlertKind]]:
    events = []
    for i, score in enumerate(scores):
        event = policy.update(score, float(i))
        if event is not None:
            events.append((i, event.kind))
    return events


def test_helpers() -> None:
    assert [total(n).total for n in range(11)] == list(range(11))
    assert not any(total(n).any_single_parameter_3 for n in range(11))
    assert red().total == 3 and red(2).total == 5 and red().any_single_parameter_3


def test_below_threshold_never_alerts() -> None:
    assert run(AlertPolicy(), [total(n) for n in (0, 1, 2, 4, 3, 4, 0)]) == []


def test_fluctuating_around_the_threshold_raises_once_per_episode() -> None:
    # Episode 1: hovers around raise_at=5, dipping to 4 and even to 2 (one calm sample), then clears.
    # Episode 2: starts again later and clears again.
    sequence = [4, 5, 4, 5, 4, 6, 2, 5, 4, 4, 2, 1, 0, 4, 5, 4, 5, 2, 2, 2, 4]
    events = run(AlertPolicy(raise_at=5, clear_below=3, min_clear_samples=3), [total(n) for n in sequence])
    assert events == [
        (1, AlertKind.RAISED),
        (12, AlertKind.CLEARED),
        (14, AlertKind.RAISED),
        (19, AlertKind.CLEARED),
    ]


def test_alternating_across_raise_at_raises_only_once() -> None:
    sequence = [5, 4, 5, 4, 5, 4, 5, 4, 5, 4]
    events = run(AlertPolicy(), [total(n) for n in sequence])
    assert events == [(0, AlertKind.RAISED)]


def test_escalation_to_a_higher_band_once() -> None:
    sequence = [5, 6, 7, 6, 8, 7, 6, 9]
    policy = AlertPolicy()
    events = run(policy, [total(n) for n in sequence])
    assert events == [(0, AlertKind.RAISED), (2, AlertKind.ESCALATED)]
    assert policy.peak_risk is ClinicalRisk.HIGH


def test_red_score_raises_and_escalates_through_bands() -> None:
    policy = AlertPolicy()
    first = policy.update(red(), 0.0)
    assert first is not None
    assert (first.kind, first.risk) == (AlertKind.RAISED, ClinicalRisk.LOW_MEDIUM)
    second = policy.update(red(2), 1.0)
    assert second is not None
    assert (second.kind, second.risk, second.episode_started_at) == (
        AlertKind.ESCALATED,
        ClinicalRisk.MEDIUM,
        0.0,
    )
    third = policy.update(red(4), 2.0)
    assert third is not None
    assert (third.kind, third.risk) == (AlertKind.ESCALATED, ClinicalRisk.HIGH)


def test_red_score_ignored_when_disabled() -> None:
    assert run(AlertPolicy(raise_on_red=False), [red(), red(1), total(2)]) == []


def test_persisting_red_score_prevents_clearing() -> None:
    # clear_below=4 would count a lone red 3 (total 3) as calm if the red score were not considered.
    policy = AlertPolicy(raise_at=5, clear_below=4, min_clear_samples=2)
    events = run(policy, [red(), red(), red(), red(), total(0), total(0)])
    assert events == [(0, AlertKind.RAISED), (5, AlertKind.CLEARED)]


def test_clearing_needs_consecutive_calm_samples() -> None:
    policy = AlertPolicy(raise_at=5, clear_below=3, min_clear_samples=3)
    # calm, calm, not calm (3 is not below 3), calm, calm, calm -> clears at the last.
    sequence = [6, 2, 2, 3, 2, 1, 0]
    events = run(policy, [total(n) for n in sequence])
    assert events == [(0, AlertKind.RAISED), (6, AlertKind.CLEARED)]
    assert not policy.active
    assert policy.peak_risk is None


def test_single_calm_sample_clears_when_configured() -> None:
    events = run(AlertPolicy(min_clear_samples=1), [total(n) for n in (5, 2, 5)])
    assert events == [(0, AlertKind.RAISED), (1, AlertKind.CLEARED), (2, AlertKind.RAISED)]


def test_cleared_event_reports_peak_and_episode_start() -> None:
    policy = AlertPolicy(min_clear_samples=2)
    events: list[AlertEvent] = []
    for t, n in [(10.0, 1), (20.0, 5), (30.0, 7), (40.0, 0), (50.0, 0)]:
        event = policy.update(total(n), t)
        if event is not None:
            events.append(event)
    cleared = events[-1]
    assert cleared.kind is AlertKind.CLEARED
    assert (cleared.t, cleared.episode_started_at, cleared.risk) == (50.0, 20.0, ClinicalRisk.HIGH)
    assert cleared.score.total == 0


def test_new_episode_after_clearing_starts_from_its_own_band() -> None:
    policy = AlertPolicy(min_clear_samples=1)
    events = run(policy, [total(n) for n in (8, 0, 5, 7)])
    assert events == [
        (0, AlertKind.RAISED),
        (1, AlertKind.CLEARED),
        (2, AlertKind.RAISED),
        (3, AlertKind.ESCALATED),
    ]


def test_time_must_not_go_backwards() -> None:
    policy = AlertPolicy()
    policy.update(total(0), 5.0)
    policy.update(total(0), 5.0)  # equal times are allowed
    with pytest.raises(ValueError, match="before"):
        policy.update(total(0), 4.0)
    with pytest.raises(ValueError, match="finite"):
        policy.update(total(0), math.nan)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"raise_at": 0},
        {"raise_at": 21},
        {"clear_below": 0},
        {"raise_at": 5, "clear_below": 6},
        {"min_clear_samples": 0},
    ],
)
def test_invalid_configuration(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AlertPolicy(**kwargs)  # type: ignore[arg-type]
