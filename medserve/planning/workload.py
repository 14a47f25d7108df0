"""The workload mix a fleet must carry: what arrives, when in the day, how urgent, and its SLO.

A plan file's ``workload`` is a list; each entry names a ``model`` and one way of saying how much:

==========================================  =====================================================
keys                                        requests per hour
==========================================  =====================================================
``studies_per_day``, ``requests_per_study``  spread over the day by ``profile`` (``flat``,
                                             ``daytime``, ``evening`` or 24 weights)
``beds``, ``requests_per_bed_per_hour``      constant (a ward's monitors)
``requests_per_second``                      constant (or shaped by ``profile``)
``job_items``, ``batch``, ``window``         a nightly job: ``job_items`` rows in batches of
                                             ``batch`` within the hours ``window: [start, end)``
==========================================  =====================================================

``class`` is a priority class (``stat``, ``urgent``, ``routine``, ``bulk``); ``slo_p99_ms`` the p99
latency each request must meet at the busiest hour (required except for jobs, whose SLO is to
finish within their window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medserve.values.errors import InvalidInput

HOURS = 24

#: priority levels of the default classes (1 is the most urgent), as the server's settings name them
CLASS_PRIORITIES = {"stat": 1, "urgent": 2, "routine": 3, "bulk": 4}

#: named hourly profiles: relative weight of each hour of the day (0-23)
PROFILES: dict[str, tuple[float, ...]] = {
    "flat": (1.0,) * HOURS,
    # a radiology department: most studies from 8 to 18, a few at night
    "daytime": (0.2,) * 7 + (0.6, 1.6, 2.0, 2.0, 1.8, 1.4, 1.8, 2.0, 1.8, 1.4, 1.0) + (0.5,) * 3 + (0.3,) * 3,
    # an emergency department: busiest in the evening
    "evening": (0.5,) * 8 + (0.8,) * 4 + (1.0,) * 4 + (1.4,) * 6 + (0.8,) * 2,
}


@dataclass(frozen=True, slots=True)
class Demand:
    """One line of the mix: requests to ``model`` at ``hourly_requests[h]`` per hour in hour ``h``."""

    name: str
    model: str
    hourly_requests: tuple[float, ...]
    priority_class: str = "routine"
    priority: int = 3
    slo_p99_ms: float | None = None
    items_per_request: int = 1
    """Batch rows each request carries (a job's batch; 1 for an image or a window)."""
    window: tuple[int, int] | None = None
    """A job's hours ``[start, end)``, wrapping past midnight when ``end <= start``."""

    @property
    def is_job(self) -> bool:
        return self.window is not None

    def rate_per_s(self, hour: int) -> float:
        return self.hourly_requests[hour % HOURS] / 3600.0

    @property
    def requests_per_day(self) -> float:
        return sum(self.hourly_requests)


@dataclass(frozen=True)
class Workload:
    demands: tuple[Demand, ...]

    def models(self) -> list[str]:
        return sorted({d.model for d in self.demands})

    def critical_hours(self, work: Mapping[str, float]) -> list[int]:
        """The hours to size at: each demand's own busiest hour and the hour with the most work in
        total (``work``: mean execution seconds per request of each demand's model)."""
        hours = {max(range(HOURS), key=d.hourly_requests.__getitem__) for d in self.demands}
        hours.add(
            max(
                range(HOURS), key=lambda h: sum(d.rate_per_s(h) * work.get(d.name, 0.0) for d in self.demands)
            )
        )
        return sorted(hours)


def _number(entry: Mapping[str, Any], key: str, where: str, *, positive: bool = True) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{where}: '{key}' must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise InvalidInput(f"{where}: '{key}' must be {'positive' if positive else 'at least 0'}")
    return float(value)


def _profile(entry: Mapping[str, Any], where: str) -> tuple[float, ...]:
    raw = entry.get("profile", "flat")
    if isinstance(raw, str):
        if raw not in PROFILES:
            raise InvalidInput(f"{where}: unknown profile '{raw}' (use {', '.join(PROFILES)} or 24 weights)")
        weights: Sequence[Any] = PROFILES[raw]
    elif isinstance(raw, list) and len(raw) == HOURS:
        weights = raw
    else:
        raise InvalidInput(f"{where}: 'profile' must name a profile or list 24 hourly weights")
    if any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights):
        raise InvalidInput(f"{where}: the hourly weights must be numbers >= 0")
    total = float(sum(weights))
    if total <= 0:
        raise InvalidInput(f"{where}: the hourly weights must not all be 0")
    return tuple(float(w) / total for w in weights)


