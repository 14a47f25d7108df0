"""Plausibility of vital signs (a clear reason per field) and freshness of samples."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from medserve.clinical.vitals.signs import ACVPU, VitalSigns
from medserve.clinical.vitals.validation import (
    ImplausibleVitalSign,
    check_value,
    implausible_fields,
    stale_fields,
    validate_vital_signs,
)
from medserve.values.errors import InvalidInput

NORMAL = VitalSigns(16, 97, False, 120, 70, ACVPU.ALERT, 37.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spo2", 0),
        ("spo2", 100),
        ("respiration_rate", 0),
        ("respiration_rate", 80),
        ("pulse", 0),
        ("pulse", 300),
        ("systolic_bp", 20),
        ("systolic_bp", 300),
        ("temperature", 25.0),
        ("temperature", 45.0),
        ("temperature", 34.2),
    ],
)
def test_plausible_edges_pass(field: str, value: float) -> None:
    assert check_value(field, value) is None
    validate_vital_signs(replace(NORMAL, **{field: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("spo2", 100.1, "outside the plausible range 0-100 %"),
        ("spo2", 101, "outside the plausible range 0-100 %"),
        ("spo2", -1, "negative"),
        ("respiration_rate", -2, "negative"),
        ("respiration_rate", 81, "0-80 breaths/min"),
        ("pulse", -10, "negative"),
        ("pulse", 301, "0-300 beats/min"),
        ("systolic_bp", 19, "20-300 mmHg"),
        ("systolic_bp", 301, "20-300 mmHg"),
        ("temperature", 24.9, "25-45 °C"),
        ("temperature", 45.1, "25-45 °C"),
        ("temperature", math.nan, "NaN"),
        ("pulse", math.inf, "infinite"),
        ("spo2", -math.inf, "infinite"),
        ("systolic_bp", "120", "must be a number"),
        ("pulse", True, "must be a number"),
    ],
)
def test_implausible_values_name_field_and_reason(field: str, value: object, reason: str) -> None:
    with pytest.raises(ImplausibleVitalSign) as raised:
        validate_vital_signs(replace(NORMAL, **{field: value}))  # type: ignore[arg-type]
    error = raised.value
    assert error.field == field
    assert error.value is value or (isinstance(value, float) and math.isnan(value))
    assert reason in error.reason
    assert field in str(error)


@pytest.mark.parametrize(
    ("value", "celsius"), [(95.0, "35.0"), (98.6, "37.0"), (104.0, "40.0"), (110.0, "43.3")]
)
def test_fahrenheit_temperature_gets_a_hint(value: float, celsius: str) -> None:
    problem = check_value("temperature", value)
    assert problem is not None
    assert "looks like °F" in problem.reason
    assert f"{celsius} °C" in problem.reason


def test_kelvin_temperature_gets_a_hint() -> None:
    problem = check_value("temperature", 310.15)
    assert problem is not None
    assert "looks like kelvin" in problem.reason


def test_far_out_temperature_has_no_unit_hint() -> None:
    problem = check_value("temperature", 60.0)
    assert problem is not None
    assert "looks like" not in problem.reason


def test_error_is_a_value_error_and_an_invalid_input() -> None:
    error = ImplausibleVitalSign("pulse", 400, "too fast")
    assert isinstance(error, ValueError)
    assert isinstance(error, InvalidInput)
    assert (error.field, error.value, error.reason) == ("pulse", 400, "too fast")


def test_all_problems_are_listed_in_field_order() -> None:
    vitals = VitalSigns(
        respiration_rate=-1,
        spo2=140,
        on_supplemental_oxygen="yes",  # type: ignore[arg-type]
        systolic_bp=120,
        pulse=math.nan,
        consciousness="A",  # type: ignore[arg-type]
        temperature=98.6,
    )
    fields = [p.field for p in implausible_fields(vitals)]
    assert fields == [
        "respiration_rate",
        "spo2",
        "on_supplemental_oxygen",
        "pulse",
        "consciousness",
        "temperature",
    ]
    with pytest.raises(ImplausibleVitalSign) as raised:
        validate_vital_signs(vitals)
    assert raised.value.field == "respiration_rate"


def test_normal_vitals_have_no_problems() -> None:
    assert implausible_fields(NORMAL) == []


def test_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        check_value("heart_rate", 70)


def test_stale_fields() -> None:
    now = 1_000.0
    timestamps = {"pulse": 990.0, "spo2": 700.0, "temperature": 940.0, "systolic_bp": 939.9}
    assert stale_fields(timestamps, now, max_age_s=60.0) == ["spo2", "systolic_bp"]


def test_sample_exactly_at_max_age_is_fresh_and_future_samples_are_fresh() -> None:
    assert stale_fields({"pulse": 940.0, "spo2": 1_005.0}, 1_000.0, 60.0) == []


def test_non_finite_timestamps_and_missing_required_fields_are_stale() -> None:
    timestamps = {"pulse": math.nan, "spo2": 999.0}
    assert stale_fields(timestamps, 1_000.0, 60.0, required=("spo2", "temperature", "pulse")) == [
        "pulse",
        "temperature",
    ]


def test_empty_timestamps() -> None:
    assert stale_fields({}, 0.0, 1.0) == []


@pytest.mark.parametrize(("now", "max_age"), [(math.nan, 1.0), (0.0, -1.0), (0.0, math.inf)])
def test_stale_fields_rejects_bad_arguments(now: float, max_age: float) -> None:
    with pytest.raises(ValueError):
        stale_fields({"pulse": 0.0}, now, max_age)


def test_numpy_scalars_are_checked_like_python_numbers() -> None:
    assert check_value("pulse", np.int64(70)) is None
    problem = check_value("spo2", np.float32(101.0))
    assert problem is not None and problem.field == "spo2"
