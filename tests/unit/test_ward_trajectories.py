"""The simulated ward's patient trajectories (pure, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from medserve.clinical.vitals.validation import implausible_fields
from medserve.demo.ecg import CLASSES, SAMPLE_RATE
from medserve.demo.ward_trajectories import (
    ECG_CHUNK_SAMPLES,
    TRUTH_THRESHOLD,
    build_ward,
    vital_signs,
)
from medserve.streaming.messages import VITAL_FIELDS


def test_same_seed_same_ward_other_seed_other_ward() -> None:
    a, b, c = build_ward(20, 600, seed=5), build_ward(20, 600, seed=5), build_ward(20, 600, seed=6)
    assert a == b
    assert a != c
    for pa, pb in zip(a.patients, b.patients):
        for t in (0.0, 17.0, 333.0):
            assert pa.vitals_at(t) == pb.vitals_at(t)
            assert pa.rhythm_at(t) == pb.rhythm_at(t)
        np.testing.assert_array_equal(pa.ecg_stream().next_chunk(), pb.ecg_stream().next_chunk())
    assert a.truth() == b.truth()


def test_vitals_at_is_a_function_of_time() -> None:
    patient = build_ward(3, 300, seed=1).patients[0]
    assert patient.vitals_at(42.0) == patient.vitals_at(42.0)
    assert patient.vitals_at(42.0) != patient.vitals_at(43.0)
    assert tuple(patient.vitals_at(0.0)) == VITAL_FIELDS


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_fraction_of_deteriorating_beds(fraction: float) -> None:
    ward = build_ward(40, 600, seed=2, deteriorating=fraction)
    assert sum(p.deteriorating for p in ward.patients) == round(40 * fraction)
    assert [p.bed for p in ward.patients] == list(range(1, 41))
    for p in ward.patients:
        if p.deterioration is not None:
            assert 0 <= p.deterioration.onset_s <= 300


def test_stable_patients_mostly_score_0_to_2() -> None:
    ward = build_ward(60, 1800, seed=3)
    totals = [
        p.news2_at(float(t)).total for p in ward.patients if not p.deteriorating for t in range(0, 1800, 10)
    ]
    assert len(totals) > 1000
    low = sum(total <= 2 for total in totals) / len(totals)
    assert low >= 0.97
    assert max(totals) < TRUTH_THRESHOLD  # noise alone never reaches the alert threshold


@pytest.mark.parametrize("minutes", [1, 10, 60])
def test_deteriorating_patients_reach_5_after_onset_and_7_by_the_end(minutes: int) -> None:
    duration = minutes * 60.0
    ward = build_ward(50, duration, seed=4)
    truth = ward.truth()
    kinds = set()
    for p in ward.patients:
        if p.deterioration is None:
            continue
        kinds.add(p.deterioration.kind)
        first = truth[p.bed]
        assert first is not None, f"bed {p.bed} never reached NEWS2 {TRUTH_THRESHOLD}"
        assert first >= p.deterioration.onset_s
        assert p.news2_at(first).total >= TRUTH_THRESHOLD
        end = p.deterioration.onset_s + p.deterioration.ramp_s
        assert end < duration
        late = [p.news2_at(t).total for t in np.arange(end, duration, max(1.0, duration / 200))]
        assert np.mean(late) >= 7
    assert kinds == {"sepsis", "atrial_fibrillation", "tachycardia"}


def test_rhythm_follows_the_deterioration() -> None:
    ward = build_ward(60, 1200, seed=8)
    for p in ward.patients:
        assert p.rhythm_at(0.0) in CLASSES
        d = p.deterioration
        if d is None:
            assert {p.rhythm_at(float(t)) for t in range(0, 1200, 30)} == {"normal_sinus"}
        elif d.kind == "atrial_fibrillation":
            assert p.rhythm_at(d.onset_s + 1) == "atrial_fibrillation"
        else:
            assert p.rhythm_at(d.onset_s + d.ramp_s) == "tachycardia"


def test_vitals_are_plausible() -> None:
    ward = build_ward(30, 1200, seed=9, deteriorating=0.5)
    for p in ward.patients:
        for t in range(0, 1200, 7):
            vitals = p.vitals_at(float(t))
            assert implausible_fields(vital_signs(vitals)) == []
            assert 4 <= vitals["respiration_rate"] <= 40
            assert 80 <= vitals["spo2"] <= 100
            assert 80 <= vitals["systolic_bp"] <= 180
            assert 45 <= vitals["pulse"] <= 160
            assert 35.5 <= vitals["temperature"] <= 40.0
            assert vitals["on_supplemental_oxygen"] in (0.0, 1.0)
            assert vitals["consciousness"] in (0.0, 1.0)


def test_ecg_chunks_are_2_s_and_continuous() -> None:
    patient = next(p for p in build_ward(10, 120, seed=11, deteriorating=1.0).patients)
    stream = patient.ecg_stream()
    chunks = [stream.next_chunk() for _ in range(30)]  # 60 s: six 10 s windows joined
    assert ECG_CHUNK_SAMPLES == 2 * SAMPLE_RATE == 500
    assert all(c.shape == (500,) and c.dtype == np.float32 for c in chunks)
    assert stream.emitted == 30 * 500
    signal = np.concatenate(chunks)
    assert np.isfinite(signal).all()
    steps = np.abs(np.diff(signal))
    window_joins = np.arange(2500, signal.size, 2500) - 1
    # no jump where one 10 s window meets the next beyond what the signal does within a window
    assert steps[window_joins].max() <= np.percentile(steps, 99.9)
    # deterministic: a second stream of the same patient hands out the same samples
    again = patient.ecg_stream()
    np.testing.assert_array_equal(np.concatenate([again.next_chunk() for _ in range(30)]), signal)


def test_ecg_switches_to_the_deteriorated_rhythm() -> None:
    ward = build_ward(20, 120, seed=12, deteriorating=1.0)
    af = next(p for p in ward.patients if p.deterioration and p.deterioration.kind == "atrial_fibrillation")
    assert af.deterioration is not None
    assert af.rhythm_at(max(af.deterioration.onset_s - 1, 0)) in ("normal_sinus", "atrial_fibrillation")
    assert af.rhythm_at(119.0) == "atrial_fibrillation"


def test_build_ward_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_ward(0, 60, seed=0)
    with pytest.raises(ValueError):
        build_ward(5, 0, seed=0)
    with pytest.raises(ValueError):
        build_ward(5, 60, seed=0, deteriorating=1.5)
