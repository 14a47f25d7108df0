"""Per-patient stream state with Triton sequence semantics: start, resume, samples in order, end, expiry.

A stream is opened by a request carrying ``sequence_start`` and a ``sequence_id`` (a non-zero unsigned
64-bit integer or a non-empty string, as in Triton), continued by requests with the same id, and
closed by ``sequence_end`` or by staying idle longer than the timeout. A start for an id that is
still open *resumes* it with its state intact: a client that lost its connection reconnects, starts
again and resends from where it thinks it was; the per-sample sequence numbers make every resent
sample a DUPLICATE that is counted and dropped, so nothing is applied twice.

Per-sample sequence numbers start at 0 and rise by one. A number above the next expected one is
accepted and records a gap (the numbers skipped are *missing*). A number at or below the last
accepted one is dropped: OUT_OF_ORDER when it is a missing number arriving late, DUPLICATE when it
was accepted before. The callers apply a sample's payload only when ``accept`` says ACCEPTED.

Everything here is plain state on values: no clock, no I/O, no asyncio; the caller passes ``now`` in
seconds from one monotonic clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from numbers import Real
from typing import Any

import numpy as np

from medserve.streaming.ring_buffer import RingBuffer
from medserve.values.errors import InvalidInput, Overloaded

SequenceId = int | str
"""A Triton sequence id: a non-zero unsigned 64-bit integer, or a non-empty string."""

ECG_SAMPLE_RATE = 250
DEFAULT_ECG_CAPACITY = 30 * ECG_SAMPLE_RATE
"""30 s of single-lead ECG at 250 Hz."""

_MAX_UINT64 = 2**64 - 1
_REMEMBERED_EXPIRED_IDS = 1024


class UnknownSequence(InvalidInput):
    """A request names a sequence that is not open (never started, ended, or expired)."""

    def __init__(self, sequence_id: SequenceId, expired: bool = False) -> None:
        why = "expired (idle too long) and is no longer open" if expired else "is not open"
        super().__init__(f"sequence {sequence_id!r} {why}: send sequence_start first")
        self.sequence_id = sequence_id
        self.expired = expired


class TooManySessions(Overloaded):
    """Opening one more sequence would exceed the configured limit of open sequences."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many open sequences: the limit is {limit}; end a sequence or retry after one expires"
        )
        self.limit = limit


class InvalidSequenceId(InvalidInput):
    """A sequence id that is neither a non-zero unsigned 64-bit integer nor a non-empty string."""


def validate_sequence_id(sequence_id: object) -> SequenceId:
    """Return ``sequence_id`` when Triton would accept it; raise ``InvalidSequenceId`` otherwise."""
    if isinstance(sequence_id, str) and sequence_id:
        return sequence_id
    if isinstance(sequence_id, int) and not isinstance(sequence_id, bool) and 0 < sequence_id <= _MAX_UINT64:
        return sequence_id
    raise InvalidSequenceId(
        f"sequence_id must be a non-zero unsigned 64-bit integer or a non-empty string, got {sequence_id!r}"
    )


