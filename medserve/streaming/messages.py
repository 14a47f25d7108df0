"""The patient monitor's messages: one sample in, one reply out, and the alerts it raises.

Over gRPC ``ModelStreamInfer`` (and plain ``ModelInfer``) a sample is an Open Inference Protocol
request to the model ``patient_monitor`` with Triton's sequence parameters (``sequence_id``,
``sequence_start``, ``sequence_end``) and these tensors:

=================  ==========  =========================================================================
input              datatype    meaning
=================  ==========  =========================================================================
``SAMPLE_SEQ``     INT64 [1]   per-sample sequence number within the sequence (0, 1, 2, ...)
``TIMESTAMP``      FP64 [1]    when the sample was measured, Unix seconds
``VITALS``         FP32 [7]    optional: respiration rate, SpO2 %, supplemental oxygen (0/1), systolic BP,
                               pulse, consciousness (0 A, 1 C, 2 V, 3 P, 4 U), temperature °C;
                               NaN = not measured in this sample
``ECG``            FP32 [-1]   optional: new single-lead ECG samples (mV, 250 Hz) since the last sample
=================  ==========  =========================================================================

The optional request parameter ``spo2_scale`` (1 or 2) selects the NEWS2 SpO2 scale. The reply has
``VERDICT`` (BYTES [1]: accepted, duplicate or out_of_order), ``NEWS2`` (INT32 [8]: the seven parameter
scores and the total, -1 when not computed), ``RISK`` (BYTES [1]), ``RHYTHM`` (BYTES [1]: the rhythm of
the latest ECG window, empty when none ran), ``RHYTHM_PROBABILITIES`` (FP32 [5], NaN when none ran)
and ``ALERTS`` (BYTES [n]: each alert as JSON). The WebSocket door carries the same fields as JSON
(see ``sample_from_json`` / ``result_to_json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.clinical.vitals.news2 import NEWS2Score
from medserve.clinical.vitals.signs import ACVPU, VitalSigns
from medserve.values.errors import InvalidInput

MONITOR_MODEL = "patient_monitor"

VITAL_FIELDS = (
    "respiration_rate",
    "spo2",
    "on_supplemental_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)
CONSCIOUSNESS_CODES = (ACVPU.ALERT, ACVPU.NEW_CONFUSION, ACVPU.VOICE, ACVPU.PAIN, ACVPU.UNRESPONSIVE)
NEWS2_FIELDS = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)

SequenceId = int | str


@dataclass(slots=True)
class MonitorSample:
    sequence_id: SequenceId
    sample_seq: int
    timestamp: float
    start: bool = False
    end: bool = False
    vitals: dict[str, float] = field(default_factory=dict)
    spo2_scale: int = 1
    ecg: np.ndarray | None = None


@dataclass(slots=True)
class Alert:
    """An alert as stored and pushed: a FHIR Observation plus its life cycle."""

    id: str
    sequence_id: SequenceId
    kind: str  # raised | escalated | cleared | rhythm
    risk: str
    summary: str
    sample_timestamp: float
    created_at: float
    observation: dict[str, Any]
    acknowledged_by: str = ""
    acknowledged_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sequence_id": self.sequence_id,
            "kind": self.kind,
            "risk": self.risk,
            "summary": self.summary,
            "sample_timestamp": self.sample_timestamp,
            "created_at": self.created_at,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at,
            "observation": self.observation,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Alert:
        return cls(
            id=str(doc["id"]),
            sequence_id=doc["sequence_id"],
            kind=str(doc["kind"]),
            risk=str(doc["risk"]),
            summary=str(doc["summary"]),
            sample_timestamp=float(doc["sample_timestamp"]),
            created_at=float(doc["created_at"]),
            observation=dict(doc["observation"]),
            acknowledged_by=str(doc.get("acknowledged_by") or ""),
            acknowledged_at=doc.get("acknowledged_at"),
        )


@dataclass(slots=True)
class MonitorResult:
    sequence_id: SequenceId
    sample_seq: int
    verdict: str
    resumed: bool = False
    news2: NEWS2Score | None = None
    news2_missing: list[str] = field(default_factory=list)
    rhythm: str = ""
    rhythm_probabilities: np.ndarray | None = None
    alerts: list[Alert] = field(default_factory=list)


def _number(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"'{key}' must be a number")
    if kind is int and (not float(value).is_integer()):
        raise InvalidInput(f"'{key}' must be an integer")
    return kind(value)


def vital_signs(vitals: Mapping[str, float]) -> VitalSigns:
    """A ``VitalSigns`` from values by field name in the wire encoding (oxygen 0/1, consciousness
    as an index into ``CONSCIOUSNESS_CODES``); every field of ``VITAL_FIELDS`` must be present."""
    return VitalSigns(
        respiration_rate=vitals["respiration_rate"],
        spo2=vitals["spo2"],
        on_supplemental_oxygen=bool(vitals["on_supplemental_oxygen"]),
        systolic_bp=vitals["systolic_bp"],
        pulse=vitals["pulse"],
        consciousness=CONSCIOUSNESS_CODES[int(vitals["consciousness"])],
        temperature=vitals["temperature"],
    )


def vitals_from_array(values: np.ndarray) -> dict[str, float]:
    """VITALS [7] with NaN for unmeasured fields → the measured fields by name."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size != len(VITAL_FIELDS):
        raise InvalidInput(f"VITALS must hold {len(VITAL_FIELDS)} values ({', '.join(VITAL_FIELDS)})")
    return {name: float(v) for name, v in zip(VITAL_FIELDS, flat) if not math.isnan(v)}


