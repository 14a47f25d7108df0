"""Seeded synthetic single-lead ECG: 10 s windows at 250 Hz, in millivolts, for five rhythm classes.

Each beat is a McSharry-style sum of Gaussians (P, Q, R, S, T) placed at the beat's R time; intervals
scale with the RR interval (QT after Bazett). Every window draws its own heart rate, heart-rate
variability, wave amplitudes and widths, overall gain, baseline wander, white and EMG-like noise and
sometimes mains hum, so the classes overlap in everything but the rhythm itself:

- ``normal_sinus``: 60-100 bpm, regular RR with respiratory sinus arrhythmia, P waves;
- ``atrial_fibrillation``: 60-160 bpm, irregularly irregular RR, no P waves, fibrillatory baseline;
- ``tachycardia``: sinus rhythm at 110-170 bpm;
- ``bradycardia``: sinus rhythm at 35-55 bpm;
- ``noise``: artefact (strong baseline wander, EMG bursts, electrode pops, motion spikes) with no
  QRS or a faint one buried under it.

The data are a demonstration: they teach rhythm from rate and regularity, not real pathology.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = ("normal_sinus", "atrial_fibrillation", "tachycardia", "bradycardia", "noise")
"""The rhythm classes, in the order of a classifier's output vector."""

SAMPLE_RATE = 250
"""Samples per second."""

WINDOW_SECONDS = 10
"""Seconds per window."""

WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS

HEART_RATE_BPM: dict[str, tuple[float, float]] = {
    "normal_sinus": (60.0, 100.0),
    "atrial_fibrillation": (60.0, 160.0),
    "tachycardia": (110.0, 170.0),
    "bradycardia": (35.0, 55.0),
}
"""Mean ventricular rate range drawn for each class with beats."""

_TIME = np.arange(WINDOW_SAMPLES, dtype=np.float64) / SAMPLE_RATE

# Wave: (offset from R in s at RR = 1 s, amplitude range in mV, width range in s). The P offset
# shrinks gently with rate, the T offset follows sqrt(RR) (Bazett); Q, R and S are fixed.
_P = (-0.17, (0.08, 0.25), (0.018, 0.030))
_Q = (-0.03, (-0.15, -0.03), (0.008, 0.012))
_R = (0.0, (0.7, 1.6), (0.009, 0.014))
_S = (0.03, (-0.40, -0.08), (0.008, 0.013))
_T = (0.28, (0.12, 0.40), (0.040, 0.060))


def synthesize(label: str, rng: np.random.Generator) -> np.ndarray:
    """One window of class ``label``: float32, shape ``(WINDOW_SAMPLES,)``, in millivolts.

    Raises ``ValueError`` for a label not in ``CLASSES``.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown ECG class {label!r}; expected one of {', '.join(CLASSES)}")
    if label == "noise":
        signal = _artefact(rng)
    else:
        low, high = HEART_RATE_BPM[label]
        rate = rng.uniform(low, high)
        if label == "atrial_fibrillation":
            signal = _beats(_af_r_times(rate, rng), rng, p_waves=False) + _fibrillatory_waves(rng)
        else:
            signal = _beats(_sinus_r_times(rate, rng), rng, p_waves=True)
        signal *= rng.uniform(0.6, 1.5)  # lead placement and gain
        signal += _baseline_wander(rng, amplitude=(0.02, 0.3))
        signal += _white_noise(rng, sigma=(0.005, 0.04))
        if rng.random() < 0.3:
            signal += _emg(rng, sigma=(0.01, 0.05))
    if rng.random() < 0.2:
        mains = rng.choice([50.0, 60.0])
        signal += rng.uniform(0.005, 0.04) * np.sin(2 * np.pi * mains * _TIME + rng.uniform(0, 2 * np.pi))
    return signal.astype(np.float32)


def dataset(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` windows of every class, shuffled: ``(x, y)`` with ``x`` float32 of shape
    ``(N, 1, WINDOW_SAMPLES)`` in millivolts and ``y`` int64 indices into ``CLASSES``."""
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n_per_class)
    rng.shuffle(labels)
    x = np.empty((labels.size, 1, WINDOW_SAMPLES), dtype=np.float32)
    for i, label in enumerate(labels):
        x[i, 0] = synthesize(CLASSES[label], rng)
    return x, labels


