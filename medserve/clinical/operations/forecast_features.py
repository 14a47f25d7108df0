"""The forecaster's input vector for one origin, and the scales that turn its output back into units.

For an origin ``t`` with history ``t-27 .. t`` (``WINDOW_DAYS``) and target days ``t+1 .. t+7``
(``HORIZON_DAYS``), the ``FEATURE_COUNT`` = 72 features are, in order:

- 28 admissions, oldest first, divided by the admissions scale;
- 28 midnight occupancies, oldest first, divided by the occupancy scale;
- 7: the weekday of the first target day (Monday first), one-hot; the other target days follow it;
- 2: sine and cosine of the first target day's day of the year (``2 pi doy / 365.25``);
- 7: 1 where the target day ``t+h`` is a bank holiday in England and Wales, for ``h`` = 1..7.

A scale is the mean of its window, at least 1 (a window of zeros keeps scale 1), so sites of any size
look alike to the model; the model forecasts in the same scaled units and ``ForecastOrigin`` values
are recovered by multiplying by the scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medserve.clinical.operations.bank_holidays import is_bank_holiday
from medserve.clinical.operations.forecast_origins import HORIZON_DAYS, WINDOW_DAYS, ForecastOrigin

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"admissions_t-{WINDOW_DAYS - 1 - i}" for i in range(WINDOW_DAYS)),
    *(f"occupancy_t-{WINDOW_DAYS - 1 - i}" for i in range(WINDOW_DAYS)),
    *(f"target_weekday_{day}" for day in WEEKDAYS),
    "target_day_of_year_sin",
    "target_day_of_year_cos",
    *(f"holiday_t+{h}" for h in range(1, HORIZON_DAYS + 1)),
)
"""Names of the features, in the order of the vector (``t-0`` is the origin day)."""

FEATURE_COUNT = len(FEATURE_NAMES)

TARGETS = ("admissions", "occupancy")
"""The forecast targets, in the order of the model's first output axis."""


def window_scales(admissions: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` float64 scales (admissions, occupancy): each window's mean, at least 1."""
    means = np.stack([np.mean(admissions, axis=1), np.mean(occupancy, axis=1)], axis=1)
    scales: np.ndarray = np.maximum(means, 1.0)
    return scales


def forecast_features(
    origin_dates: np.ndarray, admissions: np.ndarray, occupancy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(n, FEATURE_COUNT)`` float32 and scales ``(n, 2)`` float64 for ``n`` origins.

    ``origin_dates`` are ``datetime64[D]`` (or convertible) of shape ``(n,)``; ``admissions`` and
    ``occupancy`` are ``(n, WINDOW_DAYS)`` histories ending on them. Raises ``ValueError`` on shapes
    that do not agree."""
    days = np.asarray(origin_dates, dtype="datetime64[D]")
    admissions = np.asarray(admissions, dtype=np.float64)
    occupancy = np.asarray(occupancy, dtype=np.float64)
    expected = (days.shape[0], WINDOW_DAYS) if days.ndim == 1 else None
    if expected is None or admissions.shape != expected or occupancy.shape != expected:
        raise ValueError(
            f"forecast features need origin dates (n,) and histories (n, {WINDOW_DAYS}); got dates "
            f"{days.shape}, admissions {admissions.shape}, occupancy {occupancy.shape}"
        )
    count = days.shape[0]
    scales = window_scales(admissions, occupancy)
    first_target = days + 1
    weekday = (first_target.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_of_year = (first_target - first_target.astype("datetime64[Y]")).astype(np.float64) + 1
    angle = 2 * np.pi * day_of_year / 365.25
    targets = days[:, None] + np.arange(1, HORIZON_DAYS + 1)
    features = np.empty((count, FEATURE_COUNT), dtype=np.float32)
    features[:, :WINDOW_DAYS] = admissions / scales[:, :1]
    features[:, WINDOW_DAYS : 2 * WINDOW_DAYS] = occupancy / scales[:, 1:]
    calendar = 2 * WINDOW_DAYS
    features[:, calendar : calendar + 7] = np.eye(7, dtype=np.float32)[weekday]
    features[:, calendar + 7] = np.sin(angle)
    features[:, calendar + 8] = np.cos(angle)
    features[:, calendar + 9 :] = is_bank_holiday(targets)
    return features, scales


def origin_features(origins: Sequence[ForecastOrigin]) -> tuple[np.ndarray, np.ndarray]:
    """``forecast_features`` of ``ForecastOrigin`` values (empty arrays for no origins)."""
    if not origins:
        return np.zeros((0, FEATURE_COUNT), dtype=np.float32), np.zeros((0, 2))
    dates = np.array([origin.date for origin in origins], dtype="datetime64[D]")
    admissions = np.stack([origin.admissions for origin in origins])
    occupancy = np.stack([origin.occupancy for origin in origins])
    return forecast_features(dates, admissions, occupancy)
