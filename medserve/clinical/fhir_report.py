"""An imaging result as a FHIR R4 transaction Bundle: a DiagnosticReport, its Observations and the model.

Plain JSON-ready dicts; no FHIR library is needed to build them (the tests validate them with
fhir.resources). Choices:

- **Bundle type ``transaction``**, every entry with a ``urn:uuid`` fullUrl and a POST request: one
  POST of the bundle to a FHIR server's base URL creates all resources atomically and rewrites the
  ``urn:uuid`` references between them to the new server ids. A ``collection`` would have to be taken
  apart and posted resource by resource, in dependency order, by the receiver.
- **The model is a Device entry**, created conditionally (``ifNoneExist`` on its sha256 identifier) so
  reports from the same artifact share one Device. Every Observation names it in ``Observation.device``
  (R4 DiagnosticReport has no device element). The Device carries the model name
  (``deviceName``, type ``model-name``), its version (``version``) and the artifact digest (an
  identifier in ``MODEL_DIGEST_SYSTEM`` and a note ``sha256:<hex>``).
- **Status ``preliminary``**: AI output that no clinician has confirmed.
- **The study** is a logical reference (``identifier`` ``urn:dicom:uid`` / ``urn:oid:<uid>``,
  type ImagingStudy) in ``DiagnosticReport.imagingStudy`` and each ``Observation.derivedFrom``: an
  ImagingStudy resource needs a subject, which we may not have, and the PACS usually publishes one.
- **DICOM objects**: the DiagnosticReport's identifier is the SR's SOP Instance UID (the report renders
  that SR); each Observation's identifier is the Tracking UID of its SR measurement group
  (``tracking_uid``), and lesion Observations name the SEG instance and segment in a note. R4 has
  no element referencing a single DICOM instance or segment (R5's ImagingSelection does).
- **Explanation maps**: each DICOM Parametric Map explaining a finding is a Media entry (identifier
  its SOP Instance UID, content ``application/dicom``, a note naming the finding's Observation) listed
  in ``DiagnosticReport.media``; the map itself travels to PACS with the SEG and SR.
- **Research use**: when ``algorithm.research_use``, every resource carries the security label
  v3-ActReason ``HRESCH`` (healthcare research) and the tag ``research-use-only``, and the
  conclusion starts with ``RESEARCH USE ONLY``.
- **Codes**: every finding has a code. SNOMED CT where DICOM PS3.16 lists the concept (checked
  against pydicom's copy of it), as a guessed SNOMED code is worse than none; otherwise a code in
  medserve's own finding-label system (``FINDING_LABELS``, the label normalised as in the SR's
  ``99MEDSERVE`` scheme), which names the label without claiming a clinical concept. Probabilities
  are UCUM ``1``; volumes UCUM ``mL``.
- **Subject**: a Patient, either as a literal reference (``patient_reference``) or, as the imaging
  workflow does, logically by identifier (``patient_identifier``: the study's PatientID in the
  deployment's system, or a pseudonym in ``PSEUDONYM_SYSTEM``); the report's subject then resolves
  on the receiving FHIR server without medserve knowing its Patient ids.

``finding_snomed``, ``model_digest`` and ``tracking_uid`` are shared with the DICOM SR writer so the
two renderings name the same things the same way.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid

from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult, Lesion, Segment

SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
MEDSERVE_FHIR = "https://medserve.example/fhir"
"""Namespace of medserve's own identifier systems and tags; a deployment may use its own."""
MODEL_DIGEST_SYSTEM = f"{MEDSERVE_FHIR}/model-sha256"
FINDING_LABELS = f"{MEDSERVE_FHIR}/CodeSystem/finding-labels"
PATIENT_ID_SYSTEM = f"{MEDSERVE_FHIR}/dicom-patient-id"
"""Default system of a PatientID taken from the DICOM study (a deployment names its own)."""
PSEUDONYM_SYSTEM = f"{MEDSERVE_FHIR}/patient-pseudonym"
TAG_SYSTEM = f"{MEDSERVE_FHIR}/CodeSystem/tags"

RESEARCH_USE_ONLY = "RESEARCH USE ONLY"

# SNOMED CT concepts for classification labels, by normalised label. Only concepts DICOM PS3.16
# lists (pydicom.sr.codedict); e.g. cardiomegaly is left out because sources disagree on its code.
SNOMED_FINDINGS: dict[str, tuple[str, str]] = {
    "pneumothorax": ("36118008", "Pneumothorax"),
    "effusion": ("60046008", "Pleural effusion"),
    "pleural effusion": ("60046008", "Pleural effusion"),
    "edema": ("19242006", "Pulmonary edema"),
    "pulmonary edema": ("19242006", "Pulmonary edema"),
    "mass": ("4147007", "Mass"),
    "nodule": ("27925004", "Nodule"),
}
VOLUME = ("118565006", "Volume")
DIAMETER = ("81827009", "Diameter")
NUMBER_OF_LESIONS = ("246206008", "Number of lesions")
REPORT_CODE = ("18748-4", "Diagnostic imaging study")
RADIOLOGY = ("LP29684-5", "Radiology")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DICOM_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_REFERENCE = re.compile(r"\S+")


