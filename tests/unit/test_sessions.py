"""Per-patient stream state: sample ordering, resume after reconnect, expiry, limits, ECG windows, vitals."""

from __future__ import annotations

import numpy as np
import pytest

from medserve.streaming.sessions import (
    DEFAULT_ECG_CAPACITY,
    InvalidSequenceId,
    SampleResult,
    SampleVerdict,
    SequenceState,
    SessionManager,
    TooManySessions,
    UnknownSequence,
)
from medserve.values.errors import InvalidInput, Overloaded

ACCEPTED = SampleVerdict.ACCEPTED
DUPLICATE = SampleVerdict.DUPLICATE
OUT_OF_ORDER = SampleVerdict.OUT_OF_ORDER


def counters(state: SequenceState) -> tuple[int, int, int, int, int]:
    return state.accepted, state.duplicates, state.out_of_order, state.gaps, state.gap_samples


# --- sample ordering ---------------------------------------------------------------------------


def test_in_order_samples_are_accepted() -> None:
    state = SequenceState("bed-1", now=0.0)
    assert state.last_sample_seq == -1
    for seq in range(5):
        assert state.accept(seq, now=float(seq)) == SampleResult(ACCEPTED, 0)
    assert counters(state) == (5, 0, 0, 0, 0)
    assert state.last_sample_seq == 4
    assert state.last_seen == 4.0


def test_duplicates_out_of_order_and_gaps_counted_exactly() -> None:
    state = SequenceState(7, now=0.0)
    verdicts = [(seq, state.accept(seq, now=1.0)) for seq in [0, 1, 2, 5, 3, 5, 2, 9, 4, 6, 10, 7, 0]]
    assert verdicts == [
        (0, SampleResult(ACCEPTED)),
        (1, SampleResult(ACCEPTED)),
        (2, SampleResult(ACCEPTED)),
        (5, SampleResult(ACCEPTED, gap=2)),  # 3, 4 missing
        (3, SampleResult(OUT_OF_ORDER)),  # missing number arriving late: dropped
        (5, SampleResult(DUPLICATE)),
        (2, SampleResult(DUPLICATE)),
        (9, SampleResult(ACCEPTED, gap=3)),  # 6, 7, 8 missing
        (4, SampleResult(OUT_OF_ORDER)),
        (6, SampleResult(OUT_OF_ORDER)),
        (10, SampleResult(ACCEPTED)),
        (7, SampleResult(OUT_OF_ORDER)),
        (0, SampleResult(DUPLICATE)),
    ]
    assert counters(state) == (6, 3, 4, 2, 5)
    assert state.last_sample_seq == 10


def test_first_sample_above_zero_is_a_gap() -> None:
    state = SequenceState("x", now=0.0)
    assert state.accept(3, now=0.0) == SampleResult(ACCEPTED, gap=3)
    assert state.accept(1, now=0.0).verdict is OUT_OF_ORDER
    assert counters(state) == (1, 0, 1, 1, 3)


def test_a_late_sample_repeated_stays_out_of_order_and_is_never_applied() -> None:
    state = SequenceState("x", now=0.0)
    state.accept(0, 0.0)
    state.accept(2, 0.0)
    assert state.accept(1, 0.0).verdict is OUT_OF_ORDER
    assert state.accept(1, 0.0).verdict is OUT_OF_ORDER
    assert counters(state) == (2, 0, 2, 1, 1)


def test_gap_tracking_is_bounded() -> None:
    state = SequenceState("x", now=0.0, max_tracked_gaps=2)
    for seq in (0, 2, 4, 6):  # gaps at 1, 3, 5; only 3 and 5 are remembered
        state.accept(seq, 0.0)
    assert state.accept(5, 0.0).verdict is OUT_OF_ORDER
    assert state.accept(3, 0.0).verdict is OUT_OF_ORDER
    assert state.accept(1, 0.0).verdict is DUPLICATE  # forgotten gap: read as already seen
    assert state.gaps == 3 and state.gap_samples == 3


