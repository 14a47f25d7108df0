"""What a build of the example models says while it runs: one line per phase, a line every few
seconds while a model trains (step/total, loss, time left) and one when the model is done.

The lines go to the ``medserve.demo.models.progress`` logger at INFO; ``medserve examples build``
prints that logger to stderr, library callers see them only if they configure logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

PROGRESS_LOGGER = "medserve.demo.models.progress"
REPORT_EVERY_S = 10.0
"""Seconds between two progress lines of one model."""

_log = logging.getLogger(PROGRESS_LOGGER)


def duration(seconds: float) -> str:
    """``seconds`` for people: ``42 s``, ``3 min 05 s``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    return f"{whole // 60} min {whole % 60:02d} s"


def announce(model: str, message: str) -> None:
    """One line about ``model`` (a phase starting, data being prepared)."""
    _log.info("%s: %s", model, message)


class TrainingProgress:
    """Counts the steps of one model's training and reports them every ``every_s`` seconds:
    ``chest_xray_classifier: step 120/620 (19 %), loss 0.312, 41 s, about 2 min 51 s left``.

    The time left is the mean time per step so far times the steps left; ``weights`` lets steps of
    different cost (e.g. two image sizes) count in proportion."""

    def __init__(
        self,
        model: str,
        total: int,
        *,
        every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1:
            raise ValueError(f"{model}: a training needs at least one step, got {total}")
        self.model = model
        self.total = total
        self.done = 0
        self.every_s = every_s
        self._clock = clock
        self._started = clock()
        self._next = self._started + every_s
        self._work_done = 0.0
        self._work_total = float(total)

    def weigh(self, work_total: float) -> None:
        """Declare the whole training's cost in units of ``advance``'s ``work`` (default: steps)."""
        self._work_total = work_total

    def advance(self, *, loss: float | None = None, work: float = 1.0) -> None:
        """One step done (costing ``work``); report when ``every_s`` has passed since the last line."""
        self.done += 1
        self._work_done += work
        now = self._clock()
        if now >= self._next and self.done < self.total:
            self._next = now + self.every_s
            _log.info("%s", self.line(now, loss))

    def line(self, now: float, loss: float | None = None) -> str:
        elapsed = now - self._started
        share = self._work_done / self._work_total if self._work_total else 1.0
        left = elapsed * (1.0 - share) / share if share > 0 else float("nan")
        loss_text = f", loss {loss:.4f}" if loss is not None else ""
        eta = f"about {duration(left)} left" if left == left else "time left unknown"
        return (
            f"{self.model}: step {self.done}/{self.total} ({100 * self.done // self.total} %){loss_text}, "
            f"{duration(elapsed)}, {eta}"
        )

    @property
    def seconds(self) -> float:
        return self._clock() - self._started


class BuildClock:
    """Wall-clock and CPU seconds of this process since it was made (one model's build). On a busy
    machine the wall clock stretches; the CPU time says what the build costs on a quiet one."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self._cpu


def report_built(model: str, figures: Mapping[str, float], clock: BuildClock, profile: str) -> None:
    """The line that closes a model's build: its held-out figures and how long it took."""
    shown = ", ".join(f"{name} {value:.3f}" for name, value in figures.items())
    _log.info(
        "%s: built in %s (CPU %s, profile %s); held out: %s",
        model,
        duration(clock.wall_s),
        duration(clock.cpu_s),
        profile,
        shown,
    )
