"""Public holidays of England and Wales, computed from the rules of the Banking and Financial
Dealings Act 1971 as applied each year:

- New Year's Day, Christmas Day and Boxing Day, with a substitute weekday when one falls at a weekend
  (Christmas on a Saturday moves to Monday the 27th and Boxing Day to Tuesday the 28th);
- Good Friday and Easter Monday (Gregorian Easter);
- the early May bank holiday (first Monday of May), the spring bank holiday (last Monday of May) and
  the summer bank holiday (last Monday of August).

One-off holidays proclaimed for a single year (jubilees, coronations, state funerals) and moved
early-May holidays (1995, 2020) are not rules and are not in the calendar. The admissions of the
synthetic hospitals dip on these days, and the forecaster sees a flag for each day of its horizon.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np

FIRST_YEAR, LAST_YEAR = 1900, 3000
"""The years the calendar answers for."""

_SATURDAY, _SUNDAY = 5, 6


def easter_sunday(year: int) -> dt.date:
    """Gregorian Easter Sunday of ``year`` (the anonymous Gregorian computus, Meeus/Jones/Butcher)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _first_monday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(7 - first.weekday()) % 7)


def _last_monday(year: int, month: int) -> dt.date:
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    last = following - dt.timedelta(days=1)
    return last - dt.timedelta(days=last.weekday())


def _next_weekday_not_in(day: dt.date, taken: set[dt.date]) -> dt.date:
    while day.weekday() in (_SATURDAY, _SUNDAY) or day in taken:
        day += dt.timedelta(days=1)
    return day


@lru_cache(maxsize=256)
def bank_holidays(year: int) -> tuple[dt.date, ...]:
    """The bank holidays of England and Wales in ``year``, in date order.

    Today's rules are applied to every year asked for, including years before 1971 when the holidays
    were others. Raises ``ValueError`` for a year outside ``FIRST_YEAR``-``LAST_YEAR``."""
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"bank holidays are computed for the years {FIRST_YEAR}-{LAST_YEAR}, not {year}")
    easter = easter_sunday(year)
    days = {
        easter - dt.timedelta(days=2),
        easter + dt.timedelta(days=1),
        _first_monday(year, 5),
        _last_monday(year, 5),
        _last_monday(year, 8),
    }
    days.add(_next_weekday_not_in(dt.date(year, 1, 1), set()))
    christmas = _next_weekday_not_in(dt.date(year, 12, 25), set())
    days.add(christmas)
    days.add(_next_weekday_not_in(dt.date(year, 12, 26), {christmas}))
    return tuple(sorted(days))


def is_bank_holiday(days: np.ndarray) -> np.ndarray:
    """A boolean array, True where a ``datetime64[D]`` element of ``days`` is a bank holiday."""
    days = np.asarray(days, dtype="datetime64[D]")
    if days.size == 0:
        return np.zeros(days.shape, dtype=bool)
    first = int(days.min().astype("datetime64[Y]").astype(np.int64)) + 1970
    last = int(days.max().astype("datetime64[Y]").astype(np.int64)) + 1970
    holidays = np.array(
        [day for year in range(first, last + 1) for day in bank_holidays(year)], dtype="datetime64[D]"
    )
    return np.isin(days, holidays)