@pytest.mark.parametrize("seq", [-1, 1.0, True, "3"])
def test_bad_sample_numbers_are_invalid_input(seq: object) -> None:
    state = SequenceState("x", now=0.0)
    with pytest.raises(InvalidInput, match="sample sequence number"):
        state.accept(seq, now=0.0)  # type: ignore[arg-type]
    assert counters(state) == (0, 0, 0, 0, 0)


# --- session lifecycle -------------------------------------------------------------------------


def test_start_get_end() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    state, resumed = manager.start("bed-1", now=100.0)
    assert not resumed
    assert (state.sequence_id, state.opened_at, state.last_seen, state.resumed) == ("bed-1", 100.0, 100.0, 0)
    assert len(state.ecg) == 0 and state.ecg.capacity == DEFAULT_ECG_CAPACITY == 7500
    assert len(manager) == 1
    assert manager.get("bed-1", now=105.0) is state
    assert state.last_seen == 105.0
    assert manager.end("bed-1", now=106.0) is state
    assert len(manager) == 0
    with pytest.raises(UnknownSequence, match="is not open: send sequence_start first"):
        manager.get("bed-1", now=107.0)
    assert manager.stats() == {"open": 0, "started": 1, "resumed": 0, "ended": 1, "expired": 0, "refused": 0}


def test_unknown_sequence_without_start() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    message = r"sequence 'nope' is not open: send sequence_start first"
    with pytest.raises(UnknownSequence, match=message) as info:
        manager.get("nope", now=0.0)
    assert isinstance(info.value, InvalidInput)
    assert not info.value.expired
    with pytest.raises(UnknownSequence, match="sequence 42 is not open"):
        manager.end(42, now=0.0)


def test_resume_after_dropped_connection_counts_resent_samples_as_duplicates() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=30.0)
    state, resumed = manager.start(1001, now=0.0)
    applied: list[int] = []

    def send(seq: int, now: float) -> SampleVerdict:
        session = manager.get(1001, now)
        result = session.accept(seq, now)
        if result.verdict is ACCEPTED:
            applied.append(seq)
            session.append_ecg(np.full(10, seq, dtype=np.float32))
        return result.verdict

    for seq in range(6):
        send(seq, now=float(seq))
    # Connection drops after the server applied 0..5; the client saw acks only up to 3.
    again, resumed = manager.start(1001, now=20.0)  # within the timeout
    assert resumed and again is state and state.resumed == 1
    resent = [send(seq, now=21.0 + seq) for seq in range(4, 9)]
    assert resent == [DUPLICATE, DUPLICATE, ACCEPTED, ACCEPTED, ACCEPTED]
    assert applied == list(range(9))  # nothing applied twice
    assert state.ecg.total == 90 and state.ecg.latest(20).tolist() == [7.0] * 10 + [8.0] * 10
    assert counters(state) == (9, 2, 0, 0, 0)
    assert manager.stats()["resumed"] == 1 and manager.stats()["started"] == 1


def test_start_after_expiry_opens_a_fresh_session() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    old, _ = manager.start("bed-1", now=0.0)
    old.accept(0, now=0.0)
    new, resumed = manager.start("bed-1", now=10.5)
    assert not resumed and new is not old and new.last_sample_seq == -1
    assert manager.expire(now=10.5) == [old]  # reported once
    assert manager.expire(now=10.5) == []


def test_idle_exactly_the_timeout_is_still_open() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    state, _ = manager.start("a", now=0.0)
    assert manager.get("a", now=10.0) is state
    assert manager.expire(now=20.0) == []
    assert manager.expire(now=20.001) == [state]


