"""Forecast origins: the days of a site from which a forecast can be made, with their history.

An origin is a site's day whose trailing window (``WINDOW_DAYS`` days ending on it) holds a usable
record for every day. Records must come grouped by site (each site's rows together, in any site
order) and sorted by date within a site; one rolling window is kept, for the site being read, so
memory does not grow with the series. Rows that break that order, or that leave a hole in the
history, are problems, each reported once at the row that shows it:

- a duplicate date (the first row of that day is kept) or a date earlier than the site's previous
  one: the row is left out and the history goes on;
- a gap of missing days: the row is reported and the history restarts at it, so the next origin is
  ``WINDOW_DAYS - 1`` days later;
- a row the reader could not use (bad value, missing date...): the history restarts after it;
- a row of a site that already ended, further down the table: left out (a row whose site cell is
  empty is taken as a bad row of the site being read).

``origins="all"`` gives every origin (a backtest over the whole series); ``origins="last"`` gives
only each site's last row, the forecast wanted for the coming week, and when that row is no origin
(its history is incomplete, or it is a problem) the reason comes in its place. Problems and origins
come in row order either way.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from medserve.clinical.operations.series_reader import DailyRecord, RecordProblem

WINDOW_DAYS = 28
"""Days of history behind each forecast (four whole weeks)."""

HORIZON_DAYS = 7
"""Days forecast after each origin."""

OriginMode = Literal["all", "last"]

_MAX_DEFERRED = 10_000
"""In ``last`` mode, stray rows of other sites wait behind the current site's last row; past this
many the current site is taken to have ended."""


@dataclass(frozen=True)
class ForecastOrigin:
    """A site's day with a complete window of history behind it."""

    row: int
    locator: str
    site: str
    date: dt.date
    """The origin: the last day of history; the forecast is for the ``HORIZON_DAYS`` days after it."""
    admissions: np.ndarray
    """float64 ``(window,)``, the oldest day first, ending on ``date``."""
    occupancy: np.ndarray


@dataclass(frozen=True)
class _Incomplete:
    """A usable row whose window is not yet complete (history only)."""

    row: int
    locator: str
    site: str
    date: dt.date
    days: int


_Outcome = ForecastOrigin | RecordProblem | _Incomplete


class _SiteHistory:
    """The rolling window of the site being read."""

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self.window = window
        self.last_date: dt.date | None = None
        self.unknown_day = False  # the previous row's date could not be read
        self.admissions: deque[float] = deque(maxlen=window)
        self.occupancy: deque[float] = deque(maxlen=window)

    def take(self, record: DailyRecord | RecordProblem) -> _Outcome:
        if isinstance(record, RecordProblem):
            return self._take_problem(record)
        date, last = record.date, self.last_date
        problem = None
        if last is not None:
            step = (date - last).days
            if step == 0:
                return self._problem(record, f"duplicate date {date} for site {self.name!r} (first row kept)")
            if step < 0:
                return self._problem(
                    record,
                    f"date {date} is out of order: it follows {last} for site {self.name!r}, and rows must "
                    "be sorted by date within a site",
                )
            if step > 1 and not self.unknown_day:
                self._restart()
                problem = self._problem(
                    record,
                    f"gap: {step - 1} missing day(s) for site {self.name!r} between {last} and {date}; "
                    f"history restarts here ({self.window} consecutive days are needed for a forecast)",
                )
        self.unknown_day = False
        self.last_date = date
        self.admissions.append(record.admissions)
        self.occupancy.append(record.occupancy)
        if problem is not None:
            return problem
        if len(self.admissions) < self.window:
            return _Incomplete(record.row, record.locator, self.name, date, len(self.admissions))
        return ForecastOrigin(
            record.row,
            record.locator,
            self.name,
            date,
            np.array(self.admissions, dtype=np.float64),
            np.array(self.occupancy, dtype=np.float64),
        )

    def _take_problem(self, problem: RecordProblem) -> RecordProblem:
        if problem.date is not None and self.last_date is not None and problem.date <= self.last_date:
            return problem  # a bad copy of a day already read (or out of order): history unaffected
        self._restart()
        if problem.date is None:
            self.unknown_day = True
        else:
            self.last_date = problem.date
            self.unknown_day = False
        return problem

    def _restart(self) -> None:
        self.admissions.clear()
        self.occupancy.clear()

    def _problem(self, record: DailyRecord, reason: str) -> RecordProblem:
        return RecordProblem(record.row, record.locator, reason, record.site, record.date)


