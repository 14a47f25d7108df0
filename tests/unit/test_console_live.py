"""The console's live figures: histogram quantiles as Prometheus reads them, windows over snapshots of
the server's registry, per-model and per-device figures, and the small PNG writer."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from medserve.console.charts import bar_chart, line_chart, sparkline
from medserve.console.figures import device_figures, model_figures
from medserve.console.live import LiveWindow, histogram_quantile, per_bucket, subtract
from medserve.console.png import encode_png
from medserve.core.metrics import ServingMetrics


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the first bucket's top
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: half into (0.1, 0.2]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * (39.6 - 30) / 10)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 5.0)]) == pytest.approx(0.1)  # in +Inf
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, buckets)


def test_bucket_arithmetic() -> None:
    assert subtract([(1.0, 5.0), (2.0, 9.0)], [(1.0, 2.0), (2.0, 3.0)]) == [(1.0, 3.0), (2.0, 6.0)]
    assert per_bucket([(1.0, 5.0), (2.0, 9.0), (math.inf, 9.0)]) == [(1.0, 5.0), (2.0, 4.0), (math.inf, 0.0)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def observe(metrics: ServingMetrics, model: str, latencies: list[float], batch: int = 1) -> None:
    for latency in latencies:
        metrics.request_success.labels(model, "1").inc()
        metrics.request_duration.labels(model, "1").observe(latency)
        metrics.compute_duration.labels(model, "1").observe(latency)
        metrics.batch_size.labels(model, "1").observe(batch)
        metrics.inference_count.labels(model, "1").inc(batch)


def test_a_window_counts_only_what_happened_inside_it() -> None:
    metrics, clock = ServingMetrics(), Clock()
    window = LiveWindow(metrics.registry, clock=clock)
    observe(metrics, "m", [5.0] * 50)  # before the window: slow
    window.sample()
    clock.now = 60.0
    observe(metrics, "m", [0.004] * 99 + [0.2])
    new, old, seconds = window.pair(60.0)
    assert seconds == 60.0
    figures = model_figures(new, old, seconds, "m")
    assert figures.requests_per_s == pytest.approx(100 / 60)
    assert figures.p50_ms is not None and 2.5 < figures.p50_ms <= 5.0  # in the (2.5 ms, 5 ms] bucket
    assert figures.p99_ms is not None and figures.p99_ms <= 250.0  # the 5 s requests are outside
    assert sum(count for _, count in figures.latency) == 100
    assert figures.busy == pytest.approx((99 * 0.004 + 0.2) / 60)
    # with no older snapshot, the figures count everything since start
    only, none, _ = LiveWindow(metrics.registry, clock=clock).pair(60.0)
    assert none is None
    assert sum(c for _, c in model_figures(only, None, 0.0, "m").latency) == 150


def test_classes_failures_and_queue_depth() -> None:
    metrics = ServingMetrics()
    metrics.watch_queue("m", "1", lambda: 7)
    metrics.watch_class_queues("m", "1", ["stat", "bulk"], lambda _: 0)
    for _ in range(9):
        metrics.class_outcome("m", "1", "stat", "met_deadline")
    metrics.class_outcome("m", "1", "stat", "expired")
    metrics.request_failure.labels("m", "1", "invalid_input").inc(3)
    snapshot = LiveWindow(metrics.registry).sample()
    figures = model_figures(snapshot, None, 0.0, "m")
    assert figures.queue_depth == 7
    stat = next(c for c in figures.classes if c.name == "stat")
    assert stat.attainment == pytest.approx(0.9)
    assert next(c for c in figures.classes if c.name == "bulk").attainment is None
    assert figures.failures == [("invalid_input", 3.0, 3.0)]


def test_device_busy_is_shared_by_instances_and_energy_read_per_device() -> None:
    metrics, clock = ServingMetrics(), Clock()
    window = LiveWindow(metrics.registry, clock=clock)
    window.sample()
    clock.now = 10.0
    observe(metrics, "a", [0.5] * 10)  # 5 s of execution in 10 s
    metrics.energy.record("a", "1", "cpu", 100.0, "estimated")
    new, old, seconds = window.pair(60.0)
    devices = {d.device: d for d in device_figures(new, old, seconds, {"a": [("cpu", 1), ("cuda:0", 3)]})}
    assert devices["cpu"].busy == pytest.approx(0.125) and devices["cuda:0"].busy == pytest.approx(0.375)
    assert devices["cuda:0"].instances == 3
    assert devices["cpu"].energy_w == pytest.approx(10.0)
    assert devices["cpu"].energy_sources == ("estimated",)


def test_png_is_a_valid_rgb_image() -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (255, 10, 20)
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (4, 3)
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    raw = np.frombuffer(zlib.decompress(data[idat + 4 : idat + 4 + length]), np.uint8).reshape(3, 13)
    assert (raw[:, 0] == 0).all()  # filter byte
    assert tuple(raw[1, 1 + 2 * 3 : 1 + 3 * 3]) == (255, 10, 20)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), np.uint8))


def test_charts_are_labelled_svg_that_escapes_its_text() -> None:
    svg = bar_chart([("<1", 3.0), ("b&c", 0.0)], "latency <model>", "ms")
    assert svg.startswith("<svg") and 'role="img"' in svg and "<title>latency &lt;model&gt;</title>" in svg
    assert "&lt;1" in svg and "b&amp;c" in svg
    lines = line_chart({"cpu · onnxruntime": [(1, 2.0), (8, 5.0)]}, "p99", "batch size", "ms")
    assert lines.count("<polyline") == 1 and "cpu · onnxruntime" in lines
    assert "no usable measurement" in line_chart({}, "p99", "batch", "ms")
    assert sparkline([1, 3, 2], "trend").count("<polyline") == 1
