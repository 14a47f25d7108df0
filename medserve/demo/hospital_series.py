"""Seeded synthetic hospital activity: daily admissions, discharges and midnight bed occupancy per site.

Each site draws a profile (size, growth, winter surge, length of stay, overdispersion, beds) and then,
day by day:

- admissions are negative-binomial around ``base x trend x weekday x season x holiday x outbreak``:
  a linear growth of a few per cent a year; a weekly pattern with a Monday peak and a weekend dip;
  a yearly cycle peaking in mid-January (the winter surge) and lowest in mid-July; about a quarter
  fewer admissions on the bank holidays of England and Wales; and now and then an outbreak, a bump
  of 20-50 % about one to two weeks wide at half height;
- every admitted patient stays a whole number of nights drawn from a discretised gamma distribution
  (mean 3.5-7.5 days by site, a long right tail); a third of the discharges due at a weekend slip to
  the Monday;
- occupancy at midnight is everyone admitted so far less everyone discharged, so it follows admissions
  with a lag of about a length of stay and carries the weekend discharge backlog. Occupancy may pass
  the site's beds in a surge (escalation beds).

The series start after a burn-in as long as the longest stay, so the first day's occupancy is already
in its steady state. Site ``i`` of seed ``s`` is the same whatever the number of sites asked for. The
data are a demonstration of forecasting, not a model of any real hospital.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from medserve.clinical.operations.bank_holidays import is_bank_holiday

START = dt.date(2021, 1, 1)
"""First day of the synthetic series unless another is asked for."""

WEEKDAY_FACTORS = np.array([1.14, 1.07, 1.03, 1.01, 0.99, 0.87, 0.89])
"""Relative admissions Monday to Sunday (mean 1)."""

HOLIDAY_FACTOR = 0.74
"""Relative admissions on a bank holiday."""

WINTER_PEAK_DAY = 15
"""Day of the year on which the yearly cycle peaks (mid-January)."""

WEEKEND_DISCHARGE_DELAY = 0.35
"""Share of the discharges due on a Saturday or Sunday that happen on the Monday instead."""

OUTBREAKS_PER_YEAR = 0.6
"""Mean number of outbreaks a site sees in a year."""

LOS_SHAPE = 1.6
"""Gamma shape of the length of stay (a long right tail)."""

EXAMPLE_SITES = 4
"""Sites in the example input file."""

_COLUMNS = ("site", "date", "admissions", "discharges", "occupancy", "capacity")


@dataclass(frozen=True)
class SiteProfile:
    """What makes one synthetic site differ from another."""

    name: str
    base_admissions: float
    """Mean daily admissions at the start, before the weekly, yearly and holiday factors."""
    trend_per_year: float
    """Relative growth of admissions per year."""
    winter_amplitude: float
    """Relative height of the yearly cycle's January peak above the mean."""
    mean_length_of_stay: float
    """Mean of the length-of-stay distribution, in days."""
    dispersion: float
    """Negative-binomial size ``k``: the variance of admissions is ``mu + mu**2 / k``."""
    capacity: int
    """Staffed beds."""


@dataclass(frozen=True)
class SiteSeries:
    """One site's daily series; every array has one element per day of ``dates`` (``datetime64[D]``)."""

    profile: SiteProfile
    dates: np.ndarray
    admissions: np.ndarray
    discharges: np.ndarray
    occupancy: np.ndarray


def site_profile(index: int, rng: np.random.Generator) -> SiteProfile:
    """Draw the profile of site number ``index`` (0-based, named ``site_01``, ``site_02``...)."""
    base = round(float(rng.uniform(20.0, 110.0)), 1)
    winter = float(rng.uniform(0.08, 0.20))
    stay = float(rng.uniform(3.5, 7.5))
    beds = 5 * math.ceil(base * stay * (1 + winter) * 1.25 / 5)
    return SiteProfile(
        name=f"site_{index + 1:02d}",
        base_admissions=base,
        trend_per_year=float(rng.uniform(0.0, 0.04)),
        winter_amplitude=winter,
        mean_length_of_stay=stay,
        dispersion=float(rng.uniform(25.0, 80.0)),
        capacity=beds,
    )


def length_of_stay_pmf(mean_days: float) -> np.ndarray:
    """Probabilities of staying 1, 2, ... nights: a gamma density (shape ``LOS_SHAPE``) taken at the
    whole days and cut at four means plus ten days."""
    longest = int(4 * mean_days) + 10
    nights = np.arange(1, longest + 1, dtype=np.float64)
    scale = mean_days / LOS_SHAPE
    weights = nights ** (LOS_SHAPE - 1) * np.exp(-nights / scale)
    pmf: np.ndarray = weights / weights.sum()
    return pmf


