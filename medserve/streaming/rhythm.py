"""Rhythm findings from consecutive ECG windows, and their FHIR R4 Observation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

SNOMED_CT = "http://snomed.info/sct"

#: abnormal rhythm classes of the ECG model and their SNOMED CT concepts
FINDINGS: dict[str, tuple[str, str]] = {
    "atrial_fibrillation": ("49436004", "Atrial fibrillation"),
    "tachycardia": ("11092001", "Sinus tachycardia"),
    "bradycardia": ("49710005", "Sinus bradycardia"),
}


class RhythmTracker:
    """Raises a finding once when an abnormal rhythm holds for ``confirm`` consecutive windows, and
    again only after the rhythm has been something else for ``confirm`` windows (hysteresis)."""

    def __init__(self, confirm: int = 3) -> None:
        self.confirm = confirm
        self.current: str | None = None  # the finding alerted and still holding
        self._candidate = ""
        self._count = 0

    def update(self, rhythm: str) -> str | None:
        if rhythm == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = rhythm, 1
        if self._count < self.confirm:
            return None
        if rhythm in FINDINGS and rhythm != self.current:
            self.current = rhythm
            return rhythm
        if rhythm not in FINDINGS:
            self.current = None
        return None


def rhythm_observation(
    finding: str,
    probability: float,
    *,
    patient_reference: str,
    effective: datetime,
    observation_id: str,
    model: str,
) -> dict[str, Any]:
    """A FHIR R4 Observation of an ECG rhythm finding made by a model (a demonstration model)."""
    code, display = FINDINGS[finding]
    return {
        "resourceType": "Observation",
        "id": observation_id,
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "procedure",
                        "display": "Procedure",
                    }
                ]
            }
        ],
        "code": {"text": "ECG rhythm interpretation (single lead, 10 s window)"},
        "subject": {"reference": patient_reference},
        "effectiveDateTime": effective.isoformat(),
        "valueCodeableConcept": {"coding": [{"system": SNOMED_CT, "code": code, "display": display}]},
        "note": [{"text": f"Inferred by {model} with probability {probability:.3f}; research use only."}],
    }
