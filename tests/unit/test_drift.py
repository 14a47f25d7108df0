"""Windowed model monitoring: statistics, PSI and mean-shift drift, snapshots, threads."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from medserve.monitoring import DriftScore, ModelMonitor, drift_level
from medserve.monitoring.scores import psi
from medserve.values.errors import InvalidConfig, ModelNotFound

WINDOW = 300.0


def feed(
    monitor: ModelMonitor,
    rng: np.random.Generator,
    start: float,
    requests: int = 200,
    *,
    input_shift: float = 0.0,
    push_up: bool = False,
    logit_shift: float = 0.0,
    model: str = "cxr",
    version: str = "1",
) -> None:
    """``requests`` requests spread over one window starting at ``start``."""
    for i in range(requests):
        image = rng.normal(input_shift, 1.0, size=(2, 1, 32, 32)).astype(np.float32)
        probs = rng.beta(2.0, 5.0, size=(2, 14))
        if push_up:
            probs = probs**0.3  # every probability pushed towards 1
        logits = rng.normal(logit_shift, 1.0, size=(2, 3)).astype(np.float32)
        label = rng.integers(0, 3, size=2)
        monitor.observe(
            model,
            version,
            {"image": image},
            {"probs": probs.astype(np.float32), "logits": logits, "label": label},
            now=start + i * (WINDOW - 1) / requests,
        )


def by_tensor(scores: list[DriftScore]) -> dict[str, DriftScore]:
    return {s.tensor: s for s in scores}


def test_no_scores_until_the_reference_window_has_ended() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    feed(monitor, np.random.default_rng(1), 0.0)
    assert monitor.drift("cxr", now=100.0) == []
    assert monitor.drift("cxr", now=WINDOW + 1) == []  # reference done, no later window yet


def test_stable_distribution_is_stable() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(2)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW)
    scores = by_tensor(monitor.drift("cxr", now=2 * WINDOW))
    assert set(scores) == {"image", "probs", "logits", "label"}
    for name in ("probs", "logits", "label"):
        assert scores[name].kind == "psi" and scores[name].value < 0.1, scores[name]
        assert scores[name].level == "stable"
    assert scores["image"].kind == "mean_shift" and scores["image"].value < 0.1


def test_probabilities_pushed_up_give_significant_psi_on_that_tensor() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(3)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW, push_up=True)
    scores = monitor.drift("cxr", now=2 * WINDOW)
    significant = [s for s in scores if s.level == "significant"]
    assert [(s.tensor, s.kind) for s in significant] == [("probs", "psi")]
    assert significant[0].value > 0.25
    assert significant[0].model == "cxr" and significant[0].version == "1"
    assert significant[0].window_start == WINDOW


def test_input_mean_shift_detected() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(4)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW, input_shift=0.8)
    image = by_tensor(monitor.drift("cxr", now=2 * WINDOW))["image"]
    assert image.kind == "mean_shift"
    assert image.value == pytest.approx(0.8, abs=0.05)
    assert image.level == "significant"


def test_real_valued_output_uses_reference_edges() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(5)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW, logit_shift=1.5)
    logits = by_tensor(monitor.drift("cxr", now=2 * WINDOW))["logits"]
    assert logits.value > 0.25
    snap = monitor.snapshot("cxr", now=2 * WINDOW)["versions"][0]
    reference_edges = snap["reference"]["outputs"]["logits"]["histogram"]["edges"]
    current = snap["windows"][-1]["outputs"]["logits"]
    assert current["kind"] == "real"
    assert current["histogram"]["edges"] == reference_edges
    assert current["histogram"]["above"] > 0  # shifted values beyond the reference maximum


def test_categorical_output_shift() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    for i in range(300):
        monitor.observe("ecg", "2", {}, {"rhythm": np.array([i % 3])}, now=float(i))
    for i in range(300):
        monitor.observe("ecg", "2", {}, {"rhythm": np.array([2])}, now=WINDOW + i)
    (score,) = monitor.drift("ecg", now=2 * WINDOW)
    assert score.tensor == "rhythm" and score.value > 0.25
    window = monitor.snapshot("ecg", now=2 * WINDOW)["versions"][0]["windows"][0]
    assert window["outputs"]["rhythm"]["counts"] == {"0": 100, "1": 100, "2": 100}


def test_windows_roll_over_and_are_bounded() -> None:
    monitor = ModelMonitor(window_s=60.0, keep_windows=3)
    out = {"p": np.array([[0.2, 0.8]], dtype=np.float32)}
    for t in (5.0, 65.0, 70.0, 130.0, 190.0, 250.0):
        monitor.observe("m", "1", {"x": np.ones(4)}, out, now=t)
    snap = monitor.snapshot("m", now=260.0)["versions"][0]
    assert [(w["start"], w["end"], w["observations"]) for w in snap["windows"]] == [
        (120.0, 180.0, 1),
        (180.0, 240.0, 1),
        (240.0, 300.0, 1),
    ]
    assert snap["reference"]["windows"] == [{"start": 0.0, "end": 60.0}]  # kept although rolled out
    monitor.observe("m", "1", {"x": np.ones(4)}, out, now=10.0)  # too late for any kept window
    assert monitor.snapshot("m", now=260.0)["versions"][0]["late_observations"] == 1


def test_several_reference_windows() -> None:
    monitor = ModelMonitor(window_s=WINDOW, reference_windows=2)
    rng = np.random.default_rng(6)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW)
    assert monitor.drift("cxr", now=2 * WINDOW - 1) == []
    feed(monitor, rng, 2 * WINDOW, push_up=True)
    snap = monitor.snapshot("cxr", now=3 * WINDOW)["versions"][0]
    assert [w["start"] for w in snap["reference"]["windows"]] == [0.0, WINDOW]
    assert snap["reference"]["observations"] == 400
    assert by_tensor(monitor.drift("cxr", now=3 * WINDOW))["probs"].value > 0.25


def test_set_reference_pins_the_newest_window() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(7)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW, push_up=True)
    assert by_tensor(monitor.drift("cxr", now=2 * WINDOW))["probs"].level == "significant"
    monitor.set_reference("cxr")
    assert monitor.drift("cxr", now=2 * WINDOW) == []  # the current window is the reference now
    feed(monitor, rng, 2 * WINDOW, push_up=True)
    assert by_tensor(monitor.drift("cxr", now=3 * WINDOW))["probs"].level == "stable"
    assert monitor.snapshot("cxr", now=3 * WINDOW)["versions"][0]["reference"]["pinned"] is True


def test_versions_are_tracked_separately() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(8)
    feed(monitor, rng, 0.0, version="1")
    feed(monitor, rng, WINDOW, version="1")
    feed(monitor, rng, 0.0, version="2")
    feed(monitor, rng, WINDOW, version="2", push_up=True)
    rows = list(monitor.scores(now=2 * WINDOW))
    probs = {(model, version): value for model, version, tensor, kind, value in rows if tensor == "probs"}
    assert probs[("cxr", "1")] < 0.1 < 0.25 < probs[("cxr", "2")]
    assert all(kind in ("psi", "mean_shift") for *_, kind, _ in rows)


def test_snapshot_is_json_serialisable() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    rng = np.random.default_rng(9)
    feed(monitor, rng, 0.0)
    feed(monitor, rng, WINDOW, push_up=True)
    monitor.observe("cxr", "1", {"image": np.array([np.nan, 1.0])}, {"probs": np.array([np.inf])}, now=WINDOW)
    monitor.observe("cxr", "1", {"text": np.array(["a"], dtype=object)}, {}, now=WINDOW)  # skipped
    snap = monitor.snapshot("cxr", now=2 * WINDOW)
    decoded = json.loads(json.dumps(snap, allow_nan=False))
    version = decoded["versions"][0]
    assert decoded["model"] == "cxr" and version["version"] == "1"
    window = version["windows"][-1]
    assert window["inputs"]["image"]["nonfinite"] == 1
    assert "text" not in window["inputs"]
    probs = window["outputs"]["probs"]
    assert probs["kind"] == "probability" and len(probs["histogram"]["counts"]) == 10
    assert probs["nonfinite"] == 1
    assert {d["tensor"] for d in version["drift"]} == {"image", "probs", "logits", "label"}


def test_large_tensors_are_subsampled() -> None:
    monitor = ModelMonitor(window_s=WINDOW, max_values_per_tensor=1000)
    monitor.observe("m", "1", {"x": np.ones((1, 3, 128, 128), dtype=np.float32)}, {}, now=1.0)
    monitor.observe("m", "1", {"x": np.ones((10,), dtype=np.float32)}, {}, now=2.0)
    stats = monitor.snapshot("m", now=3.0)["versions"][0]["windows"][0]["inputs"]["x"]
    assert stats["count"] <= 1000 + 10
    assert stats["mean"] == 1.0 and stats["std"] == 0.0


def test_unknown_model_raises_model_not_found() -> None:
    monitor = ModelMonitor()
    with pytest.raises(ModelNotFound, match="no-such-model"):
        monitor.snapshot("no-such-model")
    with pytest.raises(ModelNotFound):
        monitor.drift("no-such-model")
    with pytest.raises(ModelNotFound):
        monitor.set_reference("no-such-model")


def test_forget_drops_a_model() -> None:
    monitor = ModelMonitor()
    monitor.observe("m", "1", {"x": np.ones(3)}, {}, now=1.0)
    assert monitor.models() == ["m"]
    monitor.forget("m")
    assert monitor.models() == []


def test_invalid_settings_refused() -> None:
    for kwargs in ({"window_s": 0}, {"reference_windows": 0}, {"bins": 1}, {"keep_windows": 1}):
        with pytest.raises(InvalidConfig):
            ModelMonitor(**kwargs)


def test_psi_and_levels() -> None:
    counts = np.array([10.0, 20.0, 30.0, 40.0])
    assert psi(counts, counts * 3) == pytest.approx(0.0)
    assert psi(counts, np.zeros(4)) is None
    opposite = psi(np.array([100.0, 0.0]), np.array([0.0, 100.0]))
    assert opposite is not None and 0.25 < opposite < 100  # empty bins stay finite
    assert drift_level("psi", 0.05) == "stable"
    assert drift_level("psi", 0.2) == "moderate"
    assert drift_level("psi", 0.3) == "significant"
    assert drift_level("mean_shift", 0.6) == "significant"


def test_concurrent_observers() -> None:
    monitor = ModelMonitor(window_s=WINDOW)
    threads_n, per_thread = 8, 250
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for i in range(per_thread):
                monitor.observe(
                    "m",
                    "1",
                    {"x": rng.normal(size=(4, 8))},
                    {"p": rng.random((4, 3)), "c": rng.integers(0, 4, size=4), "r": rng.normal(size=4)},
                    now=float(i % 2) * WINDOW + i * 0.1,
                )
                if i % 50 == 0:
                    monitor.snapshot("m", now=2 * WINDOW)
                    list(monitor.scores(now=2 * WINDOW))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    windows = monitor.snapshot("m", now=2 * WINDOW)["versions"][0]["windows"]
    assert sum(w["observations"] for w in windows) == threads_n * per_thread
    assert sum(w["inputs"]["x"]["count"] for w in windows) == threads_n * per_thread * 32
    assert sum(sum(w["outputs"]["p"]["histogram"]["counts"]) for w in windows) == threads_n * per_thread * 12
