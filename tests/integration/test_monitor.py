"""The patient monitor over the real core: ONNX Runtime ECG model batched by the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from medserve.clinical.vitals.validation import ImplausibleVitalSign
from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.demo import ecg as ecg_synthetic
from medserve.repository.repository import ModelRepository
from medserve.security.authenticate import Authenticator
from medserve.streaming.messages import Alert, MonitorSample
from medserve.streaming.monitor import MonitorSettings, PatientMonitor
from medserve.values.access import Caller
from medserve.values.errors import InvalidInput, Overloaded

STABLE = {
    "respiration_rate": 16.0,
    "spo2": 97.0,
    "on_supplemental_oxygen": 0.0,
    "systolic_bp": 125.0,
    "pulse": 72.0,
    "consciousness": 0.0,
    "temperature": 36.8,
}
SICK = {**STABLE, "respiration_rate": 26.0, "spo2": 91.0, "systolic_bp": 95.0, "pulse": 125.0}


class Collected:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def publish(self, alert: Alert) -> None:
        self.alerts.append(alert)


@pytest.fixture()
async def service(example_repository: Path) -> AsyncIterator[InferenceService]:
    registry = ModelRegistry(ModelRepository(example_repository), ServingMetrics())
    await registry.load("ecg_rhythm_classifier")
    yield InferenceService(registry, Authenticator(None, None, disabled=True))
    await registry.close()


def monitor_for(service: InferenceService, **settings: object) -> tuple[PatientMonitor, Collected]:
    sink = Collected()
    return PatientMonitor(service, sink, MonitorSettings(**settings)), sink  # type: ignore[arg-type]


async def test_one_alert_per_deterioration_episode(service: InferenceService) -> None:
    monitor, sink = monitor_for(service)
    pattern = [STABLE] * 5 + [SICK, STABLE, SICK, SICK, STABLE, SICK] + [SICK] * 5 + [STABLE] * 6
    for seq, vitals in enumerate(pattern):
        result = await monitor.handle(MonitorSample(7, seq, 1000.0 + seq, start=seq == 0, vitals=vitals))
        assert result.verdict == "accepted" and result.news2 is not None
    kinds = [a.kind for a in sink.alerts]
    assert kinds.count("raised") == 1, kinds
    raised = next(a for a in sink.alerts if a.kind == "raised")
    assert raised.observation["resourceType"] == "Observation"
    assert raised.observation["subject"]["reference"] == "Patient/7"


async def test_news2_waits_for_every_vital_sign_and_for_fresh_ones(service: InferenceService) -> None:
    monitor, _ = monitor_for(service, vitals_max_age_s=60.0)
    partial = {k: v for k, v in STABLE.items() if k != "temperature"}
    result = await monitor.handle(MonitorSample("bed-1", 0, 0.0, start=True, vitals=partial))
    assert result.news2 is None and result.news2_missing == ["temperature"]
    result = await monitor.handle(MonitorSample("bed-1", 1, 10.0, vitals={"temperature": 37.0}))
    assert result.news2 is not None and result.news2.total == 0
    result = await monitor.handle(MonitorSample("bed-1", 2, 65.0, vitals={"pulse": 80.0}))
    assert result.news2 is None and "temperature" not in result.news2_missing
    assert "respiration_rate" in result.news2_missing


async def test_duplicates_and_resume(service: InferenceService) -> None:
    monitor, _ = monitor_for(service)
    for seq in range(3):
        await monitor.handle(MonitorSample(3, seq, float(seq), start=seq == 0, vitals=STABLE))
    again = await monitor.handle(MonitorSample(3, 0, 5.0, start=True, vitals=STABLE))  # reconnect
    assert again.resumed and again.verdict == "duplicate"
    assert (await monitor.handle(MonitorSample(3, 2, 5.0, vitals=STABLE))).verdict == "duplicate"
    assert (await monitor.handle(MonitorSample(3, 3, 6.0, vitals=STABLE))).verdict == "accepted"


async def test_bad_samples_are_refused_and_the_stream_goes_on(service: InferenceService) -> None:
    monitor, _ = monitor_for(service)
    await monitor.handle(MonitorSample(4, 0, 0.0, start=True, vitals=STABLE))
    with pytest.raises(ImplausibleVitalSign, match="spo2"):
        await monitor.handle(MonitorSample(4, 1, 1.0, vitals={"spo2": 130.0}))
    with pytest.raises(ImplausibleVitalSign, match="°F"):
        await monitor.handle(MonitorSample(4, 1, 1.0, vitals={"temperature": 98.6}))
    with pytest.raises(InvalidInput, match="not open"):
        await monitor.handle(MonitorSample(99, 0, 1.0, vitals=STABLE))
    assert (await monitor.handle(MonitorSample(4, 1, 1.0, vitals=STABLE))).verdict == "accepted"


async def test_session_limit_refuses_new_streams_only(service: InferenceService) -> None:
    monitor, _ = monitor_for(service, max_sessions=2)
    await monitor.handle(MonitorSample(1, 0, 0.0, start=True, vitals=STABLE))
    await monitor.handle(MonitorSample(2, 0, 0.0, start=True, vitals=STABLE))
    with pytest.raises(Overloaded):
        await monitor.handle(MonitorSample(3, 0, 0.0, start=True, vitals=STABLE))
    assert (await monitor.handle(MonitorSample(1, 1, 1.0, vitals=STABLE))).verdict == "accepted"


async def test_ecg_windows_are_classified_and_af_alerts_once(service: InferenceService) -> None:
    monitor, sink = monitor_for(service)
    rng = np.random.default_rng(5)
    stream = np.concatenate([ecg_synthetic.synthesize("atrial_fibrillation", rng) for _ in range(4)])
    rhythms = []
    for seq, chunk in enumerate(np.split(stream, len(stream) // 500)):
        result = await monitor.handle(MonitorSample(8, seq, 2.0 * seq, start=seq == 0, ecg=chunk))
        if result.rhythm:
            rhythms.append(result.rhythm)
            assert result.rhythm_probabilities is not None and result.rhythm_probabilities.shape == (5,)
    assert len(rhythms) == (len(stream) - 2500) // 500 + 1
    assert rhythms.count("atrial_fibrillation") >= len(rhythms) - 1
    rhythm_alerts = [a for a in sink.alerts if a.kind == "rhythm"]
    assert len(rhythm_alerts) == 1
    assert rhythm_alerts[0].observation["valueCodeableConcept"]["coding"][0]["code"] == "49436004"


async def test_windows_of_many_patients_are_batched_and_equal_unbatched(
    service: InferenceService, example_repository: Path
) -> None:
    import asyncio

    import onnxruntime as ort

    monitor, _ = monitor_for(service)
    rng = np.random.default_rng(9)
    beds = 12
    windows = [ecg_synthetic.synthesize(ecg_synthetic.CLASSES[b % 5], rng) for b in range(beds)]
    for bed, window in enumerate(windows, start=1):  # 8 s of ECG each: no window yet
        await monitor.handle(MonitorSample(bed, 0, 0.0, start=True, ecg=window[:2000]))
    before = service.model_statistics("ecg_rhythm_classifier", "", Caller.system())["model_stats"][0]
    results = await asyncio.gather(
        *(monitor.handle(MonitorSample(bed, 1, 2.0, ecg=w[2000:])) for bed, w in enumerate(windows, start=1))
    )
    after = service.model_statistics("ecg_rhythm_classifier", "", Caller.system())["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == beds and executions < beds, (inferences, executions)
    path = example_repository / "ecg_rhythm_classifier" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for window, result in zip(windows, results):
        (expected,) = session.run(None, {"ecg": window.reshape(1, 1, -1)})
        assert result.rhythm_probabilities is not None
        np.testing.assert_allclose(result.rhythm_probabilities, expected[0], rtol=1e-4, atol=1e-5)
