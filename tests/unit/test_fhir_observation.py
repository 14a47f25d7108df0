"""The NEWS2 FHIR R4 Observation: structure, codes, types, references and time zones."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from medserve.clinical.fhir_observation import NEWS2_TOTAL_CODE, PARAMETER_CODES, SNOMED_CT, news2_observation
from medserve.clinical.vitals.news2 import NEWS2Score, score_news2
from medserve.clinical.vitals.signs import ACVPU, VitalSigns

WHEN = datetime(2024, 3, 1, 14, 17, 59, tzinfo=timezone(timedelta(hours=1)))
# FHIR R4 dateTime with a time part: seconds and a time zone are required.
FHIR_DATETIME = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))"
)
SEPSIS = VitalSigns(22, 95, False, 105, 105, ACVPU.ALERT, 38.4)


def _check_coding(concept: dict[str, Any]) -> None:
    assert isinstance(concept["coding"], list) and concept["coding"]
    for coding in concept["coding"]:
        assert set(coding) <= {"system", "code", "display"}
        assert all(isinstance(v, str) and v for v in coding.values())


def _check_r4_structure(obs: dict[str, Any]) -> None:
    """Observation's required elements and the types of everything we emit (R4, 4.0.1)."""
    assert obs["resourceType"] == "Observation"
    assert obs["status"] in {"registered", "preliminary", "final", "amended"}
    _check_coding(obs["code"])
    for concept in obs["category"]:
        _check_coding(concept)
    assert isinstance(obs["subject"]["reference"], str)
    assert FHIR_DATETIME.fullmatch(obs["effectiveDateTime"])
    assert isinstance(obs["valueInteger"], int) and not isinstance(obs["valueInteger"], bool)
    assert isinstance(obs["interpretation"], list)
    for interpretation in obs["interpretation"]:
        assert isinstance(interpretation["text"], str) and interpretation["text"]
    for component in obs["component"]:
        assert set(component) == {"code", "valueInteger"}
        _check_coding(component["code"])
        assert isinstance(component["valueInteger"], int)
    allowed = {
        "resourceType", "id", "status", "category", "code", "subject", "effectiveDateTime", "device",
        "valueInteger", "interpretation", "component",
    }  # fmt: skip
    assert set(obs) <= allowed
    # Round-trips through JSON unchanged: only JSON types inside.
    assert json.loads(json.dumps(obs)) == obs


def test_observation_for_a_medium_risk_score() -> None:
    score = score_news2(SEPSIS)
    obs = news2_observation(score, patient_reference="Patient/123", effective=WHEN)
    _check_r4_structure(obs)
    assert obs["status"] == "final"
    assert obs["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "survey",
        "display": "Survey",
    }
    assert obs["code"]["coding"] == [
        {
            "system": "http://snomed.info/sct",
            "code": "1104051000000101",
            "display": "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score",
        }
    ]
    assert obs["subject"] == {"reference": "Patient/123"}
    assert obs["effectiveDateTime"] == "2024-03-01T14:17:59+01:00"
    assert obs["valueInteger"] == 6
    assert "Medium clinical risk" in obs["interpretation"][0]["text"]
    assert "Key threshold for urgent response" in obs["interpretation"][0]["text"]
    assert "id" not in obs and "device" not in obs


def test_components_carry_every_parameter_score_with_its_snomed_code() -> None:
    score = score_news2(SEPSIS)
    obs = news2_observation(score, patient_reference="Patient/1", effective=WHEN)
    by_code = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in obs["component"]}
    assert by_code == {
        "1104301000000104": 2,  # respiration rate
        "1104311000000102": 1,  # SpO2 scale 1
        "1104331000000105": 0,  # air or oxygen
        "1104341000000101": 1,  # systolic BP
        "1104351000000103": 1,  # pulse
        "1104361000000100": 0,  # consciousness
        "1104371000000107": 1,  # temperature
    }
    assert sum(by_code.values()) == obs["valueInteger"]
    assert all(c["code"]["coding"][0]["system"] == SNOMED_CT for c in obs["component"])


def test_scale_2_uses_the_scale_2_code() -> None:
    score = score_news2(VitalSigns(18, 97, True, 130, 80, ACVPU.ALERT, 36.8), spo2_scale=2)
    obs = news2_observation(score, patient_reference="Patient/1", effective=WHEN)
    codes = [c["code"]["coding"][0]["code"] for c in obs["component"]]
    assert PARAMETER_CODES["spo2_scale_2"][0] in codes
    assert PARAMETER_CODES["spo2_scale_1"][0] not in codes
    assert "Medium" in obs["interpretation"][0]["text"]


@pytest.mark.parametrize(
    ("score", "text"),
    [
        (NEWS2Score(0, 0, 0, 0, 0, 0, 0), "Low clinical risk: Ward-based response"),
        (NEWS2Score(0, 0, 0, 0, 0, 3, 0), "Low-medium clinical risk"),
        (NEWS2Score(3, 3, 2, 0, 0, 0, 0), "High clinical risk: Urgent or emergency response"),
    ],
)
def test_interpretation_reflects_the_band(score: NEWS2Score, text: str) -> None:
    obs = news2_observation(score, patient_reference="Patient/1", effective=WHEN)
    assert obs["interpretation"][0]["text"].startswith(text)


def test_optional_id_and_device() -> None:
    obs = news2_observation(
        score_news2(SEPSIS),
        patient_reference="urn:uuid:dd9724d1-7b61-44e2-9023-b72e6b966018",
        effective=datetime(2024, 3, 1, 13, 0, 0, 250000, tzinfo=UTC),
        device_reference="Device/monitor-7",
        observation_id="news2-0001.a",
    )
    _check_r4_structure(obs)
    assert obs["id"] == "news2-0001.a"
    assert obs["device"] == {"reference": "Device/monitor-7"}
    assert obs["effectiveDateTime"] == "2024-03-01T13:00:00.250000+00:00"
    assert list(obs)[:2] == ["resourceType", "id"]


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        news2_observation(
            score_news2(SEPSIS), patient_reference="Patient/1", effective=datetime(2024, 3, 1, 12)
        )


@pytest.mark.parametrize("observation_id", ["", "has space", "x" * 65, "slash/no"])
def test_invalid_observation_id(observation_id: str) -> None:
    with pytest.raises(ValueError, match="observation_id"):
        news2_observation(
            score_news2(SEPSIS), patient_reference="Patient/1", effective=WHEN, observation_id=observation_id
        )


@pytest.mark.parametrize("reference", ["", " ", "Patient/ 1"])
def test_invalid_references(reference: str) -> None:
    with pytest.raises(ValueError, match="patient_reference"):
        news2_observation(score_news2(SEPSIS), patient_reference=reference, effective=WHEN)
    with pytest.raises(ValueError, match="device_reference"):
        news2_observation(
            score_news2(SEPSIS), patient_reference="Patient/1", effective=WHEN, device_reference=reference
        )


def test_total_code_constant() -> None:
    assert NEWS2_TOTAL_CODE[0] == "1104051000000101"
