"""A NEWS2 score as a FHIR R4 Observation (plain JSON-ready dict; no FHIR library needed).

Code systems. The total and each parameter score are coded in SNOMED CT (UK edition, the RCP's
NEWS2 observable entities, as used by NHS England's and UK Core's NEWS2 guidance), e.g.
1104051000000101 "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score".
No LOINC code is added: we could not confirm a LOINC term specific to NEWS2 (third-party code
quotes 88330-6 for the older NEWS, unverified), and a wrong LOINC code is worse than none.

Category ``survey``, not ``vital-signs``: FHIR R4 requires Observations in that category
to conform to the Vital Signs profile (a LOINC code from the vital-signs value set), which a
derived score cannot. NEWS2 is an assessment-scale result, so the category is ``survey``, as in
NHS England's and the UK Core examples.

Interpretation carries the risk band and chart 2's response as text: no standard code system has
NEWS2's four bands, and inventing a code would mislead receivers.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from medserve.clinical.vitals.news2 import ClinicalRisk, NEWS2Score

SNOMED_CT = "http://snomed.info/sct"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

NEWS2_TOTAL_CODE = (
    "1104051000000101",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score",
)

_PREFIX = "Royal College of Physicians NEWS2 (National Early Warning Score 2) - "
# SNOMED CT observable entities for the parameter scores, by NEWS2Score field.
PARAMETER_CODES: dict[str, tuple[str, str]] = {
    "respiration_rate": ("1104301000000104", _PREFIX + "respiration rate score"),
    "spo2_scale_1": ("1104311000000102", _PREFIX + "oxygen saturation scale 1 score"),
    "spo2_scale_2": ("1104321000000108", _PREFIX + "oxygen saturation scale 2 score"),
    "air_or_oxygen": ("1104331000000105", _PREFIX + "air or oxygen score"),
    "systolic_bp": ("1104341000000101", _PREFIX + "systolic blood pressure score"),
    "pulse": ("1104351000000103", _PREFIX + "pulse score"),
    "consciousness": ("1104361000000100", _PREFIX + "consciousness score"),
    "temperature": ("1104371000000107", _PREFIX + "temperature score"),
}

_RISK_TEXT = {
    ClinicalRisk.LOW: "Low clinical risk",
    ClinicalRisk.LOW_MEDIUM: "Low-medium clinical risk (red score in a single parameter)",
    ClinicalRisk.MEDIUM: "Medium clinical risk",
    ClinicalRisk.HIGH: "High clinical risk",
}

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_REFERENCE = re.compile(r"\S+")


def _concept(code: tuple[str, str], system: str = SNOMED_CT) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code[0], "display": code[1]}]}


def _reference(name: str, value: str) -> dict[str, str]:
    if not isinstance(value, str) or not _REFERENCE.fullmatch(value):
        raise ValueError(f"{name} must be a non-empty FHIR reference without spaces, got {value!r}")
    return {"reference": value}


def _components(score: NEWS2Score) -> list[dict[str, Any]]:
    components = []
    for name, value in score.parameter_scores().items():
        key = f"spo2_scale_{score.spo2_scale}" if name == "spo2" else name
        components.append({"code": _concept(PARAMETER_CODES[key]), "valueInteger": value})
    return components


def news2_observation(
    score: NEWS2Score,
    *,
    patient_reference: str,
    effective: datetime,
    device_reference: str | None = None,
    observation_id: str | None = None,
) -> dict[str, Any]:
    """The FHIR R4 Observation for ``score``, measured on the patient at ``effective``.

    ``effective`` must carry a time zone (FHIR dateTimes with a time require one).
    ``patient_reference`` and ``device_reference`` are FHIR references ("Patient/123", "urn:uuid:…").
    """
    if effective.tzinfo is None or effective.utcoffset() is None:
        raise ValueError("effective must be a timezone-aware datetime")
    observation: dict[str, Any] = {"resourceType": "Observation"}
    if observation_id is not None:
        if not isinstance(observation_id, str) or not _FHIR_ID.fullmatch(observation_id):
            raise ValueError(f"observation_id must be 1-64 of [A-Za-z0-9-.], got {observation_id!r}")
        observation["id"] = observation_id
    observation.update(
        {
            "status": "final",
            "category": [_concept(("survey", "Survey"), OBSERVATION_CATEGORY)],
            "code": {**_concept(NEWS2_TOTAL_CODE), "text": "NEWS2 total score"},
            "subject": _reference("patient_reference", patient_reference),
            "effectiveDateTime": effective.isoformat(),
        }
    )
    if device_reference is not None:
        observation["device"] = _reference("device_reference", device_reference)
    observation["valueInteger"] = score.total
    observation["interpretation"] = [{"text": f"{_RISK_TEXT[score.risk]}: {score.response}"}]
    observation["component"] = _components(score)
    return observation
