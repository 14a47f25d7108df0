"""The patient monitor: per-patient streams of vital signs and ECG, NEWS2, rhythm, and alerts.

Each sample goes through its sequence's state (order, duplicates, resume), is checked for
plausibility, scored with NEWS2 when every vital sign is fresh enough, and fed to the alert policy.
Every 2 s of new ECG, the latest 10 s window runs through the core's ``InferenceService`` on the ECG
model, so windows from all patients are batched together by the model's dynamic batcher.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from medserve.clinical.fhir_observation import news2_observation
from medserve.clinical.vitals.alert_policy import AlertEvent, AlertPolicy
from medserve.clinical.vitals.news2 import NEWS2Score, score_news2
from medserve.clinical.vitals.validation import ImplausibleVitalSign, check_value
from medserve.core.metrics import ServingMetrics
from medserve.core.service import InferenceService
from medserve.streaming.messages import (
    CONSCIOUSNESS_CODES,
    VITAL_FIELDS,
    Alert,
    MonitorResult,
    MonitorSample,
    vital_signs,
)
from medserve.streaming.rhythm import RhythmTracker, rhythm_observation
from medserve.streaming.sessions import SampleVerdict, SequenceState, SessionManager
from medserve.streaming.ward_board import WardBoard
from medserve.values.access import Caller
from medserve.values.errors import InvalidInput, MedserveError, ModelNotFound
from medserve.values.types import InferenceRequest, Tensor


class AlertSink(Protocol):
    def publish(self, alert: Alert) -> None: ...


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    max_sessions: int = 1000
    idle_timeout_s: float = 300.0
    vitals_max_age_s: float = 900.0  # NEWS2 is not computed from values older than this
    ecg_model: str = "ecg_rhythm_classifier"
    ecg_window: int = 2500  # 10 s at 250 Hz
    ecg_hop: int = 500  # a window every 2 s of new samples
    rhythm_min_probability: float = 0.8  # less confident windows never count towards a rhythm alert
    raise_at: int = 5
    clear_below: int = 3
    min_clear_samples: int = 3


_REFERENCE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def patient_reference(sequence_id: int | str) -> str:
    """A FHIR reference for the stream's pseudonymous patient id (hashed when not a valid FHIR id)."""
    text = str(sequence_id)
    if not _REFERENCE.match(text):
        text = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"Patient/{text}"


def _check_sample(sample: MonitorSample) -> None:
    """Refuse a sample with an implausible value, naming the field (nothing of it is applied)."""
    if sample.spo2_scale not in (1, 2):
        raise InvalidInput(f"spo2_scale must be 1 or 2, got {sample.spo2_scale}")
    for name, value in sample.vitals.items():
        if name == "consciousness":
            if value not in range(len(CONSCIOUSNESS_CODES)):
                raise ImplausibleVitalSign(name, value, "must be 0 (A), 1 (C), 2 (V), 3 (P) or 4 (U)")
            continue
        if name == "on_supplemental_oxygen":
            if value not in (0.0, 1.0):
                raise ImplausibleVitalSign(name, value, "must be 0 (air) or 1 (oxygen)")
            continue
        problem = check_value(name, value)
        if problem is not None:
            raise problem
    if sample.ecg is not None and not np.isfinite(sample.ecg).all():
        raise InvalidInput("ECG samples must be finite numbers (mV)")