def test_expire_removes_idle_sessions_and_returns_them() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    a, _ = manager.start("a", now=0.0)
    b, _ = manager.start("b", now=0.0)
    c, _ = manager.start("c", now=5.0)
    manager.get("b", now=8.0)  # touched: stays open longer
    assert manager.expire(now=12.0) == [a]
    assert len(manager) == 2
    assert manager.expire(now=18.5) == [b, c]
    assert len(manager) == 0
    assert manager.stats()["expired"] == 3


def test_get_on_an_expired_session_removes_it_and_says_it_expired() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    state, _ = manager.start("bed-9", now=0.0)
    with pytest.raises(UnknownSequence, match="'bed-9' expired .* send sequence_start first") as info:
        manager.get("bed-9", now=11.0)
    assert info.value.expired
    assert len(manager) == 0
    with pytest.raises(UnknownSequence, match="expired"):  # still says so afterwards
        manager.end("bed-9", now=12.0)
    assert manager.expire(now=12.0) == [state]
    assert manager.stats()["expired"] == 1


def test_sessions_purged_by_start_are_reported_by_expire() -> None:
    manager = SessionManager(max_sessions=1, idle_timeout_s=10.0)
    a, _ = manager.start("a", now=0.0)
    b, _ = manager.start("b", now=20.0)  # a expired: purged first, so b fits under the limit
    assert manager.expire(now=20.0) == [a]
    with pytest.raises(UnknownSequence, match="'a' expired"):
        manager.get("a", now=20.0)
    assert manager.get("b", now=21.0) is b


def test_too_many_sessions_refused_while_existing_ones_still_work() -> None:
    manager = SessionManager(max_sessions=2, idle_timeout_s=10.0)
    a, _ = manager.start("a", now=0.0)
    b, _ = manager.start("b", now=0.0)
    a.accept(0, now=0.0)
    with pytest.raises(TooManySessions, match="limit is 2") as info:
        manager.start("c", now=1.0)
    assert isinstance(info.value, Overloaded)
    assert len(manager) == 2
    assert manager.get("a", now=2.0) is a and a.accept(1, now=2.0).verdict is ACCEPTED
    assert manager.start("b", now=2.0) == (b, True)  # resuming an open one is not refused
    with pytest.raises(UnknownSequence):
        manager.get("c", now=2.0)
    manager.end("a", now=3.0)
    c, resumed = manager.start("c", now=3.0)
    assert not resumed
    assert manager.stats() == {"open": 2, "started": 3, "resumed": 1, "ended": 1, "expired": 0, "refused": 1}


@pytest.mark.parametrize("bad", [0, -5, 2**64, "", None, True, 1.5, b"id"])
def test_invalid_sequence_ids(bad: object) -> None:
    manager = SessionManager(max_sessions=2, idle_timeout_s=10.0)
    with pytest.raises(InvalidSequenceId, match="non-zero unsigned 64-bit integer or a non-empty string"):
        manager.start(bad, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidSequenceId):
        manager.get(bad, now=0.0)  # type: ignore[arg-type]
    assert manager.stats()["started"] == 0


