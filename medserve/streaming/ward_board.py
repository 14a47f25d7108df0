"""The ward board: each monitored bed's latest NEWS2 with its recent trend and its ECG rhythm, as the
console's Ward page shows them. The patient monitor writes to it as samples are scored."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from medserve.streaming.messages import SequenceId


@dataclass
class Bed:
    sequence_id: SequenceId
    news2: int | None = None
    risk: str = ""
    trend: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=30))
    """(sample time, NEWS2): one value per trend step, oldest first."""
    rhythm: str = ""
    rhythm_probability: float | None = None
    updated_at: float = 0.0
    """Wall-clock time of the bed's last score or rhythm."""
    open: bool = True

    @property
    def change(self) -> int:
        """NEWS2 now minus the oldest value of the trend (0 without a trend)."""
        if self.news2 is None or not self.trend:
            return 0
        return self.news2 - self.trend[0][1]


class WardBoard:
    """Beds by sequence id; a closed stream's bed stays, marked closed, until ``max_beds`` pushes it out.

    ``trend_step_s``: the trend keeps one NEWS2 per this many seconds of sample time (30 values)."""

    def __init__(
        self, trend_step_s: float = 60.0, max_beds: int = 2000, clock: Callable[[], float] = time.time
    ) -> None:
        self.trend_step_s = trend_step_s
        self.max_beds = max_beds
        self._clock = clock
        self._beds: dict[SequenceId, Bed] = {}
        self._lock = threading.Lock()

    def _bed(self, sequence_id: SequenceId) -> Bed:
        bed = self._beds.get(sequence_id)
        if bed is None:
            if len(self._beds) >= self.max_beds:
                closed = [b.sequence_id for b in self._beds.values() if not b.open]
                victim = min(closed or self._beds, key=lambda s: self._beds[s].updated_at)
                del self._beds[victim]
            bed = self._beds[sequence_id] = Bed(sequence_id)
        bed.open = True
        bed.updated_at = self._clock()
        return bed

    def score(self, sequence_id: SequenceId, news2: int, risk: str, sample_time: float) -> None:
        with self._lock:
            bed = self._bed(sequence_id)
            bed.news2, bed.risk = news2, risk
            if not bed.trend or sample_time - bed.trend[-1][0] >= self.trend_step_s:
                bed.trend.append((sample_time, news2))

    def rhythm(self, sequence_id: SequenceId, label: str, probability: float) -> None:
        with self._lock:
            bed = self._bed(sequence_id)
            bed.rhythm, bed.rhythm_probability = label, probability

    def close(self, sequence_id: SequenceId) -> None:
        with self._lock:
            bed = self._beds.get(sequence_id)
            if bed is not None:
                bed.open = False

    def beds(self) -> list[Bed]:
        """Copies of the beds, open ones first, the highest NEWS2 first."""
        with self._lock:
            copies = [
                Bed(
                    b.sequence_id,
                    b.news2,
                    b.risk,
                    deque(b.trend, maxlen=30),
                    b.rhythm,
                    b.rhythm_probability,
                    b.updated_at,
                    b.open,
                )
                for b in self._beds.values()
            ]
        return sorted(
            copies, key=lambda b: (not b.open, -(b.news2 if b.news2 is not None else -1), str(b.sequence_id))
        )
