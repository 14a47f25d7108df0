"""NEWS2 against the RCP 2017 chart: both sides of every band edge, aggregation, bands, responses."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from medserve.clinical.vitals.news2 import (
    ClinicalRisk,
    MonitoringFrequency,
    NEWS2Score,
    air_or_oxygen_score,
    consciousness_score,
    pulse_score,
    respiration_rate_score,
    score_news2,
    spo2_scale1_score,
    spo2_scale2_score,
    systolic_bp_score,
    temperature_score,
)
from medserve.clinical.vitals.signs import ACVPU, VitalSigns
from medserve.clinical.vitals.validation import ImplausibleVitalSign

NORMAL = VitalSigns(
    respiration_rate=16,
    spo2=97,
    on_supplemental_oxygen=False,
    systolic_bp=120,
    pulse=70,
    consciousness=ACVPU.ALERT,
    temperature=37.0,
)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3)],
)
def test_respiration_rate_bands(rate: float, expected: int) -> None:
    assert respiration_rate_score(rate) == expected
    assert score_news2(replace(NORMAL, respiration_rate=rate)).respiration_rate == expected


@pytest.mark.parametrize(
    ("spo2", "expected"),
    [(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
)
@pytest.mark.parametrize("oxygen", [False, True])
def test_spo2_scale1_bands_ignore_oxygen(spo2: float, expected: int, oxygen: bool) -> None:
    assert spo2_scale1_score(spo2) == expected
    vitals = replace(NORMAL, spo2=spo2, on_supplemental_oxygen=oxygen)
    assert score_news2(vitals, spo2_scale=1).spo2 == expected


@pytest.mark.parametrize(
    ("spo2", "on_air", "on_oxygen"),
    [
        (70, 3, 3),
        (83, 3, 3),
        (84, 2, 2),
        (85, 2, 2),
        (86, 1, 1),
        (87, 1, 1),
        (88, 0, 0),
        (92, 0, 0),
        (93, 0, 1),
        (94, 0, 1),
        (95, 0, 2),
        (96, 0, 2),
        (97, 0, 3),
        (100, 0, 3),
    ],
)
def test_spo2_scale2_bands_split_on_air_and_oxygen(spo2: float, on_air: int, on_oxygen: int) -> None:
    assert spo2_scale2_score(spo2, on_supplemental_oxygen=False) == on_air
    assert spo2_scale2_score(spo2, on_supplemental_oxygen=True) == on_oxygen
    air = score_news2(replace(NORMAL, spo2=spo2, on_supplemental_oxygen=False), spo2_scale=2)
    oxygen = score_news2(replace(NORMAL, spo2=spo2, on_supplemental_oxygen=True), spo2_scale=2)
    assert (air.spo2, air.air_or_oxygen, air.spo2_scale) == (on_air, 0, 2)
    assert (oxygen.spo2, oxygen.air_or_oxygen) == (on_oxygen, 2)


def test_air_or_oxygen() -> None:
    assert air_or_oxygen_score(False) == 0
    assert air_or_oxygen_score(True) == 2


@pytest.mark.parametrize(
    ("systolic", "expected"),
    [
        (60, 3),
        (90, 3),
        (91, 2),
        (100, 2),
        (101, 1),
        (110, 1),
        (111, 0),
        (219, 0),
        (220, 3),
        (260, 3),
    ],
)
def test_systolic_bp_bands(systolic: float, expected: int) -> None:
    assert systolic_bp_score(systolic) == expected
    assert score_news2(replace(NORMAL, systolic_bp=systolic)).systolic_bp == expected


@pytest.mark.parametrize(
    ("pulse", "expected"),
    [
        (20, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
        (200, 3),
    ],
)
def test_pulse_bands(pulse: float, expected: int) -> None:
    assert pulse_score(pulse) == expected
    assert score_news2(replace(NORMAL, pulse=pulse)).pulse == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (ACVPU.ALERT, 0),
        (ACVPU.NEW_CONFUSION, 3),
        (ACVPU.VOICE, 3),
        (ACVPU.PAIN, 3),
        (ACVPU.UNRESPONSIVE, 3),
    ],
)
def test_consciousness(level: ACVPU, expected: int) -> None:
    assert consciousness_score(level) == expected
    assert score_news2(replace(NORMAL, consciousness=level)).consciousness == expected


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (33.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (41.0, 2),
    ],
)
def test_temperature_bands(temperature: float, expected: int) -> None:
    assert temperature_score(temperature) == expected
    assert score_news2(replace(NORMAL, temperature=temperature)).temperature == expected


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        # Whole-number parameters: rounded half up to the chart's integers.
        (respiration_rate_score, 8.4, 3),
        (respiration_rate_score, 8.5, 1),
        (respiration_rate_score, 20.49, 0),
        (respiration_rate_score, 20.5, 2),
        (respiration_rate_score, 24.5, 3),
        (pulse_score, 40.5, 1),
        (pulse_score, 90.4, 0),
        (pulse_score, 90.5, 1),
        (pulse_score, 130.5, 3),
        (systolic_bp_score, 90.4, 3),
        (systolic_bp_score, 90.5, 2),
        (systolic_bp_score, 219.5, 3),
        (spo2_scale1_score, 91.5, 2),
        (spo2_scale1_score, 95.4, 1),
        (spo2_scale1_score, 95.5, 0),
        # Temperature: rounded half up to one decimal, 36.05 counting as a half despite binary floats.
        (temperature_score, 35.04, 3),
        (temperature_score, 35.05, 1),
        (temperature_score, 36.04, 1),
        (temperature_score, 36.05, 0),
        (temperature_score, 38.05, 1),
        (temperature_score, 39.05, 2),
    ],
)
def test_non_integer_inputs_round_half_up_to_chart_resolution(
    function: object, value: float, expected: int
) -> None:
    assert callable(function)
    assert function(value) == expected


def test_scale2_rounding_at_air_oxygen_split() -> None:
    assert spo2_scale2_score(92.4, on_supplemental_oxygen=True) == 0
    assert spo2_scale2_score(92.5, on_supplemental_oxygen=True) == 1
    assert spo2_scale2_score(92.5, on_supplemental_oxygen=False) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_cannot_be_scored(bad: float) -> None:
    with pytest.raises(ImplausibleVitalSign) as raised:
        score_news2(replace(NORMAL, pulse=bad))
    assert raised.value.field == "pulse"


@pytest.mark.parametrize("scale", [0, 3, True])
def test_spo2_scale_must_be_1_or_2(scale: object) -> None:
    with pytest.raises(ValueError, match="spo2_scale"):
        score_news2(NORMAL, spo2_scale=scale)  # type: ignore[arg-type]


def _score(**scores: int) -> NEWS2Score:
    fields = dict.fromkeys(
        ("respiration_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness", "temperature"),
        0,
    )
    fields.update(scores)
    return NEWS2Score(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "total", "red", "risk", "frequency"),
    [
        (_score(), 0, False, ClinicalRisk.LOW, MonitoringFrequency.MIN_12_HOURLY),
        (_score(pulse=1), 1, False, ClinicalRisk.LOW, MonitoringFrequency.MIN_4_TO_6_HOURLY),
        (_score(pulse=2, spo2=2), 4, False, ClinicalRisk.LOW, MonitoringFrequency.MIN_4_TO_6_HOURLY),
        (_score(consciousness=3), 3, True, ClinicalRisk.LOW_MEDIUM, MonitoringFrequency.MIN_1_HOURLY),
        (
            _score(consciousness=3, pulse=1),
            4,
            True,
            ClinicalRisk.LOW_MEDIUM,
            MonitoringFrequency.MIN_1_HOURLY,
        ),
        (
            _score(pulse=2, spo2=2, temperature=1),
            5,
            False,
            ClinicalRisk.MEDIUM,
            MonitoringFrequency.MIN_1_HOURLY,
        ),
        (_score(consciousness=3, pulse=2), 5, True, ClinicalRisk.MEDIUM, MonitoringFrequency.MIN_1_HOURLY),
        (
            _score(pulse=2, spo2=2, temperature=2),
            6,
            False,
            ClinicalRisk.MEDIUM,
            MonitoringFrequency.MIN_1_HOURLY,
        ),
        (
            _score(pulse=2, spo2=2, temperature=2, systolic_bp=1),
            7,
            False,
            ClinicalRisk.HIGH,
            MonitoringFrequency.CONTINUOUS,
        ),
        (
            _score(consciousness=3, pulse=3, spo2=1),
            7,
            True,
            ClinicalRisk.HIGH,
            MonitoringFrequency.CONTINUOUS,
        ),
    ],
)
def test_risk_bands_at_their_edges(
    score: NEWS2Score, total: int, red: bool, risk: ClinicalRisk, frequency: MonitoringFrequency
) -> None:
    assert score.total == total
    assert score.any_single_parameter_3 is red
    assert score.risk is risk
    assert score.monitoring_frequency is frequency


@pytest.mark.parametrize(
    ("risk", "response"),
    [
        (ClinicalRisk.LOW, "Ward-based response"),
        (ClinicalRisk.LOW_MEDIUM, "Urgent ward-based response"),
        (ClinicalRisk.MEDIUM, "Key threshold for urgent response"),
        (ClinicalRisk.HIGH, "Urgent or emergency response"),
    ],
)
def test_chart2_response_per_band(risk: ClinicalRisk, response: str) -> None:
    examples = {
        ClinicalRisk.LOW: _score(pulse=1),
        ClinicalRisk.LOW_MEDIUM: _score(temperature=3),
        ClinicalRisk.MEDIUM: _score(pulse=3, air_or_oxygen=2),
        ClinicalRisk.HIGH: _score(pulse=3, respiration_rate=3, spo2=1),
    }
    assert examples[risk].risk is risk
    assert examples[risk].response == response


def test_clinical_response_distinguishes_zero_from_low() -> None:
    assert _score().clinical_response == "Continue routine NEWS monitoring"
    assert "registered nurse" in _score(pulse=1).clinical_response.lower()


def test_maximum_total_is_20() -> None:
    worst = VitalSigns(5, 80, True, 80, 150, ACVPU.UNRESPONSIVE, 34.0)
    score = score_news2(worst)
    assert score.total == 3 + 3 + 2 + 3 + 3 + 3 + 3 == 20
    assert score.risk is ClinicalRisk.HIGH


def test_band_ranks_increase() -> None:
    ranks = [
        r.rank for r in (ClinicalRisk.LOW, ClinicalRisk.LOW_MEDIUM, ClinicalRisk.MEDIUM, ClinicalRisk.HIGH)
    ]
    assert ranks == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("vitals", "scale", "parameters", "total", "risk"),
    [
        # A well adult: all normal.
        (NORMAL, 1, (0, 0, 0, 0, 0, 0, 0), 0, ClinicalRisk.LOW),
        # Early sepsis: RR 22 (2), SpO2 95 (1), air (0), SBP 105 (1), HR 105 (1), alert (0), 38.4 (1).
        (
            VitalSigns(22, 95, False, 105, 105, ACVPU.ALERT, 38.4),
            1,
            (2, 1, 0, 1, 1, 0, 1),
            6,
            ClinicalRisk.MEDIUM,
        ),
        # New confusion alone is a red score: low-medium risk.
        (
            replace(NORMAL, consciousness=ACVPU.NEW_CONFUSION),
            1,
            (0, 0, 0, 0, 0, 3, 0),
            3,
            ClinicalRisk.LOW_MEDIUM,
        ),
        # Septic shock: RR 28 (3), SpO2 91 on O2 (3+2), SBP 85 (3), HR 125 (2), voice (3), 39.5 (2).
        (
            VitalSigns(28, 91, True, 85, 125, ACVPU.VOICE, 39.5),
            1,
            (3, 3, 2, 3, 2, 3, 2),
            18,
            ClinicalRisk.HIGH,
        ),
        # COPD with hypercapnia at target on scale 2: 90 % on 2 L O2 scores 0 for SpO2 (only oxygen, 2).
        (VitalSigns(18, 90, True, 130, 80, ACVPU.ALERT, 36.8), 2, (0, 0, 2, 0, 0, 0, 0), 2, ClinicalRisk.LOW),
        # The same patient over-oxygenated at 97 % on oxygen: scale 2 scores it 3, a red score.
        (
            VitalSigns(18, 97, True, 130, 80, ACVPU.ALERT, 36.8),
            2,
            (0, 3, 2, 0, 0, 0, 0),
            5,
            ClinicalRisk.MEDIUM,
        ),
        # ... whereas on scale 1 the same 90 % would be 3.
        (
            VitalSigns(18, 90, True, 130, 80, ACVPU.ALERT, 36.8),
            1,
            (0, 3, 2, 0, 0, 0, 0),
            5,
            ClinicalRisk.MEDIUM,
        ),
    ],
)
def test_worked_examples(
    vitals: VitalSigns, scale: int, parameters: tuple[int, ...], total: int, risk: ClinicalRisk
) -> None:
    score = score_news2(vitals, spo2_scale=scale)  # type: ignore[arg-type]
    assert tuple(score.parameter_scores().values()) == parameters
    assert score.total == total
    assert score.risk is risk


@pytest.mark.parametrize(
    "scores",
    [{"pulse": 4}, {"pulse": -1}, {"air_or_oxygen": 1}, {"air_or_oxygen": 3}, {"temperature": True}],
)
def test_score_rejects_impossible_parameter_scores(scores: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="NEWS2"):
        _score(**scores)


def test_vital_signs_and_score_are_frozen() -> None:
    with pytest.raises(AttributeError):
        NORMAL.pulse = 80  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _score().pulse = 1  # type: ignore[misc]


def test_numpy_scalars_score_like_python_numbers() -> None:
    vitals = VitalSigns(
        respiration_rate=np.int64(21),  # type: ignore[arg-type]
        spo2=np.float64(95.0),
        on_supplemental_oxygen=False,
        systolic_bp=np.int32(100),  # type: ignore[arg-type]
        pulse=np.float32(90.5),  # type: ignore[arg-type]
        consciousness=ACVPU.ALERT,
        temperature=np.float32(36.05),  # type: ignore[arg-type]
    )
    assert tuple(score_news2(vitals).parameter_scores().values()) == (2, 1, 0, 2, 1, 0, 0)


@pytest.mark.parametrize("bad", ["20", None, True])
def test_non_numbers_cannot_be_scored(bad: object) -> None:
    with pytest.raises(ImplausibleVitalSign, match="must be a number"):
        score_news2(replace(NORMAL, respiration_rate=bad))  # type: ignore[arg-type]


def test_fractions_round_like_floats() -> None:
    assert temperature_score(Fraction(7211, 200)) == 0  # type: ignore[arg-type]  # 36.055 -> 36.1
    assert pulse_score(Fraction(181, 2)) == 1  # type: ignore[arg-type]  # 90.5 -> 91
