"""NEWS2, the Royal College of Physicians' National Early Warning Score 2 (RCP, December 2017).

``score_news2`` scores one set of observations exactly as chart 1 of the RCP report does, and reads
the risk band, the clinical response and the monitoring frequency off charts 2 and 3.

Band edges and non-integer inputs. The chart's bands are written on whole numbers (temperature on
tenths of a degree), so a measurement is first rounded to the chart's resolution, halves away from
zero ("round half up", never Python's round-half-to-even), and then looked up:

* respiration rate, SpO2, systolic blood pressure and pulse: to the nearest whole number
  (20.4 -> 20 scores 0, 20.5 -> 21 scores 2);
* temperature: to one decimal (36.04 -> 36.0 scores 1, 36.05 -> 36.1 scores 0).

Rounding is done in decimal on the number's shortest representation, so 36.05 is a half and rounds
up, although the binary float nearest to it is a little below it. Values that cannot be scored
(NaN, infinities) raise ``ImplausibleVitalSign``; whether a finite value is physiologically
plausible is ``validation.validate_vital_signs``'s question, asked before scoring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import Enum
from numbers import Real
from typing import Literal

from medserve.clinical.vitals.signs import ACVPU, VitalSigns
from medserve.clinical.vitals.validation import ImplausibleVitalSign

SpO2Scale = Literal[1, 2]


class ClinicalRisk(Enum):
    """Chart 2's clinical risk bands, in increasing order of risk."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 for LOW up to 3 for HIGH, for comparing bands."""
        return _RISK_ORDER.index(self)


_RISK_ORDER = (ClinicalRisk.LOW, ClinicalRisk.LOW_MEDIUM, ClinicalRisk.MEDIUM, ClinicalRisk.HIGH)


class MonitoringFrequency(Enum):
    """Chart 3's minimum frequency of monitoring."""

    MIN_12_HOURLY = "minimum 12-hourly"
    MIN_4_TO_6_HOURLY = "minimum 4–6-hourly"
    MIN_1_HOURLY = "minimum 1-hourly"
    CONTINUOUS = "continuous monitoring of vital signs"


# Chart 2: the response triggered by each risk band.
RESPONSE: dict[ClinicalRisk, str] = {
    ClinicalRisk.LOW: "Ward-based response",
    ClinicalRisk.LOW_MEDIUM: "Urgent ward-based response",
    ClinicalRisk.MEDIUM: "Key threshold for urgent response",
    ClinicalRisk.HIGH: "Urgent or emergency response",
}

# Chart 3: the clinical response, abridged; a total of 0 has its own row within the LOW band.
_CLINICAL_RESPONSE_ZERO = "Continue routine NEWS monitoring"
_CLINICAL_RESPONSE: dict[ClinicalRisk, str] = {
    ClinicalRisk.LOW: (
        "Inform registered nurse, who must assess the patient; registered nurse decides whether "
        "increased frequency of monitoring and/or escalation of care is required"
    ),
    ClinicalRisk.LOW_MEDIUM: (
        "Registered nurse to inform medical team caring for the patient, who will review and decide "
        "whether escalation of care is necessary"
    ),
    ClinicalRisk.MEDIUM: (
        "Registered nurse to immediately inform the medical team caring for the patient; urgent "
        "assessment by a clinician or team with core competencies in the care of acutely ill "
        "patients; clinical care in an environment with monitoring facilities"
    ),
    ClinicalRisk.HIGH: (
        "Registered nurse to immediately inform the medical team caring for the patient (at least "
        "specialist registrar level); emergency assessment by a team with critical care competencies, "
        "including airway management; consider transfer to a level 2 or 3 care facility (HDU or ICU)"
    ),
}