def _sinus_r_times(rate_bpm: float, rng: np.random.Generator) -> np.ndarray:
    """R times of a sinus rhythm: RR modulated by breathing (0.15-0.4 Hz) and a little jitter."""
    mean_rr = 60.0 / rate_bpm
    count = int(WINDOW_SECONDS / mean_rr) + 4
    breathing = rng.uniform(0.15, 0.4)
    depth = rng.uniform(0.0, 0.05)
    phase = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(0.003, 0.02)
    start = -rng.uniform(0, mean_rr) - mean_rr
    times = np.empty(count)
    t = start
    for i in range(count):
        times[i] = t
        rr = mean_rr * (
            1 + depth * np.sin(2 * np.pi * breathing * t + phase) + jitter * rng.standard_normal()
        )
        t += max(rr, 0.25)
    return times


def _af_r_times(rate_bpm: float, rng: np.random.Generator) -> np.ndarray:
    """R times of atrial fibrillation: independent RR intervals with a 12-30 % spread."""
    mean_rr = 60.0 / rate_bpm
    spread = rng.uniform(0.12, 0.30)
    count = int(WINDOW_SECONDS / (mean_rr * (1 - spread))) + 6
    rr = mean_rr * rng.gamma(1 / spread**2, spread**2, size=count)
    rr = np.clip(rr, 0.28, 2.0)
    return -rng.uniform(0, mean_rr) - mean_rr + np.concatenate(([0.0], np.cumsum(rr[:-1])))


def _beats(r_times: np.ndarray, rng: np.random.Generator, *, p_waves: bool) -> np.ndarray:
    """Sum of Gaussian P (optional), Q, R, S and T waves at every R time; shapes drawn per window,
    with small beat-to-beat amplitude changes."""
    waves = [_Q, _R, _S, _T] + ([_P] if p_waves else [])
    signal = np.zeros(WINDOW_SAMPLES)
    rr = np.diff(r_times, append=r_times[-1] + np.mean(np.diff(r_times)))
    for offset, (amp_low, amp_high), (width_low, width_high) in waves:
        amplitude = rng.uniform(amp_low, amp_high)
        width = rng.uniform(width_low, width_high)
        if offset == _T[0]:
            centres = r_times + offset * np.sqrt(np.clip(rr, 0.3, 2.0))
            width *= np.sqrt(np.clip(rr, 0.3, 2.0))
        elif offset == _P[0]:
            centres = r_times + offset * np.clip(rr, 0.35, 1.2) ** 0.3
        else:
            centres = r_times + offset
        widths = np.broadcast_to(width, r_times.shape)
        per_beat = amplitude * (1 + 0.05 * rng.standard_normal(r_times.size))
        _add_gaussians(signal, centres, widths, per_beat)
    return signal