def expected_admissions(profile: SiteProfile, dates: np.ndarray, start: dt.date) -> np.ndarray:
    """Mean daily admissions of ``profile`` on ``dates`` (``datetime64[D]``), outbreaks left out."""
    dates = np.asarray(dates, dtype="datetime64[D]")
    elapsed = (dates - np.datetime64(start, "D")).astype(np.float64)
    weekday = (dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype(np.float64) + 1
    season = 1 + profile.winter_amplitude * np.cos(2 * np.pi * (day_of_year - WINTER_PEAK_DAY) / 365.25)
    trend = 1 + profile.trend_per_year * elapsed / 365.25
    holiday = np.where(is_bank_holiday(dates), HOLIDAY_FACTOR, 1.0)
    mean: np.ndarray = profile.base_admissions * trend * WEEKDAY_FACTORS[weekday] * season * holiday
    return mean


def simulate_site(profile: SiteProfile, start: dt.date, days: int, rng: np.random.Generator) -> SiteSeries:
    """Simulate ``days`` days of ``profile`` from ``start`` (after a burn-in of the longest stay)."""
    pmf = length_of_stay_pmf(profile.mean_length_of_stay)
    burn = pmf.size
    total = burn + days
    dates = np.datetime64(start, "D") + np.arange(-burn, days)
    mean = expected_admissions(profile, dates, start) * _outbreaks(total, rng)
    size = profile.dispersion
    admissions = rng.negative_binomial(size, size / (size + mean)).astype(np.int64)

    # Every day's admissions split over the stays (one row a day, one column a night count); a share
    # of those due to leave at a weekend leave on the Monday.
    stays = rng.multinomial(admissions, pmf)
    leave = np.arange(total)[:, None] + np.arange(1, pmf.size + 1)[None, :]
    weekday = (dates[0].astype(np.int64) + 3 + leave) % 7
    delay = np.where(weekday == 5, 2, np.where(weekday == 6, 1, 0))
    delayed = rng.binomial(stays, np.where(delay > 0, WEEKEND_DISCHARGE_DELAY, 0.0))
    length = total + pmf.size + 3
    discharges = np.bincount(leave.ravel(), (stays - delayed).ravel(), minlength=length)
    discharges += np.bincount((leave + delay).ravel(), delayed.ravel(), minlength=length)
    discharges = np.rint(discharges).astype(np.int64)
    discharges = discharges[:total]
    occupancy = np.cumsum(admissions - discharges)
    return SiteSeries(
        profile=profile,
        dates=dates[burn:],
        admissions=admissions[burn:],
        discharges=discharges[burn:],
        occupancy=occupancy[burn:],
    )


def _outbreaks(total: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative factor of occasional outbreaks: Gaussian bumps of 20-50 %, sigma 3-7 days."""
    factor = np.ones(total)
    elapsed = np.arange(total, dtype=np.float64)
    for _ in range(int(rng.poisson(OUTBREAKS_PER_YEAR * total / 365.25))):
        centre = rng.uniform(0, total)
        height = rng.uniform(0.2, 0.5)
        width = rng.uniform(3.0, 7.0)
        factor += height * np.exp(-0.5 * ((elapsed - centre) / width) ** 2)
    return factor


def hospital_series(
    sites: int = 4, days: int = 3 * 365, *, start: dt.date = START, seed: int = 0
) -> list[SiteSeries]:
    """``sites`` synthetic sites of ``days`` days each from ``start``; deterministic in ``seed``.

    Raises ``ValueError`` unless ``sites`` and ``days`` are at least 1."""
    if sites < 1 or days < 1:
        raise ValueError(f"need at least one site and one day, got sites={sites}, days={days}")
    series = []
    for index in range(sites):
        rng = np.random.default_rng([seed, index])
        series.append(simulate_site(site_profile(index, rng), start, days, rng))
    return series


def hospital_table(series: Sequence[SiteSeries]) -> pa.Table:
    """The series as one table sorted by site then date: ``site`` (string), ``date`` (date32) and
    ``admissions``, ``discharges``, ``occupancy``, ``capacity`` (int64)."""
    columns: dict[str, list[pa.Array]] = {name: [] for name in _COLUMNS}
    for site in sorted(series, key=lambda s: s.profile.name):
        count = site.dates.size
        columns["site"].append(pa.array([site.profile.name] * count, pa.string()))
        columns["date"].append(pa.array(site.dates, pa.date32()))
        columns["admissions"].append(pa.array(site.admissions, pa.int64()))
        columns["discharges"].append(pa.array(site.discharges, pa.int64()))
        columns["occupancy"].append(pa.array(site.occupancy, pa.int64()))
        columns["capacity"].append(pa.array(np.full(count, site.profile.capacity), pa.int64()))
    return pa.table({name: pa.chunked_array(parts, parts[0].type) for name, parts in columns.items()})


def write_example_operations(out_dir: Path, n: int, seed: int) -> list[Path]:
    """Write an example input for an ``operations_forecast`` job: ``n`` days (at least 35: four weeks
    of history and a week to forecast) of ``EXAMPLE_SITES`` synthetic sites from 2022-01-01, as
    ``hospital_daily.csv`` and the same rows as ``hospital_daily.parquet``; returns both paths.

    Raises ``ValueError`` for ``n`` below 35."""
    if n < 35:
        raise ValueError(f"an example hospital series needs at least 35 days, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = hospital_table(hospital_series(EXAMPLE_SITES, n, start=dt.date(2022, 1, 1), seed=seed))
    csv_path = out_dir / "hospital_daily.csv"
    parquet_path = out_dir / "hospital_daily.parquet"
    pa_csv.write_csv(table, csv_path)
    pq.write_table(table, parquet_path, row_group_size=64 * 1024)
    return [csv_path, parquet_path]