def sample_from_json(doc: Any) -> MonitorSample:
    """A WebSocket message: ``{"sequence_id", "sample_seq", "timestamp", "sequence_start"?,
    "sequence_end"?, "vitals"?: {field: value}, "spo2_scale"?, "ecg"?: [mV, ...]}``."""
    if not isinstance(doc, dict):
        raise InvalidInput("a monitor message must be a JSON object")
    vitals = doc.get("vitals") or {}
    if not isinstance(vitals, dict):
        raise InvalidInput("'vitals' must be an object of field: value")
    unknown = sorted(set(vitals) - set(VITAL_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown vital sign(s) {unknown}; known: {', '.join(VITAL_FIELDS)}")
    values: dict[str, float] = {}
    for key, value in vitals.items():
        if key == "consciousness" and isinstance(value, str):
            codes = [c.value for c in CONSCIOUSNESS_CODES]
            if value not in codes:
                raise InvalidInput(f"'consciousness' must be one of {codes}, got {value!r}")
            values[key] = float(codes.index(value))
        elif key == "on_supplemental_oxygen" and isinstance(value, bool):
            values[key] = float(value)
        elif value is not None:
            values[key] = _number(vitals, key, float)
    ecg = doc.get("ecg")
    ecg_array = None
    if ecg is not None:
        try:
            ecg_array = np.asarray(ecg, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidInput("'ecg' must be a list of numbers (mV)") from None
    sequence_id = doc.get("sequence_id")
    return MonitorSample(
        sequence_id=sequence_id if isinstance(sequence_id, (int, str)) else "",
        sample_seq=_number(doc, "sample_seq", int),
        timestamp=_number(doc, "timestamp", float),
        start=bool(doc.get("sequence_start", False)),
        end=bool(doc.get("sequence_end", False)),
        vitals=values,
        spo2_scale=int(doc.get("spo2_scale", 1)),
        ecg=ecg_array,
    )


def news2_json(score: NEWS2Score) -> dict[str, Any]:
    return {
        **score.parameter_scores(),
        "total": score.total,
        "risk": score.risk.value,
        "red_score": score.any_single_parameter_3,
    }


def result_to_json(result: MonitorResult) -> dict[str, Any]:
    probabilities = result.rhythm_probabilities
    return {
        "sequence_id": result.sequence_id,
        "sample_seq": result.sample_seq,
        "verdict": result.verdict,
        "resumed": result.resumed,
        "news2": news2_json(result.news2) if result.news2 is not None else None,
        "news2_missing": result.news2_missing,
        "rhythm": result.rhythm or None,
        "rhythm_probabilities": probabilities.tolist() if probabilities is not None else None,
        "alerts": [a.to_json() for a in result.alerts],
    }