def finding_snomed(label: str) -> tuple[str, str] | None:
    """The SNOMED CT (code, display) for a classification label, or None when none is known."""
    return SNOMED_FINDINGS.get(" ".join(label.replace("_", " ").lower().split()))


def finding_label_code(label: str) -> tuple[str, str]:
    """(code, display) of a label in ``FINDING_LABELS``: the SR's ``99MEDSERVE`` code value."""
    value = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").upper() or "FINDING"
    return value, " ".join(label.replace("_", " ").split())


def model_digest(algorithm: Algorithm) -> str:
    """The algorithm's artifact sha256 as 64 lower-case hex digits (a ``sha256:`` prefix is dropped)."""
    digest = algorithm.digest.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"algorithm digest must be a sha256 in hex, got {algorithm.digest!r}")
    return digest


def tracking_uid(result: ImagingResult, kind: str, number: int) -> str:
    """A DICOM UID for one finding, lesion or segment of ``result``, the same on every call.

    Derived from the source series, the model digest, ``kind`` and ``number``: the SR uses it as the
    measurement group's Tracking UID and FHIR as the Observation's identifier, linking the two.
    Kinds: ``finding`` (number = index in ``result.findings``), ``segment`` (number = label value)
    and ``segment-<label>-lesion`` (number = ``Lesion.number``).
    """
    sources = [result.series_instance_uid, model_digest(result.algorithm), kind, str(number)]
    return str(generate_uid(entropy_srcs=sources))


def _check_uid(name: str, value: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _DICOM_UID.fullmatch(value):
        raise ValueError(f"{name} must be a DICOM UID, got {value!r}")
    return value


def _uid_identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def _coding(code: tuple[str, str], system: str = SNOMED_CT) -> dict[str, str]:
    return {"system": system, "code": code[0], "display": code[1]}


def _meta(algorithm: Algorithm) -> dict[str, Any]:
    if not algorithm.research_use:
        return {}
    return {
        "meta": {
            "security": [{"system": ACT_REASON, "code": "HRESCH", "display": "healthcare research"}],
            "tag": [
                {
                    "system": TAG_SYSTEM,
                    "code": "research-use-only",
                    "display": "Research use only: not for diagnostic use",
                }
            ],
        }
    }


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": unit, "system": UCUM, "code": code}


def _device(algorithm: Algorithm) -> dict[str, Any]:
    digest = model_digest(algorithm)
    notes = [f"Model artifact sha256:{digest}"]
    if algorithm.description:
        notes.append(algorithm.description)
    if algorithm.research_use:
        notes.append(f"{RESEARCH_USE_ONLY}: not for diagnostic use.")
    return {
        "resourceType": "Device",
        **_meta(algorithm),
        "identifier": [{"system": MODEL_DIGEST_SYSTEM, "value": digest}],
        "status": "active",
        "deviceName": [{"name": algorithm.name, "type": "model-name"}],
        "type": {"text": "AI image analysis model"},
        "version": [{"value": algorithm.version}],
        "note": [{"text": text} for text in notes],
    }


class _Builder:
    """Collects the bundle's entries; fields shared by every Observation live here."""

    def __init__(self, result: ImagingResult, issued: datetime, subject: dict[str, Any] | None) -> None:
        self.result = result
        self.issued = issued.isoformat()
        self.subject = {"subject": subject} if subject else {}
        self.study = {
            "type": "ImagingStudy",
            "identifier": _uid_identifier(result.study_instance_uid),
        }
        self.entries: list[dict[str, Any]] = []
        self.device_url = self.add(
            _device(result.algorithm),
            if_none_exist=f"identifier={MODEL_DIGEST_SYSTEM}|{model_digest(result.algorithm)}",
        )

    def add(self, resource: dict[str, Any], if_none_exist: str | None = None) -> str:
        url = f"urn:uuid:{uuid.uuid4()}"
        request: dict[str, str] = {"method": "POST", "url": resource["resourceType"]}
        if if_none_exist is not None:
            request["ifNoneExist"] = if_none_exist
        self.entries.append({"fullUrl": url, "resource": resource, "request": request})
        return url

    def observation(self, kind: str, number: int, code: dict[str, Any], **fields: Any) -> str:
        algorithm = self.result.algorithm
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            **_meta(algorithm),
            "identifier": [_uid_identifier(tracking_uid(self.result, kind, number))],
            "status": "preliminary",
            "category": [{"coding": [_coding(("imaging", "Imaging"), OBSERVATION_CATEGORY)]}],
            "code": code,
            **self.subject,
            "issued": self.issued,
            **fields,
            "device": {"reference": self.device_url, "display": f"{algorithm.name} {algorithm.version}"},
            "derivedFrom": [self.study],
        }
        return self.add(resource)


