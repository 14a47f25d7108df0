"""Seeded patient trajectories for a simulated ward: vital signs at 1 Hz and a continuous ECG.

Every bed has an adult baseline (respiration rate, SpO2, systolic BP, pulse, temperature) with slow
drift and small measurement noise; stable patients mostly score NEWS2 0-2. A fraction of the beds
deteriorate: from an onset drawn in the first half of the run their vitals move, over a ramp of
minutes, towards NEWS2 >= 7 territory:

- ``sepsis``: rising respiration rate, pulse and temperature, falling SpO2 and systolic BP; late on
  supplemental oxygen and new confusion; sinus tachycardia on the ECG once the pulse passes 110;
- ``atrial_fibrillation``: the ECG switches to atrial fibrillation at onset, with a fast ventricular
  rate, falling blood pressure and faster breathing;
- ``tachycardia``: sinus tachycardia with a rising pulse, breathing and a mild fever.

Everything is a pure function of the seed and the time (``vitals_at``, ``rhythm_at``), except the
ECG stream (``EcgStream``), which is deterministic in the seed and the order of its chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medserve.clinical.vitals.news2 import NEWS2Score, score_news2
from medserve.demo.ecg import SAMPLE_RATE, synthesize
from medserve.streaming.messages import VITAL_FIELDS, vital_signs

DETERIORATION_KINDS = ("sepsis", "atrial_fibrillation", "tachycardia")
"""The kinds of deterioration a bed may follow."""

ECG_CHUNK_SECONDS = 2
ECG_CHUNK_SAMPLES = SAMPLE_RATE * ECG_CHUNK_SECONDS
"""ECG samples handed out per chunk (2 s at 250 Hz)."""

TRUTH_THRESHOLD = 5
"""The NEWS2 total at which a deteriorating patient counts as deteriorated (chart 2's MEDIUM)."""

_NUMERIC = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
# Measurement noise (standard deviation) and slow-drift amplitude of each numeric vital sign.
_NOISE = {"respiration_rate": 0.6, "spo2": 0.5, "systolic_bp": 3.0, "pulse": 2.0, "temperature": 0.05}
_DRIFT = {"respiration_rate": 1.0, "spo2": 0.6, "systolic_bp": 5.0, "pulse": 3.0, "temperature": 0.15}
# Where each deterioration ends (progress 1), as target values of the numeric vital signs.
_TARGETS: dict[str, dict[str, float]] = {
    "sepsis": {
        "respiration_rate": 28.0,
        "spo2": 90.0,
        "systolic_bp": 92.0,
        "pulse": 126.0,
        "temperature": 39.3,
    },
    "atrial_fibrillation": {
        "respiration_rate": 23.0,
        "spo2": 94.0,
        "systolic_bp": 98.0,
        "pulse": 138.0,
        "temperature": 37.2,
    },
    "tachycardia": {
        "respiration_rate": 23.0,
        "spo2": 95.0,
        "systolic_bp": 104.0,
        "pulse": 142.0,
        "temperature": 38.6,
    },
}
_MAX_RAMP_S = 600.0


@dataclass(frozen=True)
class Deterioration:
    """A deterioration of ``kind`` starting at ``onset_s`` and complete ``ramp_s`` seconds later."""

    kind: str
    onset_s: float
    ramp_s: float

    def progress(self, t: float) -> float:
        """0 before onset, rising linearly to 1 at the end of the ramp."""
        return min(max((t - self.onset_s) / self.ramp_s, 0.0), 1.0)


@dataclass(frozen=True)
class PatientTrajectory:
    """One bed's patient: baseline vitals, drift, noise and an optional deterioration."""

    bed: int
    seed: int
    baseline: dict[str, float]
    drift_phase: tuple[float, ...]
    drift_period_s: tuple[float, ...]
    deterioration: Deterioration | None = None

    @property
    def deteriorating(self) -> bool:
        return self.deterioration is not None

    def progress(self, t: float) -> float:
        return self.deterioration.progress(t) if self.deterioration is not None else 0.0

    def mean_vitals_at(self, t: float) -> dict[str, float]:
        """The noiseless numeric vital signs at ``t`` seconds: baseline, drift and deterioration."""
        p = self.progress(t)
        target = _TARGETS[self.deterioration.kind] if self.deterioration is not None else self.baseline
        values: dict[str, float] = {}
        for i, name in enumerate(_NUMERIC):
            drift = _DRIFT[name] * math.sin(2 * math.pi * t / self.drift_period_s[i] + self.drift_phase[i])
            base = self.baseline[name] + drift
            values[name] = base + p * (target[name] - base)
        return values

    def vitals_at(self, t: float) -> dict[str, float]:
        """The measured vital signs at ``t`` seconds, in ``messages.VITAL_FIELDS`` order (oxygen as
        0/1, consciousness as an index into ``CONSCIOUSNESS_CODES``)."""
        mean = self.mean_vitals_at(t)
        rng = np.random.default_rng([self.seed, self.bed, int(round(t * 1000))])
        noise = rng.standard_normal(len(_NUMERIC))
        measured = {name: mean[name] + _NOISE[name] * noise[i] for i, name in enumerate(_NUMERIC)}
        p = self.progress(t)
        sepsis = self.deterioration is not None and self.deterioration.kind == "sepsis"
        values = {
            "respiration_rate": round(max(measured["respiration_rate"], 4.0), 1),
            "spo2": round(min(max(measured["spo2"], 70.0), 100.0), 1),
            "on_supplemental_oxygen": 1.0 if sepsis and p >= 0.7 else 0.0,
            "systolic_bp": round(max(measured["systolic_bp"], 50.0), 1),
            "pulse": round(max(measured["pulse"], 30.0), 1),
            "consciousness": 1.0 if sepsis and p >= 0.9 else 0.0,
            "temperature": round(measured["temperature"], 2),
        }
        return {name: values[name] for name in VITAL_FIELDS}

    def rhythm_at(self, t: float) -> str:
        """The ECG class (``ecg_synthetic.CLASSES``) of the rhythm at ``t`` seconds."""
        d = self.deterioration
        if d is not None and d.kind == "atrial_fibrillation" and t >= d.onset_s:
            return "atrial_fibrillation"
        return "tachycardia" if self.mean_vitals_at(t)["pulse"] > 110 else "normal_sinus"

    def news2_at(self, t: float) -> NEWS2Score:
        return score_news2(vital_signs(self.vitals_at(t)))

    def first_news2_at_least(self, threshold: int, duration_s: float) -> float | None:
        """The first whole second before ``duration_s`` at which the measured NEWS2 total reaches
        ``threshold``, or None."""
        for second in range(math.ceil(duration_s)):
            if self.news2_at(float(second)).total >= threshold:
                return float(second)
        return None

    def ecg_stream(self) -> EcgStream:
        return EcgStream(self)


class EcgStream:
    """A continuous 250 Hz ECG: ``ecg_synthetic`` windows of the rhythm of the moment, joined without
    a step (each new window's offset to the previous sample decays over 0.5 s), in 2 s chunks."""

    def __init__(self, patient: PatientTrajectory) -> None:
        self._patient = patient
        self._rng = np.random.default_rng([patient.seed, patient.bed, 0xEC6])
        self._buffer = np.zeros(0, dtype=np.float32)
        self._generated = 0  # samples synthesized so far
        self._last = 0.0  # the last sample synthesized
        self.emitted = 0  # samples handed out so far

    def next_chunk(self) -> np.ndarray:
        """The next ``ECG_CHUNK_SAMPLES`` samples (float32 mV)."""
        while self._buffer.size < ECG_CHUNK_SAMPLES:
            window = synthesize(self._patient.rhythm_at(self._generated / SAMPLE_RATE), self._rng)
            if self._generated:
                previous = self._last
                decay = np.exp(-np.arange(window.size) / (0.5 * SAMPLE_RATE / 3))
                window = (window + (previous - float(window[0])) * decay).astype(np.float32)
            self._generated += window.size
            self._last = float(window[-1])
            self._buffer = np.concatenate((self._buffer, window))
        chunk, self._buffer = self._buffer[:ECG_CHUNK_SAMPLES], self._buffer[ECG_CHUNK_SAMPLES:]
        self.emitted += chunk.size
        return chunk


@dataclass(frozen=True)
class Ward:
    """The beds of a simulated run and its ground truth."""

    patients: tuple[PatientTrajectory, ...]
    duration_s: float

    def truth(self) -> dict[int, float | None]:
        """For every deteriorating bed: the first second its NEWS2 total reaches ``TRUTH_THRESHOLD``
        within the run (None when it does not)."""
        return {
            p.bed: p.first_news2_at_least(TRUTH_THRESHOLD, self.duration_s)
            for p in self.patients
            if p.deteriorating
        }


def build_ward(beds: int, duration_s: float, seed: int, deteriorating: float = 0.2) -> Ward:
    """``beds`` patients (beds 1..N) for a run of ``duration_s`` seconds; ``round(beds *
    deteriorating)`` of them, chosen by the seed, deteriorate with an onset in the first half of the
    run and a ramp of 20-40 % of the run (at most 10 minutes)."""
    if beds < 1:
        raise ValueError(f"beds must be at least 1, got {beds}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if not 0.0 <= deteriorating <= 1.0:
        raise ValueError(f"deteriorating must be a fraction from 0 to 1, got {deteriorating}")
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(beds, size=round(beds * deteriorating), replace=False).tolist())
    patients = []
    for index in range(beds):
        baseline = {
            "respiration_rate": rng.uniform(12.5, 19.0),
            "spo2": rng.uniform(95.8, 98.5),
            "systolic_bp": rng.uniform(118.0, 145.0),
            "pulse": rng.uniform(58.0, 90.0),
            "temperature": rng.uniform(36.5, 37.3),
        }
        phases = tuple(float(x) for x in rng.uniform(0, 2 * math.pi, len(_NUMERIC)))
        periods = tuple(float(x) for x in rng.uniform(120.0, 900.0, len(_NUMERIC)))
        deterioration = None
        if index in chosen:
            deterioration = Deterioration(
                kind=str(rng.choice(DETERIORATION_KINDS)),
                onset_s=float(rng.uniform(0.0, 0.5 * duration_s)),
                ramp_s=float(min(rng.uniform(0.2, 0.4) * duration_s, _MAX_RAMP_S)),
            )
        patients.append(
            PatientTrajectory(
                bed=index + 1,
                seed=seed,
                baseline={k: float(v) for k, v in baseline.items()},
                drift_phase=phases,
                drift_period_s=periods,
                deterioration=deterioration,
            )
        )
    return Ward(patients=tuple(patients), duration_s=float(duration_s))
