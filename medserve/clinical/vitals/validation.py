"""Physiological plausibility and freshness of vital-sign samples.

A value is implausible when it cannot be a measurement of a living patient in the stated unit (a
saturation above 100 %, a pulse of 400) or is not a number at all. Plausible but alarming values
(a pulse of 30, a temperature of 34 °C) pass: scoring them is NEWS2's job, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

from medserve.clinical.vitals.signs import ACVPU
from medserve.values.errors import InvalidInput

if TYPE_CHECKING:
    from medserve.clinical.vitals.signs import VitalSigns


class ImplausibleVitalSign(InvalidInput, ValueError):
    """A vital sign that cannot be a real measurement; names the field, the value and why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"implausible {field} {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    unit: str


# Inclusive plausible ranges. Rates of 0 are allowed (apnoea, asystole are real, if grave).
PLAUSIBLE_RANGES: dict[str, _Range] = {
    "respiration_rate": _Range(0.0, 80.0, "breaths/min"),
    "spo2": _Range(0.0, 100.0, "%"),
    "systolic_bp": _Range(20.0, 300.0, "mmHg"),
    "pulse": _Range(0.0, 300.0, "beats/min"),
    "temperature": _Range(25.0, 45.0, "°C"),
}


def _fahrenheit_to_celsius(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _temperature_hint(value: float) -> str:
    """A likely unit mistake behind an out-of-range temperature, or ''."""
    if 77.0 <= value <= 113.0:  # 25-45 °C written in °F
        return f"; looks like °F ({value:g} °F is {_fahrenheit_to_celsius(value):.1f} °C)"
    if 298.15 <= value <= 318.15:  # 25-45 °C written in kelvin
        return f"; looks like kelvin ({value:g} K is {value - 273.15:.1f} °C)"
    return ""


def check_value(field: str, value: object) -> ImplausibleVitalSign | None:
    """Why the numeric vital sign ``field`` (a key of ``PLAUSIBLE_RANGES``) is implausible, or None."""
    bounds = PLAUSIBLE_RANGES.get(field)
    if bounds is None:
        raise KeyError(f"no plausible range for vital sign {field!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        return ImplausibleVitalSign(field, value, "must be a number")
    number = float(value)
    if math.isnan(number):
        return ImplausibleVitalSign(field, value, "is not a number (NaN)")
    if math.isinf(number):
        return ImplausibleVitalSign(field, value, "is infinite")
    expected = f"{bounds.low:g}-{bounds.high:g} {bounds.unit}"
    if number < 0:
        return ImplausibleVitalSign(field, value, f"is negative; expected {expected}")
    if not bounds.low <= number <= bounds.high:
        hint = _temperature_hint(number) if field == "temperature" else ""
        return ImplausibleVitalSign(field, value, f"outside the plausible range {expected}{hint}")
    return None


def _check_oxygen(value: object) -> ImplausibleVitalSign | None:
    if isinstance(value, bool):
        return None
    return ImplausibleVitalSign("on_supplemental_oxygen", value, "must be true or false")


def _check_consciousness(value: object) -> ImplausibleVitalSign | None:
    if isinstance(value, ACVPU):
        return None
    return ImplausibleVitalSign("consciousness", value, "must be one of A, C, V, P, U")


def implausible_fields(vitals: VitalSigns) -> list[ImplausibleVitalSign]:
    """Every implausible field of ``vitals``, in declaration order; empty when all are plausible."""
    problems = [
        check_value("respiration_rate", vitals.respiration_rate),
        check_value("spo2", vitals.spo2),
        _check_oxygen(vitals.on_supplemental_oxygen),
        check_value("systolic_bp", vitals.systolic_bp),
        check_value("pulse", vitals.pulse),
        _check_consciousness(vitals.consciousness),
        check_value("temperature", vitals.temperature),
    ]
    return [problem for problem in problems if problem is not None]


def validate_vital_signs(vitals: VitalSigns) -> None:
    """Raise ``ImplausibleVitalSign`` for the first implausible field of ``vitals``."""
    problems = implausible_fields(vitals)
    if problems:
        raise problems[0]


def stale_fields(
    timestamps: dict[str, float],
    now: float,
    max_age_s: float,
    required: Iterable[str] = (),
) -> list[str]:
    """The fields whose latest sample is older than ``max_age_s`` seconds at ``now``.

    A sample exactly ``max_age_s`` old is still fresh; one stamped in the future (clock skew) is
    fresh; a non-finite timestamp is stale. Fields named in ``required`` but missing from
    ``timestamps`` are stale too. The result keeps ``timestamps``' order, then ``required``'s.
    """
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, got {now!r}")
    if not math.isfinite(max_age_s) or max_age_s < 0:
        raise ValueError(f"max_age_s must be a finite, non-negative number of seconds, got {max_age_s!r}")
    stale = [field for field, t in timestamps.items() if not math.isfinite(t) or now - t > max_age_s]
    for field in required:
        if field not in timestamps and field not in stale:
            stale.append(field)
    return stale
