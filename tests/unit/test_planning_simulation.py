"""The planner's discrete-event simulation against queueing theory, and its batching and priorities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medserve.planning.service_curve import CurvePoint, ServiceCurve, lognormal_parameters
from medserve.planning.simulation import Batcher, Stream, simulate
from medserve.values.errors import InvalidInput


def fixed(ms: float, model: str = "m", batch_ms: dict[int, float] | None = None) -> ServiceCurve:
    points = [CurvePoint(1, ms, ms, ms)] + [
        CurvePoint(b, t, t, t) for b, t in sorted((batch_ms or {}).items())
    ]
    return ServiceCurve(model, "cpu", "test", tuple(points))


def test_md1_mean_latency_and_utilisation_match_the_pollaczek_khinchine_formula() -> None:
    # M/D/1, service 10 ms, 50 requests/s: utilisation 0.5, mean wait rho / (2 mu (1 - rho)) = 5 ms
    result = simulate(
        [Stream("s", "m", 50.0)], [Batcher("m", "cpu", fixed(10.0))], {"cpu": 1}, horizon_s=1500
    )
    stats = result.streams["s"]
    assert stats.requests > 60_000
    assert stats.mean_ms == pytest.approx(15.0, rel=0.03)
    assert result.utilisation["cpu"] == pytest.approx(0.5, rel=0.02)
    assert stats.p50_ms >= 10.0


def test_mm1_tail_matches_the_exponential_sojourn_time() -> None:
    # M/M/1 at rho 0.6 with a 10 ms mean: the sojourn time is exponential with mean 25 ms, so its
    # p99 is 25 ms * ln(100). A log-normal with sigma 1 stands in for the exponential's spread
    # poorly, so the service time is drawn from a curve fitted to the exponential's mean and p99
    # and the check is on the mean only, with a wide band on the tail.
    mean = 10.0
    curve = ServiceCurve("m", "cpu", "test", (CurvePoint(1, mean * math.log(2), mean * math.log(100), mean),))
    result = simulate(
        [Stream("s", "m", 60.0)], [Batcher("m", "cpu", curve)], {"cpu": 1}, horizon_s=1500, seed=3
    )
    assert result.utilisation["cpu"] == pytest.approx(0.6, rel=0.03)
    assert result.streams["s"].mean_ms == pytest.approx(25.0, rel=0.15)
    assert result.streams["s"].p99_ms == pytest.approx(25.0 * math.log(100), rel=0.3)


def test_two_slots_halve_the_utilisation() -> None:
    result = simulate([Stream("s", "m", 50.0)], [Batcher("m", "cpu", fixed(10.0))], {"cpu": 2}, horizon_s=300)
    assert result.utilisation["cpu"] == pytest.approx(0.25, rel=0.05)


def test_batches_form_under_load_and_only_up_to_the_limit() -> None:
    curve = fixed(10.0, batch_ms={4: 16.0, 8: 24.0})
    batcher = Batcher("m", "cpu", curve, max_batch_size=8, max_queue_delay_s=0.005, preferred=(8,))
    result = simulate([Stream("s", "m", 250.0)], [batcher], {"cpu": 1}, horizon_s=200)
    # 250 requests/s cannot be served one at a time (10 ms each): only batching keeps up
    assert not result.saturated
    assert 2.0 < result.mean_batch["m"] <= 8.0
    assert result.utilisation["cpu"] < 1.0


def test_a_queue_that_cannot_keep_up_is_reported_saturated() -> None:
    result = simulate(
        [Stream("s", "m", 200.0)],
        [Batcher("m", "cpu", fixed(10.0))],
        {"cpu": 1},
        horizon_s=600,
        max_queued=2000,
    )
    assert result.saturated
    assert math.isinf(result.streams["s"].p99_ms)


def test_the_more_urgent_class_waits_less_on_a_shared_device() -> None:
    streams = [Stream("stat", "a", 30.0, priority=1), Stream("bulk", "b", 30.0, priority=4)]
    batchers = [Batcher("a", "cpu", fixed(12.0, "a")), Batcher("b", "cpu", fixed(12.0, "b"))]
    result = simulate(streams, batchers, {"cpu": 1}, horizon_s=600, seed=5)
    assert result.streams["stat"].mean_ms < result.streams["bulk"].mean_ms
    assert result.streams["stat"].p99_ms < result.streams["bulk"].p99_ms


def test_the_same_seed_gives_the_same_answer_and_another_a_different_one() -> None:
    def run(seed: int) -> float:
        curve = ServiceCurve("m", "cpu", "t", (CurvePoint(1, 8.0, 20.0),))
        return (
            simulate(
                [Stream("s", "m", 40.0)], [Batcher("m", "cpu", curve)], {"cpu": 1}, horizon_s=60, seed=seed
            )
            .streams["s"]
            .p99_ms
        )

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_the_overhead_is_added_to_every_request() -> None:
    args = ([Stream("s", "m", 5.0)], [Batcher("m", "cpu", fixed(10.0))], {"cpu": 1})
    plain = simulate(*args, horizon_s=200).streams["s"].mean_ms
    assert simulate(*args, horizon_s=200, overhead_ms=3.0).streams["s"].mean_ms == pytest.approx(plain + 3.0)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(InvalidInput, match="no batcher for model 'x'"):
        simulate([Stream("s", "x", 1.0)], [Batcher("m", "cpu", fixed(1.0))], {"cpu": 1}, horizon_s=10)
    with pytest.raises(InvalidInput, match="device 'gpu' has no execution slot"):
        simulate([], [Batcher("m", "gpu", fixed(1.0))], {"cpu": 1}, horizon_s=10)
    with pytest.raises(InvalidInput, match="positive number of seconds"):
        simulate([], [], {}, horizon_s=0)


def test_the_lognormal_fit_keeps_the_mean_and_the_p99() -> None:
    mu, sigma = lognormal_parameters(p50_ms=4.0, p99_ms=30.0, mean_ms=7.0)
    draws = np.exp(mu + sigma * np.random.default_rng(0).standard_normal(400_000))
    assert draws.mean() == pytest.approx(7.0, rel=0.02)
    assert np.percentile(draws, 99) == pytest.approx(30.0, rel=0.03)
    # without a mean (or one a log-normal cannot have), p50 and p99 are kept
    mu, sigma = lognormal_parameters(p50_ms=4.0, p99_ms=30.0, mean_ms=None)
    assert math.exp(mu) == pytest.approx(4.0)
    assert math.exp(mu + 2.3263478740408408 * sigma) == pytest.approx(30.0)