def _add_gaussians(signal: np.ndarray, centres: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> None:
    """Add ``heights * exp(-(t - centre)^2 / 2 width^2)`` to ``signal``, each only within 5 widths of
    its centre (where the rest is below 4e-6 of the peak)."""
    reach = int(np.ceil(5 * float(np.max(widths)) * SAMPLE_RATE))
    offsets = np.arange(-reach, reach + 1)
    index = np.rint(centres * SAMPLE_RATE).astype(np.int64)[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < WINDOW_SAMPLES)
    delta = index / SAMPLE_RATE - centres[:, None]
    values = heights[:, None] * np.exp(-0.5 * (delta / widths[:, None]) ** 2)
    signal += np.bincount(index[inside], weights=values[inside], minlength=WINDOW_SAMPLES)


def _fibrillatory_waves(rng: np.random.Generator) -> np.ndarray:
    """Atrial f waves: a few 4-9 Hz oscillations with wandering amplitude, 0.02-0.12 mV."""
    waves = np.zeros(WINDOW_SAMPLES)
    for _ in range(3):
        frequency = rng.uniform(4.0, 9.0)
        drift = rng.uniform(-0.5, 0.5)
        phase = rng.uniform(0, 2 * np.pi)
        waves += np.sin(2 * np.pi * (frequency + drift * _TIME / WINDOW_SECONDS) * _TIME + phase)
    envelope = 1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * _TIME + rng.uniform(0, 2 * np.pi))
    result: np.ndarray = rng.uniform(0.02, 0.12) / 3 * waves * envelope
    return result


def _baseline_wander(rng: np.random.Generator, *, amplitude: tuple[float, float]) -> np.ndarray:
    wander = np.zeros(WINDOW_SAMPLES)
    for _ in range(2):
        wander += np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * _TIME + rng.uniform(0, 2 * np.pi))
    result: np.ndarray = rng.uniform(*amplitude) / 2 * wander + rng.uniform(-0.2, 0.2)
    return result


def _white_noise(rng: np.random.Generator, *, sigma: tuple[float, float]) -> np.ndarray:
    result: np.ndarray = rng.uniform(*sigma) * rng.standard_normal(WINDOW_SAMPLES)
    return result


def _emg(rng: np.random.Generator, *, sigma: tuple[float, float]) -> np.ndarray:
    """Muscle noise: high-pass white noise in a few bursts of 0.5-3 s."""
    noise = np.diff(rng.standard_normal(WINDOW_SAMPLES + 1)) / np.sqrt(2)
    gate = np.full(WINDOW_SAMPLES, 0.2)
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0, WINDOW_SECONDS)
        end = start + rng.uniform(0.5, 3.0)
        gate[(start <= _TIME) & (end > _TIME)] = 1.0
    result: np.ndarray = rng.uniform(*sigma) * noise * gate
    return result


def _artefact(rng: np.random.Generator) -> np.ndarray:
    """A window with no usable rhythm: strong wander, EMG, electrode pops and motion spikes, at most a
    faint, sometimes irregular QRS train beneath them."""
    signal = _baseline_wander(rng, amplitude=(0.3, 2.5))
    signal += _emg(rng, sigma=(0.05, 0.4))
    signal += _white_noise(rng, sigma=(0.01, 0.15))
    for _ in range(int(rng.integers(0, 5))):  # electrode pops: a step that decays back
        start = rng.uniform(0, WINDOW_SECONDS)
        after = start <= _TIME
        signal[after] += rng.uniform(-2.0, 2.0) * np.exp(-(_TIME[after] - start) / rng.uniform(0.1, 1.5))
    for _ in range(int(rng.integers(0, 6))):  # motion spikes, some QRS-like in width
        centre = rng.uniform(0, WINDOW_SECONDS)
        width = rng.uniform(0.01, 0.15)
        signal += rng.uniform(-1.5, 1.5) * np.exp(-0.5 * ((_TIME - centre) / width) ** 2)
    if rng.random() < 0.4:  # a faint rhythm buried in the artefact
        rate = rng.uniform(40.0, 150.0)
        r_times = _sinus_r_times(rate, rng) if rng.random() < 0.5 else _af_r_times(rate, rng)
        signal += rng.uniform(0.05, 0.3) * _beats(r_times, rng, p_waves=rng.random() < 0.5)
    if rng.random() < 0.15:  # amplifier saturation on a lead-off
        start = int(rng.integers(0, WINDOW_SAMPLES - SAMPLE_RATE))
        signal[start : start + int(rng.integers(SAMPLE_RATE // 2, 3 * SAMPLE_RATE))] = rng.choice([-5.0, 5.0])
    return signal
