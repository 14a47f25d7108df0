"""RingBuffer: wrap-around, appends larger than capacity, chronological order of latest()."""

from __future__ import annotations

import numpy as np
import pytest

from medserve.streaming.ring_buffer import RingBuffer


def test_empty_buffer() -> None:
    buf = RingBuffer(4)
    assert len(buf) == 0
    assert buf.total == 0
    assert buf.latest(0).shape == (0,)
    with pytest.raises(ValueError, match="holds 0"):
        buf.latest(1)


def test_fill_without_wrap_keeps_order() -> None:
    buf = RingBuffer(5)
    buf.append(np.array([1.0, 2.0]))
    buf.append(np.array([3.0]))
    assert len(buf) == 3
    assert buf.latest(3).tolist() == [1.0, 2.0, 3.0]
    assert buf.latest(2).tolist() == [2.0, 3.0]
    assert buf.latest(3).dtype == np.float32


def test_wrap_around_keeps_newest_in_chronological_order() -> None:
    buf = RingBuffer(5)
    buf.append(np.arange(4))  # 0..3
    buf.append(np.arange(4, 7))  # 4..6 wraps: holds 2..6
    assert len(buf) == 5
    assert buf.total == 7
    assert buf.latest(5).tolist() == [2, 3, 4, 5, 6]
    assert buf.latest(3).tolist() == [4, 5, 6]
    buf.append(np.arange(7, 10))
    assert buf.latest(5).tolist() == [5, 6, 7, 8, 9]


def test_append_exactly_capacity_and_larger_keeps_newest() -> None:
    buf = RingBuffer(4)
    buf.append(np.arange(3))
    buf.append(np.arange(10, 14))  # exactly capacity
    assert buf.latest(4).tolist() == [10, 11, 12, 13]
    buf.append(np.arange(100, 110))  # larger than capacity
    assert len(buf) == 4
    assert buf.total == 3 + 4 + 10
    assert buf.latest(4).tolist() == [106, 107, 108, 109]
    buf.append(np.array([200.0]))
    assert buf.latest(4).tolist() == [107, 108, 109, 200]


def test_many_small_appends_match_reference() -> None:
    rng = np.random.default_rng(7)
    buf = RingBuffer(37, dtype=np.float64)
    stream: list[float] = []
    for _ in range(200):
        chunk = rng.normal(size=int(rng.integers(0, 60)))
        buf.append(chunk)
        stream.extend(chunk.tolist())
        held = min(len(stream), 37)
        assert len(buf) == held
        n = int(rng.integers(0, held + 1))
        np.testing.assert_array_equal(buf.latest(n), np.array(stream[len(stream) - n :]))
    assert buf.total == len(stream)


def test_latest_returns_a_copy() -> None:
    buf = RingBuffer(3)
    buf.append(np.array([1.0, 2.0, 3.0]))
    out = buf.latest(3)
    out[:] = 0
    assert buf.latest(3).tolist() == [1.0, 2.0, 3.0]


def test_latest_more_than_held_raises() -> None:
    buf = RingBuffer(10)
    buf.append(np.ones(3))
    with pytest.raises(ValueError, match="latest 4 samples but the buffer holds 3"):
        buf.latest(4)
    with pytest.raises(ValueError):
        buf.latest(-1)


def test_clear_forgets_samples_but_total_keeps_counting() -> None:
    buf = RingBuffer(3)
    buf.append(np.arange(5))
    buf.clear()
    assert len(buf) == 0
    assert buf.total == 5
    buf.append(np.array([9.0]))
    assert buf.latest(1).tolist() == [9.0]


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True])
def test_bad_capacity(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(capacity)  # type: ignore[arg-type]


def test_rejects_non_1d_and_lossy_dtype() -> None:
    buf = RingBuffer(4)
    with pytest.raises(ValueError, match="1-D"):
        buf.append(np.ones((2, 2)))
    ints = RingBuffer(4, dtype=np.int16)
    with pytest.raises(ValueError, match="cannot store float64"):
        ints.append(np.array([1.5]))
    assert len(buf) == 0 and len(ints) == 0