@dataclass(frozen=True)
class NEWS2Score:
    """The seven parameter scores of one set of observations; the aggregate is derived from them."""

    respiration_rate: int
    spo2: int
    air_or_oxygen: int
    systolic_bp: int
    pulse: int
    consciousness: int
    temperature: int
    spo2_scale: SpO2Scale = 1

    def __post_init__(self) -> None:
        for name, value in self.parameter_scores().items():
            allowed = (0, 2) if name == "air_or_oxygen" else (0, 1, 2, 3)
            if type(value) is not int or value not in allowed:
                raise ValueError(f"NEWS2 {name} score must be one of {allowed}, got {value!r}")
        if self.spo2_scale not in (1, 2) or isinstance(self.spo2_scale, bool):
            raise ValueError(f"spo2_scale must be 1 or 2, got {self.spo2_scale!r}")

    def parameter_scores(self) -> dict[str, int]:
        """The parameter scores by name, in the chart's order."""
        return {
            "respiration_rate": self.respiration_rate,
            "spo2": self.spo2,
            "air_or_oxygen": self.air_or_oxygen,
            "systolic_bp": self.systolic_bp,
            "pulse": self.pulse,
            "consciousness": self.consciousness,
            "temperature": self.temperature,
        }

    @property
    def total(self) -> int:
        """The aggregate NEWS2 score, 0 to 20."""
        return sum(self.parameter_scores().values())

    @property
    def any_single_parameter_3(self) -> bool:
        """A "red score": some parameter scores 3 on its own."""
        return 3 in self.parameter_scores().values()

    @property
    def risk(self) -> ClinicalRisk:
        """Chart 2's band: 7+ high, 5-6 medium, a red score below 5 low-medium, otherwise low."""
        if self.total >= 7:
            return ClinicalRisk.HIGH
        if self.total >= 5:
            return ClinicalRisk.MEDIUM
        if self.any_single_parameter_3:
            return ClinicalRisk.LOW_MEDIUM
        return ClinicalRisk.LOW

    @property
    def response(self) -> str:
        """Chart 2's response for the band, e.g. "Urgent ward-based response"."""
        return RESPONSE[self.risk]

    @property
    def clinical_response(self) -> str:
        """Chart 3's clinical response (abridged)."""
        if self.total == 0:
            return _CLINICAL_RESPONSE_ZERO
        return _CLINICAL_RESPONSE[self.risk]

    @property
    def monitoring_frequency(self) -> MonitoringFrequency:
        """Chart 3's minimum monitoring frequency."""
        risk = self.risk
        if risk is ClinicalRisk.HIGH:
            return MonitoringFrequency.CONTINUOUS
        if risk in (ClinicalRisk.MEDIUM, ClinicalRisk.LOW_MEDIUM):
            return MonitoringFrequency.MIN_1_HOURLY
        if self.total == 0:
            return MonitoringFrequency.MIN_12_HOURLY
        return MonitoringFrequency.MIN_4_TO_6_HOURLY


