"""How the example models train: the profile that sets their steps, the progress lines a build
prints, and the quality floors that fail a build."""

from __future__ import annotations

import logging

import pytest

from medserve.demo.models._profile import (
    PROFILE_ENV,
    PROFILES,
    check_profile,
    current_profile,
    for_profile,
    using_profile,
)
from medserve.demo.models._progress import PROGRESS_LOGGER, TrainingProgress, duration
from medserve.demo.models._quality import BuildRecord, Floor, QualityFloorMissed, check_floors
from medserve.demo.models.chest_xray import STEPS as CHEST_STEPS
from medserve.demo.models.ct_segmentation import STEPS as CT_STEPS


def test_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert current_profile() == "default"
    monkeypatch.setenv(PROFILE_ENV, " Test ")
    assert current_profile() == "test"
    monkeypatch.setenv(PROFILE_ENV, "")
    assert current_profile() == "default"
    for bad in ("fast", "40", "tests"):
        monkeypatch.setenv(PROFILE_ENV, bad)
        with pytest.raises(ValueError, match=f"{PROFILE_ENV}='{bad}'.*default, test"):
            current_profile()


def test_a_chosen_profile_wins_over_the_environment_inside_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "test")
    with using_profile("default") as chosen:
        assert chosen == "default" and current_profile() == "default"
        assert for_profile({"default": 3, "test": 1}) == 3
    assert current_profile() == "test"
    with using_profile(None) as chosen:
        assert chosen == "test"
    with pytest.raises(ValueError, match="'quick' is not an example profile"):
        check_profile("quick")
    assert PROFILES == ("default", "test")


def test_every_trained_model_has_steps_for_every_profile() -> None:
    for profile in PROFILES:
        assert CHEST_STEPS[profile].low_res > 0 and CHEST_STEPS[profile].full_res > 0
        assert CT_STEPS[profile] > 0
    # The test profile keeps the CT model strong enough to find the phantoms' lesions in the
    # imaging and job tests (they passed with 1,450-1,700 steps).
    assert CT_STEPS["test"] >= 1700


def test_progress_reports_every_interval_with_the_time_left(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = TrainingProgress("demo_model", 10, every_s=5.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    for _ in range(4):  # 4 steps of 1 s: no line yet
        now[0] += 1.0
        progress.advance(loss=0.5)
    assert caplog.messages == []
    now[0] += 1.0
    progress.advance(loss=0.25)  # 5 steps in 5 s: the first line, 5 steps of 1 s left
    assert caplog.messages == ["demo_model: step 5/10 (50 %), loss 0.2500, 5 s, about 5 s left"]
    for _ in range(5):
        now[0] += 1.0
        progress.advance()
    assert len(caplog.messages) == 1  # the last step says nothing: the model's done line follows
    assert progress.seconds == 10.0


def test_progress_weighs_costly_steps() -> None:
    now = [0.0]
    progress = TrainingProgress("demo_model", 4, clock=lambda: now[0])
    progress.weigh(2 + 2 * 4.0)  # two cheap steps, then two costing four times as much
    for _ in range(2):
        now[0] += 1.0
        progress.advance(work=1.0)
    assert progress.line(now[0]).endswith("2 s, about 8 s left")
    with pytest.raises(ValueError, match="at least one step"):
        TrainingProgress("demo_model", 0)


def test_duration_reads_like_a_person_would_say_it() -> None:
    assert [duration(s) for s in (0.4, 42, 59.6, 61, 3600 + 5)] == [
        "0 s",
        "42 s",
        "1 min 00 s",
        "1 min 01 s",
        "60 min 05 s",
    ]


def test_floors_name_the_model_metric_value_and_floor() -> None:
    floors = (Floor("mean AUC", 0.8), Floor("coverage", 0.65, 0.95), Floor("MAE ratio", maximum=0.85))
    check_floors("demo_model", "default", {"mean AUC": 0.8, "coverage": 0.95, "MAE ratio": 0.1}, floors)
    with pytest.raises(QualityFloorMissed) as missed:
        check_floors("demo_model", "test", {"mean AUC": 0.6812, "coverage": 0.97, "MAE ratio": 0.85}, floors)
    message = str(missed.value)
    assert message.startswith("example model demo_model (profile test) missed its quality floor: ")
    assert "held-out mean AUC 0.6812 is not >= 0.8" in message
    assert "held-out coverage 0.9700 is not between 0.65 and 0.95" in message
    assert "MAE ratio" not in message and message.endswith("the model was not written")
    assert [floor.metric for floor, _ in missed.value.misses] == ["mean AUC", "coverage"]
    with pytest.raises(QualityFloorMissed, match="nan is not >= 0.8"):
        check_floors("demo_model", "default", {"mean AUC": float("nan")}, floors[:1])


def test_build_record_is_what_the_config_shows() -> None:
    record = BuildRecord("test", 7, 120, 12.345, {"DICE": 0.812345}, (Floor("DICE", 0.7),))
    assert record.as_metadata() == {
        "profile": "test",
        "seed": 7,
        "steps": 120,
        "threads": 1,
        "training_seconds": 12.3,
        "held_out": {"DICE": 0.8123},
        "floors": {"DICE": ">= 0.7"},
    }