def _is_finite_number(value: object) -> bool:
    """A real number that is not a bool, NaN or infinite (NumPy scalars included)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_time(name: str, value: float) -> float:
    if not _is_finite_number(value):
        raise ValueError(f"{name} must be a finite time in seconds, got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class SampleVerdict(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True)
class SampleResult:
    """What ``accept`` decided; ``gap`` is how many numbers were skipped just before an accepted one."""

    verdict: SampleVerdict
    gap: int = 0


class SequenceState:
    """The state of one open sequence (one patient's stream)."""

    def __init__(
        self,
        sequence_id: SequenceId,
        now: float,
        ecg_capacity: int = DEFAULT_ECG_CAPACITY,
        max_tracked_gaps: int = 1024,
    ) -> None:
        self.sequence_id = sequence_id
        self.opened_at = _check_time("now", now)
        self.last_seen = self.opened_at
        self.last_sample_seq = -1
        self.accepted = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.gap_samples = 0
        self.gaps = 0
        self.vitals: dict[str, tuple[float, float]] = {}
        self.ecg = RingBuffer(_check_positive_int("ecg_capacity", ecg_capacity), np.float32)
        self.ecg_samples_since_window = 0
        self.resumed = 0
        self.max_tracked_gaps = _check_positive_int("max_tracked_gaps", max_tracked_gaps)
        # Missing numbers as half-open ranges [start, stop), in ascending order, the newest kept.
        # A number below every tracked range but not in one is read as a duplicate (most numbers are).
        self._missing_starts: deque[int] = deque()
        self._missing_stops: deque[int] = deque()

    def __repr__(self) -> str:
        return (
            f"SequenceState({self.sequence_id!r}, last_sample_seq={self.last_sample_seq}, "
            f"accepted={self.accepted}, duplicates={self.duplicates}, out_of_order={self.out_of_order}, "
            f"gaps={self.gaps}, gap_samples={self.gap_samples}, resumed={self.resumed})"
        )

    def accept(self, sample_seq: int, now: float) -> SampleResult:
        """Classify the sample numbered ``sample_seq``; apply its payload only when ACCEPTED.

        Raises ``InvalidInput`` for a number that is not a non-negative integer.
        """
        if isinstance(sample_seq, bool) or not isinstance(sample_seq, int) or sample_seq < 0:
            raise InvalidInput(f"sample sequence number must be a non-negative integer, got {sample_seq!r}")
        self.last_seen = _check_time("now", now)
        if sample_seq <= self.last_sample_seq:
            if self._is_missing(sample_seq):
                self.out_of_order += 1
                return SampleResult(SampleVerdict.OUT_OF_ORDER)
            self.duplicates += 1
            return SampleResult(SampleVerdict.DUPLICATE)
        gap = sample_seq - self.last_sample_seq - 1
        if gap:
            self.gaps += 1
            self.gap_samples += gap
            self._missing_starts.append(self.last_sample_seq + 1)
            self._missing_stops.append(sample_seq)
            if len(self._missing_starts) > self.max_tracked_gaps:
                self._missing_starts.popleft()
                self._missing_stops.popleft()
        self.last_sample_seq = sample_seq
        self.accepted += 1
        return SampleResult(SampleVerdict.ACCEPTED, gap)

    def _is_missing(self, sample_seq: int) -> bool:
        i = bisect_right(self._missing_starts, sample_seq) - 1
        return i >= 0 and sample_seq < self._missing_stops[i]

    def update_vitals(self, values: Mapping[str, float], t: float) -> list[str]:
        """Record each field's value measured at ``t``; return the fields updated.

        A field already holding a newer measurement keeps it (a late message never overwrites fresher
        data). Raises ``InvalidInput`` for a field name that is not a non-empty string or a value
        that is not a finite number; nothing is recorded then.
        """
        t = _check_time("t", t)
        checked: list[tuple[str, float]] = []
        for field, value in values.items():
            if not isinstance(field, str) or not field:
                raise InvalidInput(f"vital-sign names must be non-empty strings, got {field!r}")
            if not _is_finite_number(value):
                raise InvalidInput(f"vital sign {field!r} must be a finite number, got {value!r}")
            checked.append((field, float(value)))
        updated = []
        for field, number in checked:
            previous = self.vitals.get(field)
            if previous is None or previous[1] <= t:
                self.vitals[field] = (number, t)
                updated.append(field)
        return updated

    def vitals_older_than(self, now: float, max_age: float, required: Iterable[str] = ()) -> list[str]:
        """The fields whose latest value is more than ``max_age`` seconds old at ``now``.

        A value exactly ``max_age`` old is still fresh, one stamped in the future is fresh (as in
        ``clinical.vitals.validation.stale_fields``); fields in ``required`` never received are
        stale too. Order: ``vitals``' order, then ``required``'s.
        """
        now = _check_time("now", now)
        if not _is_finite_number(max_age) or max_age < 0:
            raise ValueError(f"max_age must be a finite, non-negative number of seconds, got {max_age!r}")
        stale = [field for field, (_, t) in self.vitals.items() if now - t > max_age]
        stale.extend(field for field in dict.fromkeys(required) if field not in self.vitals)
        return stale

    def append_ecg(self, samples: np.ndarray[Any, Any]) -> None:
        """Append ECG samples (1-D, oldest first) to the ring buffer and count them towards the hop."""
        self.ecg.append(samples)
        self.ecg_samples_since_window += int(np.shape(samples)[0])

    def take_ecg_window(self, window: int, hop: int) -> np.ndarray[Any, Any] | None:
        """The newest ``window`` samples once ``hop`` new ones arrived since the last window, or None.

        Needs at least ``window`` samples in the buffer; taking a window resets the hop counter. When
        several hops arrived at once, one window (the newest) is returned: windows are not back-filled.
        """
        _check_positive_int("window", window)
        _check_positive_int("hop", hop)
        if window > self.ecg.capacity:
            raise ValueError(f"window of {window} samples exceeds the ECG buffer of {self.ecg.capacity}")
        if self.ecg_samples_since_window < hop or len(self.ecg) < window:
            return None
        self.ecg_samples_since_window = 0
        return self.ecg.latest(window)


class SessionManager:
    """The open sequences of one model (or one door), bounded in number and expired when idle."""

    def __init__(
        self, max_sessions: int, idle_timeout_s: float, ecg_capacity: int = DEFAULT_ECG_CAPACITY
    ) -> None:
        self.max_sessions = _check_positive_int("max_sessions", max_sessions)
        if not _is_finite_number(idle_timeout_s) or idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be a finite, positive number, got {idle_timeout_s!r}")
        self.idle_timeout_s = float(idle_timeout_s)
        self.ecg_capacity = _check_positive_int("ecg_capacity", ecg_capacity)
        self._sessions: dict[SequenceId, SequenceState] = {}
        # Expired sessions found by start/get/end, kept for the next expire() to report (bounded).
        self._unreported: deque[SequenceState] = deque(maxlen=max_sessions)
        self._expired_ids: OrderedDict[SequenceId, None] = OrderedDict()
        self._started = 0
        self._resumed = 0
        self._ended = 0
        self._expired = 0
        self._refused = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _is_idle(self, state: SequenceState, now: float) -> bool:
        return now - state.last_seen > self.idle_timeout_s

    def _remove_expired(self, sequence_id: SequenceId) -> SequenceState:
        state = self._sessions.pop(sequence_id)
        self._expired += 1
        self._expired_ids[sequence_id] = None
        self._expired_ids.move_to_end(sequence_id)
        while len(self._expired_ids) > _REMEMBERED_EXPIRED_IDS:
            self._expired_ids.popitem(last=False)
        return state

    def _purge(self, now: float) -> None:
        idle = [sid for sid, state in self._sessions.items() if self._is_idle(state, now)]
        self._unreported.extend(self._remove_expired(sid) for sid in idle)

    def start(self, sequence_id: SequenceId, now: float) -> tuple[SequenceState, bool]:
        """Open ``sequence_id``, or resume it if still open; returns the state and whether it resumed.

        Expired sessions are purged first. Raises ``InvalidSequenceId`` for a bad id and
        ``TooManySessions`` when a new session would exceed ``max_sessions`` (open ones are untouched).
        """
        sequence_id = validate_sequence_id(sequence_id)
        now = _check_time("now", now)
        self._purge(now)
        state = self._sessions.get(sequence_id)
        if state is not None:
            state.resumed += 1
            state.last_seen = now
            self._resumed += 1
            return state, True
        if len(self._sessions) >= self.max_sessions:
            self._refused += 1
            raise TooManySessions(self.max_sessions)
        state = SequenceState(sequence_id, now, ecg_capacity=self.ecg_capacity)
        self._sessions[sequence_id] = state
        self._expired_ids.pop(sequence_id, None)
        self._started += 1
        return state, False

    def _open(self, sequence_id: SequenceId, now: float) -> SequenceState:
        sequence_id = validate_sequence_id(sequence_id)
        state = self._sessions.get(sequence_id)
        if state is None:
            raise UnknownSequence(sequence_id, expired=sequence_id in self._expired_ids)
        if self._is_idle(state, now):
            self._unreported.append(self._remove_expired(sequence_id))
            raise UnknownSequence(sequence_id, expired=True)
        return state

    def get(self, sequence_id: SequenceId, now: float) -> SequenceState:
        """The open state of ``sequence_id``, touched at ``now``; ``UnknownSequence`` if not open."""
        now = _check_time("now", now)
        state = self._open(sequence_id, now)
        state.last_seen = now
        return state

    def end(self, sequence_id: SequenceId, now: float) -> SequenceState:
        """Close ``sequence_id`` and return its final state; ``UnknownSequence`` if not open."""
        now = _check_time("now", now)
        state = self._open(sequence_id, now)
        state.last_seen = now
        del self._sessions[state.sequence_id]
        self._ended += 1
        return state

    def expire(self, now: float) -> list[SequenceState]:
        """Remove sessions idle longer than the timeout; return them, and any expired since last call."""
        self._purge(_check_time("now", now))
        expired = list(self._unreported)
        self._unreported.clear()
        return expired

    def stats(self) -> dict[str, int]:
        """Counters since creation, and how many sessions are open now."""
        return {
            "open": len(self._sessions),
            "started": self._started,
            "resumed": self._resumed,
            "ended": self._ended,
            "expired": self._expired,
            "refused": self._refused,
        }