class PatientMonitor:
    def __init__(
        self,
        service: InferenceService,
        alerts: AlertSink,
        settings: MonitorSettings = MonitorSettings(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.service = service
        self.alerts = alerts
        self.settings = settings
        self.sessions = SessionManager(
            settings.max_sessions, settings.idle_timeout_s, 6 * settings.ecg_window
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._policies: dict[int | str, AlertPolicy] = {}
        self._rhythms: dict[int | str, RhythmTracker] = {}
        self._metrics = metrics
        #: each bed's latest NEWS2, its trend and rhythm, for the console's Ward page
        self.board = WardBoard(clock=wall_clock)
        if metrics is not None:
            metrics.monitor_streams.set_function(lambda: float(len(self.sessions)))

    def _policy(self, sequence_id: int | str) -> AlertPolicy:
        policy = self._policies.get(sequence_id)
        if policy is None:
            s = self.settings
            policy = AlertPolicy(
                raise_at=s.raise_at, clear_below=s.clear_below, min_clear_samples=s.min_clear_samples
            )
            self._policies[sequence_id] = policy
        return policy

    def _forget(self, sequence_id: int | str) -> None:
        self.board.close(sequence_id)
        self._policies.pop(sequence_id, None)
        self._rhythms.pop(sequence_id, None)

    def expire(self) -> int:
        """Close idle sequences; returns how many."""
        expired = self.sessions.expire(self._clock())
        for state in expired:
            self._forget(state.sequence_id)
        return len(expired)

    async def handle(self, sample: MonitorSample, caller: Caller | None = None) -> MonitorResult:
        """One sample of one patient's stream; ``caller`` is who sent it (models run on its behalf)."""
        inner = (caller or Caller.system()).for_pipeline("patient_monitor")
        try:
            result = await self._handle(sample, inner)
        except MedserveError:
            if self._metrics is not None:
                self._metrics.monitor_samples.labels("refused").inc()
            raise
        if self._metrics is not None:
            self._metrics.monitor_samples.labels(result.verdict).inc()
            for alert in result.alerts:
                self._metrics.monitor_alerts.labels(alert.kind).inc()
        return result

    async def _handle(self, sample: MonitorSample, caller: Caller) -> MonitorResult:
        now = self._clock()
        _check_sample(sample)
        if sample.start:
            state, resumed = self.sessions.start(sample.sequence_id, now)
        else:
            state, resumed = self.sessions.get(sample.sequence_id, now), False
        verdict = state.accept(sample.sample_seq, now)
        result = MonitorResult(sample.sequence_id, sample.sample_seq, verdict.verdict.value, resumed)
        if verdict.verdict is SampleVerdict.ACCEPTED:
            self._apply(state, sample, result)
            window = state.take_ecg_window(self.settings.ecg_window, self.settings.ecg_hop)
            if window is not None:
                await self._classify(window, sample, result, caller)
        if sample.end:
            self.sessions.end(sample.sequence_id, now)
            self._forget(sample.sequence_id)
        for alert in result.alerts:
            self.alerts.publish(alert)
        return result

    def _apply(self, state: SequenceState, sample: MonitorSample, result: MonitorResult) -> None:
        if sample.vitals:
            state.update_vitals(sample.vitals, sample.timestamp)
        if sample.ecg is not None and sample.ecg.size:
            state.append_ecg(sample.ecg)
        missing = state.vitals_older_than(sample.timestamp, self.settings.vitals_max_age_s, VITAL_FIELDS)
        if missing:
            result.news2_missing = missing
            return
        score = score_news2(vital_signs({k: v for k, (v, _t) in state.vitals.items()}), sample.spo2_scale)  # type: ignore[arg-type]
        result.news2 = score
        self.board.score(sample.sequence_id, score.total, score.risk.value, sample.timestamp)
        event = self._policy(sample.sequence_id).update(score, sample.timestamp)
        if event is not None:
            result.alerts.append(self._news2_alert(sample, score, event))

    def _news2_alert(self, sample: MonitorSample, score: NEWS2Score, event: AlertEvent) -> Alert:
        alert_id = str(uuid.uuid4())
        observation = news2_observation(
            score,
            patient_reference=patient_reference(sample.sequence_id),
            effective=datetime.fromtimestamp(sample.timestamp, UTC),
            observation_id=alert_id,
        )
        kind = event.kind.value
        return Alert(
            id=alert_id,
            sequence_id=sample.sequence_id,
            kind=kind,
            risk=event.risk.value,
            summary=f"NEWS2 {score.total} ({score.risk.value} risk): {kind}",
            sample_timestamp=sample.timestamp,
            created_at=self._wall_clock(),
            observation=observation,
        )

    async def _classify(
        self, window: np.ndarray[Any, Any], sample: MonitorSample, result: MonitorResult, caller: Caller
    ) -> None:
        model = self.settings.ecg_model
        request = InferenceRequest(
            model, inputs=[Tensor("ecg", "FP32", (1, 1, window.size), window.reshape(1, 1, -1))]
        )
        try:
            response = await self.service.infer(request, caller)
        except ModelNotFound:
            return  # no ECG model loaded: vital signs are still monitored
        probabilities = response.outputs[0].data.reshape(-1)
        labels = [str(v) for v in self.service.model_metadata(model, "", caller).parameters.get("labels", [])]
        index = int(np.argmax(probabilities))
        result.rhythm = labels[index] if index < len(labels) else str(index)
        result.rhythm_probabilities = probabilities.astype(np.float32)
        self.board.rhythm(sample.sequence_id, result.rhythm, float(probabilities[index]))
        tracker = self._rhythms.setdefault(sample.sequence_id, RhythmTracker())
        confident = float(probabilities[index]) >= self.settings.rhythm_min_probability
        finding = tracker.update(result.rhythm if confident else "uncertain")
        if finding is not None:
            alert_id = str(uuid.uuid4())
            result.alerts.append(
                Alert(
                    id=alert_id,
                    sequence_id=sample.sequence_id,
                    kind="rhythm",
                    risk="medium" if finding == "atrial_fibrillation" else "low-medium",
                    summary=f"ECG rhythm: {finding.replace('_', ' ')} (p={probabilities[index]:.2f})",
                    sample_timestamp=sample.timestamp,
                    created_at=self._wall_clock(),
                    observation=rhythm_observation(
                        finding,
                        float(probabilities[index]),
                        patient_reference=patient_reference(sample.sequence_id),
                        effective=datetime.fromtimestamp(sample.timestamp, UTC),
                        observation_id=alert_id,
                        model=f"{model} version {response.model_version}",
                    ),
                )
            )