def _finding(builder: _Builder, index: int, finding: Finding) -> str:
    snomed = finding_snomed(finding.label)
    coding = (
        _coding(snomed) if snomed is not None else _coding(finding_label_code(finding.label), FINDING_LABELS)
    )
    code: dict[str, Any] = {"coding": [coding], "text": finding.label}
    verdict = ("DET", "Detected") if finding.present else ("ND", "Not detected")
    comparison = ">=" if finding.present else "<"
    return builder.observation(
        "finding",
        index,
        code,
        valueQuantity=_quantity(finding.probability, "probability", "1"),
        interpretation=[
            {
                "coding": [_coding(verdict, INTERPRETATION)],
                "text": f"{verdict[1]}: probability {finding.probability:.3f} {comparison} "
                f"threshold {finding.threshold:.3f}",
            }
        ],
        component=[
            {
                "code": {"text": "Decision threshold"},
                "valueQuantity": _quantity(finding.threshold, "probability", "1"),
            }
        ],
    )


def _seg_note(segment: Segment, number: int, seg_uid: str | None) -> str:
    if seg_uid is None:
        return f"Segment {segment.name!r}."
    return f"Segment {number} ({segment.name!r}) of DICOM SEG urn:oid:{seg_uid}."


def _lesion(builder: _Builder, lesion: Lesion, segment: Segment, note: str) -> str:
    x, y, z = lesion.centroid_patient
    fields: dict[str, Any] = {"valueQuantity": _quantity(lesion.volume_ml, "mL", "mL")}
    if lesion.max_diameter_mm > 0:
        fields["component"] = [
            {
                "code": {"coding": [_coding(DIAMETER)], "text": "Maximum diameter"},
                "valueQuantity": _quantity(lesion.max_diameter_mm, "mm", "mm"),
            }
        ]
    fields["note"] = [
        {"text": f"Lesion {lesion.number}, centroid ({x:.1f}, {y:.1f}, {z:.1f}) mm (patient LPS). {note}"}
    ]
    code = {"coding": [_coding(VOLUME)], "text": f"Lesion {lesion.number} volume ({segment.name})"}
    return builder.observation(f"segment-{segment.label}-lesion", lesion.number, code, **fields)


def _segments(builder: _Builder, seg_uid: str | None) -> list[str]:
    result = builder.result
    labels = {segment.label for segment in result.segments}
    orphans = sorted({lesion.segment for lesion in result.lesions} - labels)
    if orphans:
        raise ValueError(f"lesions refer to segment labels {orphans} that result.segments does not describe")
    urls: list[str] = []
    for number, segment in enumerate(result.segments, start=1):
        note = _seg_note(segment, number, seg_uid)
        lesions = [lesion for lesion in result.lesions if lesion.segment == segment.label]
        members = [_lesion(builder, lesion, segment, note) for lesion in lesions]
        code = {"coding": [_coding(NUMBER_OF_LESIONS)], "text": f"Number of lesions: {segment.name}"}
        fields: dict[str, Any] = {"valueInteger": len(lesions), "note": [{"text": note}]}
        if members:
            fields["hasMember"] = [{"reference": url} for url in members]
        urls.append(builder.observation("segment", segment.label, code, **fields))
        urls.extend(members)
    return urls


def _explanation_media(builder: _Builder, index: int, uid: str, method: str) -> dict[str, Any]:
    """A Media entry for the Parametric Map explaining finding ``index``; the report's ``media`` item."""
    result = builder.result
    if not 0 <= index < len(result.findings):
        raise ValueError(f"an explanation map refers to finding {index}, which the result lacks")
    label = result.findings[index].label
    tracking = tracking_uid(result, "finding", index)
    resource: dict[str, Any] = {
        "resourceType": "Media",
        **_meta(result.algorithm),
        "identifier": [_uid_identifier(_check_uid("explanation map uid", uid))],
        "status": "completed",
        "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
        **builder.subject,
        "issued": builder.issued,
        "device": {"reference": builder.device_url},
        "content": {"contentType": "application/dicom", "title": f"{method} map of {label}"},
        "note": [
            {
                "text": f"DICOM Parametric Map urn:oid:{uid}: {method} attribution map of the finding "
                f"{label!r} (Observation urn:oid:{tracking}). It shows where changing the image changed "
                "the model's output, not why, nor that the region is abnormal."
            }
        ],
    }
    url = builder.add(resource)
    return {"comment": f"{method} explanation map of {label}", "link": {"reference": url}}