def forecast_origins(
    records: Iterable[DailyRecord | RecordProblem],
    *,
    origins: OriginMode = "all",
    window: int = WINDOW_DAYS,
) -> Iterator[ForecastOrigin | RecordProblem]:
    """The origins and the problems of ``records`` (from ``HospitalSeriesReader.records``), in row
    order. Raises ``ValueError`` for an unknown ``origins`` or a ``window`` below 1."""
    if origins not in ("all", "last"):
        raise ValueError(f"origins must be 'all' or 'last', not {origins!r}")
    if window < 1:
        raise ValueError(f"the history window must be at least one day, not {window}")
    return _Tracker(origins == "last", window).run(records)


class _Tracker:
    def __init__(self, last_only: bool, window: int) -> None:
        self.last_only = last_only
        self.window = window
        self.current: _SiteHistory | None = None
        self.finished: set[str] = set()
        self.pending: _Outcome | None = None  # last mode: the outcome of the current site's latest row
        self.deferred: list[RecordProblem] = []  # last mode: stray problems behind ``pending``

    def run(self, records: Iterable[DailyRecord | RecordProblem]) -> Iterator[ForecastOrigin | RecordProblem]:
        for record in records:
            site = record.site
            if site is None and self.current is not None:
                site = self.current.name
                record = replace(record, site=site)
            if site is None:  # only a problem row can lack a site
                yield from self._stray(_as_problem(record, "missing site"))
            elif self.current is not None and site == self.current.name:
                yield from self._outcome(self.current.take(record))
            elif site in self.finished:
                after = f"site {self.current.name!r}" if self.current is not None else "other sites"
                reason = f"site {site!r} appears again after {after}: rows must be grouped by site"
                if isinstance(record, RecordProblem):
                    reason = f"{record.reason}; {reason}"
                yield from self._stray(RecordProblem(record.row, record.locator, reason, site, record.date))
            else:
                yield from self._close_site()
                self.current = _SiteHistory(site, self.window)
                yield from self._outcome(self.current.take(record))
        yield from self._close_site()

    def _outcome(self, outcome: _Outcome) -> Iterator[ForecastOrigin | RecordProblem]:
        if not self.last_only:
            if not isinstance(outcome, _Incomplete):
                yield outcome
            return
        if isinstance(self.pending, RecordProblem):
            yield self.pending  # a problem that turned out not to be the site's last row
        yield from self.deferred
        self.deferred.clear()
        self.pending = outcome

    def _stray(self, problem: RecordProblem) -> Iterator[ForecastOrigin | RecordProblem]:
        if not self.last_only or self.pending is None:
            yield problem
            return
        self.deferred.append(problem)
        if len(self.deferred) > _MAX_DEFERRED:
            yield from self._close_site()

    def _close_site(self) -> Iterator[ForecastOrigin | RecordProblem]:
        if self.current is not None:
            self.finished.add(self.current.name)
            self.current = None
        last, self.pending = self.pending, None
        if isinstance(last, _Incomplete):
            yield RecordProblem(
                last.row,
                last.locator,
                f"no forecast for site {last.site!r}: its last day {last.date} has {last.days} consecutive "
                f"usable day(s) of history, {self.window} needed",
                last.site,
                last.date,
            )
        elif last is not None:
            yield last
        yield from self.deferred
        self.deferred.clear()


def _as_problem(record: DailyRecord | RecordProblem, reason: str) -> RecordProblem:
    if isinstance(record, RecordProblem):
        return record
    return RecordProblem(record.row, record.locator, reason, record.site, record.date)