def _chart_value(field: str, value: float, places: int = 0) -> Decimal:
    """``value`` rounded half up to the chart's resolution (``places`` decimals)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ImplausibleVitalSign(field, value, "must be a number")
    if not math.isfinite(value):
        raise ImplausibleVitalSign(field, value, "must be a finite number")
    try:  # str() gives the shortest repr, also of NumPy float32 scalars
        exact = Decimal(str(value))
    except InvalidOperation:  # a Real whose str() is not a decimal, e.g. Fraction "73/2"
        exact = Decimal(str(float(value)))
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def respiration_rate_score(rate: float) -> int:
    """≤8 → 3; 9–11 → 1; 12–20 → 0; 21–24 → 2; ≥25 → 3."""
    r = _chart_value("respiration_rate", rate)
    if r <= 8:
        return 3
    if r <= 11:
        return 1
    if r <= 20:
        return 0
    if r <= 24:
        return 2
    return 3


def spo2_scale1_score(spo2: float) -> int:
    """≤91 → 3; 92–93 → 2; 94–95 → 1; ≥96 → 0."""
    s = _chart_value("spo2", spo2)
    if s <= 91:
        return 3
    if s <= 93:
        return 2
    if s <= 95:
        return 1
    return 0


def spo2_scale2_score(spo2: float, on_supplemental_oxygen: bool) -> int:
    """≤83 → 3; 84–85 → 2; 86–87 → 1; 88–92 (and ≥93 on air) → 0; on oxygen 93–94 → 1, 95–96 → 2, ≥97 → 3."""
    s = _chart_value("spo2", spo2)
    if s <= 83:
        return 3
    if s <= 85:
        return 2
    if s <= 87:
        return 1
    if s <= 92 or not on_supplemental_oxygen:
        return 0
    if s <= 94:
        return 1
    if s <= 96:
        return 2
    return 3


def air_or_oxygen_score(on_supplemental_oxygen: bool) -> int:
    """Oxygen → 2; air → 0."""
    if not isinstance(on_supplemental_oxygen, bool):
        raise ImplausibleVitalSign("on_supplemental_oxygen", on_supplemental_oxygen, "must be true or false")
    return 2 if on_supplemental_oxygen else 0


def systolic_bp_score(systolic_bp: float) -> int:
    """≤90 → 3; 91–100 → 2; 101–110 → 1; 111–219 → 0; ≥220 → 3."""
    p = _chart_value("systolic_bp", systolic_bp)
    if p <= 90:
        return 3
    if p <= 100:
        return 2
    if p <= 110:
        return 1
    if p <= 219:
        return 0
    return 3


def pulse_score(pulse: float) -> int:
    """≤40 → 3; 41–50 → 1; 51–90 → 0; 91–110 → 1; 111–130 → 2; ≥131 → 3."""
    p = _chart_value("pulse", pulse)
    if p <= 40:
        return 3
    if p <= 50:
        return 1
    if p <= 90:
        return 0
    if p <= 110:
        return 1
    if p <= 130:
        return 2
    return 3


def consciousness_score(consciousness: ACVPU) -> int:
    """Alert → 0; new confusion, voice, pain or unresponsive → 3."""
    if not isinstance(consciousness, ACVPU):
        raise ImplausibleVitalSign("consciousness", consciousness, "must be one of A, C, V, P, U")
    return 0 if consciousness is ACVPU.ALERT else 3


def temperature_score(temperature: float) -> int:
    """≤35.0 → 3; 35.1–36.0 → 1; 36.1–38.0 → 0; 38.1–39.0 → 1; ≥39.1 → 2 (°C, to one decimal)."""
    t = _chart_value("temperature", temperature, places=1)
    if t <= Decimal("35.0"):
        return 3
    if t <= Decimal("36.0"):
        return 1
    if t <= Decimal("38.0"):
        return 0
    if t <= Decimal("39.0"):
        return 1
    return 2


def score_news2(vitals: VitalSigns, spo2_scale: SpO2Scale = 1) -> NEWS2Score:
    """Score one set of observations. Use ``spo2_scale=2`` only for patients with hypercapnic
    respiratory failure whose prescribed target saturation is 88–92 %, as the chart directs."""
    if spo2_scale not in (1, 2) or isinstance(spo2_scale, bool):
        raise ValueError(f"spo2_scale must be 1 or 2, got {spo2_scale!r}")
    oxygen = air_or_oxygen_score(vitals.on_supplemental_oxygen)
    if spo2_scale == 1:
        spo2 = spo2_scale1_score(vitals.spo2)
    else:
        spo2 = spo2_scale2_score(vitals.spo2, vitals.on_supplemental_oxygen)
    return NEWS2Score(
        respiration_rate=respiration_rate_score(vitals.respiration_rate),
        spo2=spo2,
        air_or_oxygen=oxygen,
        systolic_bp=systolic_bp_score(vitals.systolic_bp),
        pulse=pulse_score(vitals.pulse),
        consciousness=consciousness_score(vitals.consciousness),
        temperature=temperature_score(vitals.temperature),
        spo2_scale=spo2_scale,
    )
