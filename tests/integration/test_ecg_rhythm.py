"""The synthetic ECG generator (shapes, determinism, rates, RR irregularity) and the ECG rhythm
classifier example built from it (config schema, dynamic batch, held-out accuracy in onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from medserve.demo.ecg import CLASSES, SAMPLE_RATE, WINDOW_SECONDS, dataset, synthesize
from medserve.demo.models.repository import build_example_repository

SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
RATE_RANGES = {"normal_sinus": (60, 100), "tachycardia": (110, 170), "bradycardia": (35, 55)}


def r_peaks(window: np.ndarray) -> np.ndarray:
    """R-peak indices: remove the wander (0.2 s moving mean), smooth out EMG and mains (20 ms), then
    take the maximum of every run above half the 99.5th percentile, with a 250 ms refractory period."""
    x = window.astype(np.float64)
    filtered = x - np.convolve(x, np.ones(51) / 51, mode="same")
    smooth = np.convolve(filtered, np.ones(5) / 5, mode="same")
    threshold = 0.5 * np.percentile(smooth, 99.5)
    refractory = SAMPLE_RATE // 4
    peaks: list[int] = []
    i = 0
    while i < smooth.size:
        if smooth[i] > threshold:
            peak = i + int(np.argmax(smooth[i : i + refractory // 2]))
            peaks.append(peak)
            i = peak + refractory
        else:
            i += 1
    return np.array(peaks)


def rr_intervals(window: np.ndarray) -> np.ndarray:
    return np.diff(r_peaks(window)) / SAMPLE_RATE


def test_classes_and_constants() -> None:
    assert CLASSES == ("normal_sinus", "atrial_fibrillation", "tachycardia", "bradycardia", "noise")
    assert SAMPLE_RATE == 250 and WINDOW_SECONDS == 10


@pytest.mark.parametrize("label", CLASSES)
def test_window_shape_dtype_and_scale(label: str) -> None:
    window = synthesize(label, np.random.default_rng(0))
    assert window.shape == (SAMPLES,) and window.dtype == np.float32
    assert np.all(np.isfinite(window))
    assert 0.05 < float(np.ptp(window)) < 20  # millivolts, not volts or ADC counts


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="asystole"):
        synthesize("asystole", np.random.default_rng(0))


def test_deterministic_by_seed() -> None:
    for label in CLASSES:
        a = synthesize(label, np.random.default_rng(11))
        b = synthesize(label, np.random.default_rng(11))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, synthesize(label, np.random.default_rng(12)))
    x1, y1 = dataset(3, seed=5)
    x2, y2 = dataset(3, seed=5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, dataset(3, seed=6)[0])


def test_dataset_is_balanced_and_shuffled() -> None:
    x, y = dataset(4, seed=1)
    assert x.shape == (20, 1, SAMPLES) and x.dtype == np.float32
    assert y.dtype == np.int64
    assert np.bincount(y, minlength=len(CLASSES)).tolist() == [4] * len(CLASSES)
    assert y.tolist() != sorted(y.tolist())
    # Each window is what synthesize() makes for its label: rates follow the label.
    for window, label in zip(x[:, 0], y, strict=True):
        if CLASSES[label] in RATE_RANGES:
            low, high = RATE_RANGES[CLASSES[label]]
            assert low - 5 <= 60 / np.median(rr_intervals(window)) <= high + 5


@pytest.mark.parametrize("label", list(RATE_RANGES))
def test_sinus_heart_rates_are_in_range(label: str) -> None:
    low, high = RATE_RANGES[label]
    rng = np.random.default_rng(2024)
    rates = np.array([60 / np.median(rr_intervals(synthesize(label, rng))) for _ in range(40)])
    # The drawn mean rate is within the range; breathing and jitter move the median RR a little.
    assert np.all(rates >= low - 3) and np.all(rates <= high + 3), rates
    assert rates.max() - rates.min() > (high - low) / 3  # rates vary from window to window


def test_atrial_fibrillation_is_irregularly_irregular() -> None:
    rng = np.random.default_rng(99)

    def variation(label: str) -> np.ndarray:
        values = []
        for _ in range(40):
            rr = rr_intervals(synthesize(label, rng))
            values.append(np.std(rr) / np.mean(rr))
        return np.array(values)

    sinus = np.concatenate([variation(label) for label in RATE_RANGES])
    fibrillation = variation("atrial_fibrillation")
    assert np.median(fibrillation) > 4 * np.median(sinus)
    assert np.percentile(fibrillation, 10) > np.percentile(sinus, 95)


def test_atrial_fibrillation_has_no_p_waves() -> None:
    # Average the 0.25-0.1 s before each R: sinus beats show a P hump there, AF beats only f waves.
    rng = np.random.default_rng(3)

    def p_region(label: str) -> float:
        heights = []
        for _ in range(20):
            window = synthesize(label, rng).astype(np.float64)
            window -= np.convolve(window, np.ones(125) / 125, mode="same")
            peaks = r_peaks(window)
            segments = [window[p - 62 : p - 25] for p in peaks if p >= 62]
            heights.append(float(np.ptp(np.mean(segments, axis=0))) / float(np.ptp(window)))
        return float(np.median(heights))

    assert p_region("normal_sinus") > 2 * p_region("atrial_fibrillation")


def test_noise_windows_have_more_low_frequency_power() -> None:
    rng = np.random.default_rng(4)
    noise = [synthesize("noise", rng) for _ in range(20)]
    sinus = [synthesize("normal_sinus", rng) for _ in range(20)]
    assert np.median([np.ptp(w) for w in noise]) > np.median([np.ptp(w) for w in sinus])


@pytest.mark.slow
def test_ecg_rhythm_classifier_builds_and_classifies(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # The build checks onnxruntime against torch (atol 1e-4) and the held-out accuracy itself.
    assert build_example_repository(tmp_path, models=["ecg_rhythm_classifier"]) == ["ecg_rhythm_classifier"]
    config = yaml.safe_load((tmp_path / "ecg_rhythm_classifier" / "config.yaml").read_text("utf-8"))
    assert config["max_batch_size"] == 32
    assert config["inputs"] == [{"name": "ecg", "datatype": "FP32", "dims": [1, SAMPLES]}]
    assert config["outputs"] == [{"name": "probabilities", "datatype": "FP32", "dims": [5]}]
    assert config["dynamic_batching"] == {"max_queue_delay_us": 5000, "preferred_batch_sizes": [8, 16, 32]}
    assert config["runtime_options"] == {"intra_op_threads": 1}
    metadata = config["metadata"]
    assert metadata["labels"] == list(CLASSES) and metadata["research_use_only"] is True
    assert metadata["sample_rate_hz"] == 250 and metadata["window_seconds"] == 10
    assert metadata["held_out_accuracy"]["value"] >= 0.85
    assert "not a clinical device" in metadata["intended_use"].lower()
    config_module = pytest.importorskip("medserve.repository.config")
    config_module.load_model_config(tmp_path / "ecg_rhythm_classifier")

    path = tmp_path / "ecg_rhythm_classifier" / "1" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (tensor,) = session.get_inputs()
    assert tensor.name == "ecg" and tensor.type == "tensor(float)"
    assert isinstance(tensor.shape[0], str) and tensor.shape[1:] == [1, SAMPLES]
    x, y = dataset(60, seed=31337)  # a seed neither training nor the build's held-out set uses
    (probabilities,) = session.run(["probabilities"], {"ecg": x})
    assert probabilities.shape == (len(y), len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    assert accuracy >= 0.85, accuracy
    # Raw millivolts or the same window scaled and shifted: the model standardises it itself.
    (scaled,) = session.run(["probabilities"], {"ecg": x[:8] * 3 + 1})
    np.testing.assert_allclose(scaled, probabilities[:8], atol=1e-4)