def test_int_and_string_ids_are_distinct() -> None:
    manager = SessionManager(max_sessions=4, idle_timeout_s=10.0)
    as_int, _ = manager.start(5, now=0.0)
    as_str, resumed = manager.start("5", now=0.0)
    assert not resumed and as_int is not as_str
    assert manager.start(2**64 - 1, now=0.0)[1] is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_sessions": 0, "idle_timeout_s": 1.0}, "max_sessions"),
        ({"max_sessions": 1, "idle_timeout_s": 0.0}, "idle_timeout_s"),
        ({"max_sessions": 1, "idle_timeout_s": float("inf")}, "idle_timeout_s"),
        ({"max_sessions": 1, "idle_timeout_s": 1.0, "ecg_capacity": 0}, "ecg_capacity"),
    ],
)
def test_manager_settings_are_validated(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SessionManager(**kwargs)  # type: ignore[arg-type]


def test_non_finite_now_is_rejected() -> None:
    manager = SessionManager(max_sessions=1, idle_timeout_s=1.0)
    with pytest.raises(ValueError, match="now"):
        manager.start("a", now=float("nan"))


# --- ECG windows -------------------------------------------------------------------------------


def test_ecg_windowing_with_hop() -> None:
    state = SequenceState("ecg", now=0.0, ecg_capacity=1000)
    window, hop = 500, 250
    state.append_ecg(np.arange(400, dtype=np.float32))
    assert state.take_ecg_window(window, hop) is None  # fewer than window samples held
    state.append_ecg(np.arange(400, 500, dtype=np.float32))
    first = state.take_ecg_window(window, hop)
    assert first is not None and first.tolist() == list(range(500))
    assert state.ecg_samples_since_window == 0
    assert state.take_ecg_window(window, hop) is None  # no new samples
    state.append_ecg(np.arange(500, 749, dtype=np.float32))
    assert state.take_ecg_window(window, hop) is None  # 249 < hop
    state.append_ecg(np.array([749.0], dtype=np.float32))
    second = state.take_ecg_window(window, hop)
    assert second is not None and second.tolist() == list(range(250, 750))
    state.append_ecg(np.arange(750, 1600, dtype=np.float32))  # several hops at once: one, newest window
    third = state.take_ecg_window(window, hop)
    assert third is not None and third.tolist() == list(range(1100, 1600))
    assert state.take_ecg_window(window, hop) is None
    assert state.ecg.total == 1600 and len(state.ecg) == 1000


def test_ecg_window_is_a_copy_and_arguments_are_checked() -> None:
    state = SequenceState("ecg", now=0.0, ecg_capacity=10)
    state.append_ecg(np.ones(10, dtype=np.float32))
    out = state.take_ecg_window(4, 1)
    assert out is not None
    out[:] = 0
    assert state.ecg.latest(4).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="exceeds the ECG buffer"):
        state.take_ecg_window(11, 1)
    with pytest.raises(ValueError, match="hop"):
        state.take_ecg_window(4, 0)


# --- vitals ------------------------------------------------------------------------------------


def test_vitals_staleness() -> None:
    state = SequenceState("v", now=0.0)
    assert state.update_vitals({"pulse": 80, "spo2": 97.0}, t=100.0) == ["pulse", "spo2"]
    state.update_vitals({"respiration_rate": 16.0}, t=150.0)
    assert state.vitals == {"pulse": (80.0, 100.0), "spo2": (97.0, 100.0), "respiration_rate": (16.0, 150.0)}
    assert state.vitals_older_than(now=160.0, max_age=60.0) == []
    assert state.vitals_older_than(now=160.0, max_age=60.0, required=["temperature"]) == ["temperature"]
    assert state.vitals_older_than(now=161.0, max_age=60.0) == ["pulse", "spo2"]
    assert state.vitals_older_than(now=300.0, max_age=60.0) == ["pulse", "spo2", "respiration_rate"]
    state.update_vitals({"pulse": 90.0}, t=290.0)
    assert state.vitals_older_than(now=300.0, max_age=60.0) == ["spo2", "respiration_rate"]


def test_late_vitals_never_overwrite_newer_ones() -> None:
    state = SequenceState("v", now=0.0)
    state.update_vitals({"pulse": 90.0}, t=200.0)
    assert state.update_vitals({"pulse": 70.0, "spo2": 95.0}, t=150.0) == ["spo2"]
    assert state.vitals["pulse"] == (90.0, 200.0)


@pytest.mark.parametrize("values", [{"pulse": float("nan")}, {"pulse": "80"}, {"": 1.0}, {"pulse": True}])
def test_bad_vitals_are_invalid_input_and_record_nothing(values: dict[str, float]) -> None:
    state = SequenceState("v", now=0.0)
    with pytest.raises(InvalidInput):
        state.update_vitals({"spo2": 97.0, **values}, t=1.0)
    assert state.vitals == {}
