"""One set of vital-sign observations, as NEWS2 charts them, and the ACVPU consciousness scale."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ACVPU(Enum):
    """Level of consciousness on the ACVPU scale (new Confusion added to AVPU by NEWS2)."""

    ALERT = "A"
    NEW_CONFUSION = "C"
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"


@dataclass(frozen=True)
class VitalSigns:
    """One set of observations, in the chart's units."""

    respiration_rate: float  # breaths per minute
    spo2: float  # oxygen saturation, %
    on_supplemental_oxygen: bool
    systolic_bp: float  # mmHg
    pulse: float  # beats per minute
    consciousness: ACVPU
    temperature: float  # degrees Celsius