def _conclusion(result: ImagingResult) -> str:
    """``result.summary`` or, without one, the findings above threshold and the lesions per segment."""
    parts = [result.summary] if result.summary else []
    if not parts and result.findings:
        present = [f"{f.label} (p={f.probability:.2f})" for f in result.findings if f.present]
        parts.append("Findings above threshold: " + (", ".join(present) if present else "none") + ".")
    if not result.summary and result.segments:
        counts = []
        for segment in result.segments:
            lesions = [lesion for lesion in result.lesions if lesion.segment == segment.label]
            total = sum(lesion.volume_ml for lesion in lesions)
            counts.append(f"{segment.name}: {len(lesions)} lesion(s), {total:.2f} mL in total")
        parts.append("; ".join(counts) + ".")
    algorithm = result.algorithm
    text = " ".join(parts or ["No findings reported."])
    text += f" Automated analysis by {algorithm.name} {algorithm.version}, not confirmed by a clinician."
    return f"{RESEARCH_USE_ONLY}: {text}" if algorithm.research_use else text


def diagnostic_report(
    result: ImagingResult,
    *,
    sr_uid: str | None,
    seg_uid: str | None,
    patient_reference: str | None = None,
    patient_identifier: tuple[str, str] | None = None,
    issued: datetime | None = None,
    explanation_maps: Mapping[int, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle reporting ``result`` (see the module docstring for the layout).

    ``sr_uid`` and ``seg_uid`` are the SOP Instance UIDs of the SR and SEG written for ``result``
    (None when not written). ``patient_reference`` ("Patient/123", "urn:uuid:…") becomes every
    resource's subject; ``patient_identifier`` (system, value) makes it a logical reference to the
    Patient with that identifier instead. Without either there is no subject. ``issued`` must carry a
    time zone; default now (UTC). ``explanation_maps``: finding index -> (SOP Instance UID, method) of
    the DICOM Parametric Map explaining it, each a Media entry in the report's ``media``.
    """
    _check_uid("study_instance_uid", result.study_instance_uid)
    _check_uid("series_instance_uid", result.series_instance_uid)
    if sr_uid is not None:
        _check_uid("sr_uid", sr_uid)
    if seg_uid is not None:
        _check_uid("seg_uid", seg_uid)
    if patient_reference is not None and (
        not isinstance(patient_reference, str) or not _REFERENCE.fullmatch(patient_reference)
    ):
        raise ValueError(f"patient_reference must be a FHIR reference, got {patient_reference!r}")
    subject: dict[str, Any] | None = {"reference": patient_reference} if patient_reference else None
    if patient_identifier is not None:
        system, value = patient_identifier
        if patient_reference is not None:
            raise ValueError("give patient_reference or patient_identifier, not both")
        if not system or not value:
            raise ValueError(f"patient_identifier needs a system and a value, got {patient_identifier!r}")
        subject = {"type": "Patient", "identifier": {"system": system, "value": value}}
    if issued is None:
        issued = datetime.now(UTC)
    elif issued.tzinfo is None or issued.utcoffset() is None:
        raise ValueError("issued must be a timezone-aware datetime")

    builder = _Builder(result, issued, subject)
    observations = [_finding(builder, index, f) for index, f in enumerate(result.findings)]
    observations += _segments(builder, seg_uid)
    media = [
        _explanation_media(builder, index, uid, method)
        for index, (uid, method) in sorted((explanation_maps or {}).items())
    ]
    report: dict[str, Any] = {"resourceType": "DiagnosticReport", **_meta(result.algorithm)}
    if sr_uid is not None:
        report["identifier"] = [_uid_identifier(sr_uid)]
    report.update(
        {
            "status": "preliminary",
            "category": [{"coding": [_coding(RADIOLOGY, LOINC)]}],
            "code": {"coding": [_coding(REPORT_CODE, LOINC)], "text": f"AI analysis: {result.pipeline}"},
            **builder.subject,
            "issued": builder.issued,
            "imagingStudy": [builder.study],
            "result": [{"reference": url} for url in observations],
            **({"media": media} if media else {}),
            "conclusion": _conclusion(result),
        }
    )
    builder.add(report)
    return {"resourceType": "Bundle", "type": "transaction", "entry": builder.entries}
