"""The FHIR R4 report of an imaging result: validated with fhir.resources (R4B), references resolved."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult, Lesion, Segment
from medserve.clinical.fhir_report import (
    FINDING_LABELS,
    MODEL_DIGEST_SYSTEM,
    PATIENT_ID_SYSTEM,
    diagnostic_report,
    finding_snomed,
    model_digest,
    tracking_uid,
)

DIGEST = "ab" * 32
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SR_UID = "1.2.826.0.1.3680043.8.498.3"
SEG_UID = "1.2.826.0.1.3680043.8.498.4"
ISSUED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
LIVER = Segment(label=1, name="Liver lesion")
CYST = Segment(label=3, name="Cyst")


def _algorithm(research_use: bool = True) -> Algorithm:
    return Algorithm(name="model-x", version="7", digest=DIGEST, research_use=research_use)


def classification(research_use: bool = True) -> ImagingResult:
    return ImagingResult(
        pipeline="chest_xray",
        algorithm=_algorithm(research_use),
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        findings=(
            Finding("Pneumothorax", probability=0.91, threshold=0.5),
            Finding("Atelectasis", probability=0.12, threshold=0.4),
        ),
    )


def _lesion(number: int, volume_ml: float) -> Lesion:
    return Lesion(
        number=number,
        segment=LIVER.label,
        voxels=100 * number,
        volume_ml=volume_ml,
        centroid_voxel=(1.0, 2.0, 3.0),
        centroid_patient=(10.0, -20.0, 30.5),
        max_diameter_mm=12.0 if number == 1 else 0.0,
    )


def segmentation(lesions: tuple[Lesion, ...] | None = None, research_use: bool = True) -> ImagingResult:
    return ImagingResult(
        pipeline="ct_lesions",
        algorithm=_algorithm(research_use),
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        segments=(LIVER, CYST),
        lesions=(_lesion(1, 2.5), _lesion(2, 0.75)) if lesions is None else lesions,
    )


def _report(result: ImagingResult, **kwargs: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"sr_uid": SR_UID, "seg_uid": SEG_UID, "issued": ISSUED, **kwargs}
    bundle = diagnostic_report(result, **arguments)
    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:  # each resource once more on its own, as its own R4 type
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return bundle


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _references(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


@pytest.mark.parametrize("result", [classification(), segmentation()], ids=["classification", "segmentation"])
def test_transaction_bundle_validates_and_its_references_resolve(result: ImagingResult) -> None:
    bundle = _report(result)
    assert bundle["type"] == "transaction"
    urls = _by_url(bundle)
    assert len(urls) == len(bundle["entry"])
    for entry in bundle["entry"]:
        assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", entry["fullUrl"])
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["url"] == entry["resource"]["resourceType"]
    references = list(_references(bundle))
    assert references
    assert all(reference in urls for reference in references)
    assert len(_resources(bundle, "DiagnosticReport")) == 1
    assert len(_resources(bundle, "Device")) == 1


def test_diagnostic_report() -> None:
    bundle = _report(classification())
    [report] = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "LP29684-5",
        "display": "Radiology",
    }
    assert report["code"]["coding"][0]["code"] == "18748-4"
    assert report["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{SR_UID}"}]
    assert report["imagingStudy"] == [
        {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}}
    ]
    assert report["issued"] == ISSUED.isoformat()
    observations = {url for url, r in _by_url(bundle).items() if r["resourceType"] == "Observation"}
    assert {r["reference"] for r in report["result"]} == observations
    assert report["conclusion"].startswith(
        "RESEARCH USE ONLY: Findings above threshold: Pneumothorax (p=0.91)."
    )
    assert "model-x 7" in report["conclusion"]


def test_finding_observations() -> None:
    bundle = _report(classification())
    pneumothorax, atelectasis = _resources(bundle, "Observation")
    assert pneumothorax["code"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"}],
        "text": "Pneumothorax",
    }
    assert atelectasis["code"] == {  # no SNOMED CT concept: a code naming the label, not a guess
        "coding": [{"system": FINDING_LABELS, "code": "ATELECTASIS", "display": "Atelectasis"}],
        "text": "Atelectasis",
    }
    for observation, finding in zip((pneumothorax, atelectasis), classification().findings):
        assert observation["status"] == "preliminary"
        assert observation["category"][0]["coding"][0]["code"] == "imaging"
        quantity = observation["valueQuantity"]
        assert quantity["value"] == pytest.approx(finding.probability)
        assert (quantity["system"], quantity["code"]) == ("http://unitsofmeasure.org", "1")
        [threshold] = observation["component"]
        assert threshold["valueQuantity"]["value"] == pytest.approx(finding.threshold)
        assert observation["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"
    assert pneumothorax["interpretation"][0]["coding"][0]["code"] == "DET"
    assert atelectasis["interpretation"][0]["coding"][0]["code"] == "ND"


def test_lesion_and_count_observations() -> None:
    result = segmentation()
    bundle = _report(result)
    urls = _by_url(bundle)
    observations = _resources(bundle, "Observation")
    counts = [o for o in observations if "valueInteger" in o]
    volumes = [o for o in observations if "valueQuantity" in o]
    assert [o["code"]["coding"][0]["code"] for o in counts] == ["246206008", "246206008"]
    liver, cyst = counts
    assert (liver["valueInteger"], cyst["valueInteger"]) == (2, 0)
    assert "hasMember" not in cyst
    members = [urls[m["reference"]] for m in liver["hasMember"]]
    assert members == volumes
    for observation, lesion in zip(volumes, result.lesions):
        quantity = observation["valueQuantity"]
        assert quantity["value"] == pytest.approx(lesion.volume_ml)
        assert (quantity["system"], quantity["code"], quantity["unit"]) == (
            "http://unitsofmeasure.org",
            "mL",
            "mL",
        )
        assert observation["code"]["coding"][0]["code"] == "118565006"
        assert f"urn:oid:{SEG_UID}" in observation["note"][0]["text"]
        expected = tracking_uid(result, "segment-1-lesion", lesion.number)
        assert observation["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{expected}"}]
    assert volumes[0]["component"][0]["valueQuantity"] == {
        "value": 12.0,
        "unit": "mm",
        "system": "http://unitsofmeasure.org",
        "code": "mm",
    }
    assert "component" not in volumes[1]  # no diameter measured
    [report] = _resources(bundle, "DiagnosticReport")
    assert "Liver lesion: 2 lesion(s), 3.25 mL in total" in report["conclusion"]


def test_no_lesions_still_reports_a_count_of_zero() -> None:
    bundle = _report(segmentation(lesions=()), seg_uid=None)
    observations = _resources(bundle, "Observation")
    assert [o["valueInteger"] for o in observations] == [0, 0]
    assert "urn:oid" not in observations[0]["note"][0]["text"]


def test_device_names_the_model_and_every_observation_points_to_it() -> None:
    bundle = _report(segmentation())
    [device_entry] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    device = device_entry["resource"]
    assert device["deviceName"] == [{"name": "model-x", "type": "model-name"}]
    assert device["version"] == [{"value": "7"}]
    assert device["identifier"] == [{"system": MODEL_DIGEST_SYSTEM, "value": DIGEST}]
    assert any(f"sha256:{DIGEST}" in note["text"] for note in device["note"])
    assert device_entry["request"]["ifNoneExist"] == f"identifier={MODEL_DIGEST_SYSTEM}|{DIGEST}"
    for observation in _resources(bundle, "Observation"):
        assert observation["device"]["reference"] == device_entry["fullUrl"]


def test_research_use_marks_every_resource() -> None:
    for entry in _report(classification())["entry"]:
        meta = entry["resource"]["meta"]
        assert meta["security"][0]["code"] == "HRESCH"
        assert meta["tag"][0]["code"] == "research-use-only"
    bundle = _report(classification(research_use=False))
    assert all("meta" not in entry["resource"] for entry in bundle["entry"])
    [report] = _resources(bundle, "DiagnosticReport")
    assert "RESEARCH" not in report["conclusion"]


def test_patient_reference_only_when_given() -> None:
    bundle = _report(segmentation(), patient_reference="Patient/example")
    resources = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Device"]
    assert all(r["subject"] == {"reference": "Patient/example"} for r in resources)
    anonymous = _report(segmentation(), sr_uid=None, seg_uid=None)
    assert all("subject" not in e["resource"] for e in anonymous["entry"])
    [report] = _resources(anonymous, "DiagnosticReport")
    assert "identifier" not in report


def test_summary_is_the_conclusion_when_given() -> None:
    result = ImagingResult(
        pipeline="p",
        algorithm=_algorithm(False),
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        summary="X.",
    )
    [report] = _resources(_report(result), "DiagnosticReport")
    assert report["conclusion"].startswith("X. Automated analysis by model-x 7")
    assert report["result"] == []


def test_shared_helpers() -> None:
    assert finding_snomed("Pleural_Effusion") == ("60046008", "Pleural effusion")
    assert finding_snomed("Effusion") == ("60046008", "Pleural effusion")
    assert finding_snomed("Cardiomegaly") is None
    algorithm = Algorithm(name="m", version="1", digest="SHA256:" + "AB" * 32)
    assert model_digest(algorithm) == DIGEST
    result = classification()
    assert tracking_uid(result, "finding", 0) == tracking_uid(result, "finding", 0)
    assert tracking_uid(result, "finding", 0) != tracking_uid(result, "finding", 1)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        diagnostic_report(classification(), sr_uid=None, seg_uid=None, issued=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="sr_uid"):
        diagnostic_report(classification(), sr_uid="1.2.abc", seg_uid=None)
    with pytest.raises(ValueError, match="patient_reference"):
        diagnostic_report(classification(), sr_uid=None, seg_uid=None, patient_reference="Patient/a b")
    orphan = segmentation(lesions=(Lesion(1, 9, 1, 0.1, (0, 0, 0), (0, 0, 0)),))
    with pytest.raises(ValueError, match="segment labels"):
        diagnostic_report(orphan, sr_uid=None, seg_uid=None)
    bad = ImagingResult(
        pipeline="p",
        algorithm=Algorithm(name="m", version="1", digest="deadbeef"),
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
    )
    with pytest.raises(ValueError, match="sha256"):
        diagnostic_report(bad, sr_uid=None, seg_uid=None)


def test_every_finding_has_a_coded_concept() -> None:
    labels = ("Cardiomegaly", "Pleural_Thickening", "Hernia", "Effusion")
    result = ImagingResult(
        "chest_xray", _algorithm(), STUDY, SERIES, findings=tuple(Finding(x, 0.3, 0.5) for x in labels)
    )
    observations = _resources(_report(result), "Observation")
    assert [o["code"]["coding"][0]["code"] for o in observations] == [
        "CARDIOMEGALY",
        "PLEURAL_THICKENING",
        "HERNIA",
        "60046008",
    ]


def test_subject_by_patient_identifier_is_a_logical_reference_on_every_resource() -> None:
    bundle = _report(classification(), patient_identifier=(PATIENT_ID_SYSTEM, "SYNTH000042"))
    subject = {"type": "Patient", "identifier": {"system": PATIENT_ID_SYSTEM, "value": "SYNTH000042"}}
    resources = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Device"]
    assert resources and all(r["subject"] == subject for r in resources)
    [report] = _resources(bundle, "DiagnosticReport")
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"
    with pytest.raises(ValueError, match="not both"):
        diagnostic_report(
            classification(),
            sr_uid=None,
            seg_uid=None,
            patient_reference="Patient/1",
            patient_identifier=(PATIENT_ID_SYSTEM, "x"),
        )