def _window(entry: Mapping[str, Any], where: str) -> tuple[int, int]:
    raw = entry.get("window")
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= HOURS for h in raw)
        or raw[0] % HOURS == raw[1] % HOURS
    ):
        raise InvalidInput(f"{where}: 'window' must be [start, end) hours of the day, e.g. [0, 6]")
    return raw[0] % HOURS, raw[1] % HOURS


def window_hours(window: tuple[int, int]) -> list[int]:
    start, end = window
    return [h % HOURS for h in range(start, end if end > start else end + HOURS)]


_QUANTITIES = ("studies_per_day", "beds", "requests_per_second", "job_items")
_KNOWN = {
    "name",
    "model",
    "class",
    "slo_p99_ms",
    "profile",
    "requests_per_study",
    "requests_per_bed_per_hour",
    "batch",
    "window",
    *_QUANTITIES,
}


def parse_demand(entry: object, index: int) -> Demand:
    where = f"workload[{index}]"
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where}: each workload entry must be a mapping")
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput(f"{where}: 'model' must name a model")
    name = str(entry.get("name") or model)
    where = f"workload '{name}'"
    given = [key for key in _QUANTITIES if key in entry]
    if len(given) != 1:
        raise InvalidInput(f"{where}: give exactly one of {', '.join(_QUANTITIES)}")
    class_name = str(entry.get("class", "bulk" if given[0] == "job_items" else "routine"))
    if class_name not in CLASS_PRIORITIES:
        raise InvalidInput(f"{where}: 'class' must be one of {', '.join(CLASS_PRIORITIES)}")
    items, window = 1, None
    if given[0] == "studies_per_day":
        per_day = _number(entry, "studies_per_day", where) * _number(
            {"requests_per_study": entry.get("requests_per_study", 1)}, "requests_per_study", where
        )
        hourly = tuple(per_day * w for w in _profile(entry, where))
    elif given[0] == "beds":
        per_bed = _number({"r": entry.get("requests_per_bed_per_hour", 1800)}, "r", where)
        hourly = (_number(entry, "beds", where) * per_bed,) * HOURS
    elif given[0] == "requests_per_second":
        per_day = _number(entry, "requests_per_second", where) * 3600 * HOURS
        hourly = tuple(per_day * w for w in _profile(entry, where))
    else:
        items = int(_number({"batch": entry.get("batch", 1024)}, "batch", where))
        window = _window(entry, where)
        hours = window_hours(window)
        batches = _number(entry, "job_items", where) / items
        hourly = tuple(batches / len(hours) if h in hours else 0.0 for h in range(HOURS))
    slo: float | None = None
    if "slo_p99_ms" in entry:
        slo = _number(entry, "slo_p99_ms", where)
    elif window is None:
        raise InvalidInput(f"{where}: 'slo_p99_ms' is required (only a job may go without)")
    return Demand(name, model, hourly, class_name, CLASS_PRIORITIES[class_name], slo, items, window)


def parse_workload(entries: object) -> Workload:
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("'workload' must be a non-empty list of demands")
    demands = tuple(parse_demand(entry, i) for i, entry in enumerate(entries))
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise InvalidInput("workload: every demand needs its own name")
    return Workload(demands)
