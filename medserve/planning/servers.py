"""Candidate server types and the economics they are priced under.

A plan file's ``servers`` list; each server type has ``devices`` (device kind → executions that can
run at once on it, e.g. ``{cpu: 1}`` or ``{cuda: 2}``), ``capex`` (purchase price of one server),
``life_years`` (over which the price is written off), ``idle_watts`` (the server's draw with nothing to
do; inference energy comes on top, from the profiles) and where its models' speed comes from:

* ``profiles: measured`` — the stored profiles of this machine, for the devices of those kinds;
* ``spec_sheet: {model: figures}`` — for a device that is not present: either
  ``{batch_sizes: [...], p50_ms: [...], p99_ms: [...], watts: W}`` or
  ``{from_device: cpu, speedup: S, watts: W}`` (the measured curve on ``from_device`` made ``S``
  times faster); the key ``default`` applies to models not named. Results are marked ``spec sheet``.

``economics``: ``electricity_per_kwh``, ``currency``, ``import_tariffs`` (fractions added to the
purchase price, one scenario each, e.g. ``[0, 0.25]``), ``hours_per_year`` (8760).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medserve.values.errors import InvalidInput


@dataclass(frozen=True)
class ServerType:
    name: str
    devices: dict[str, int]
    capex: float
    life_years: float = 5.0
    idle_watts: float = 0.0
    measured: bool = True
    spec_sheet: dict[str, dict[str, Any]] = field(default_factory=dict)

    def spec_for(self, model: str) -> dict[str, Any] | None:
        return self.spec_sheet.get(model) or self.spec_sheet.get("default")


@dataclass(frozen=True)
class Economics:
    electricity_per_kwh: float = 0.25
    currency: str = "EUR"
    import_tariffs: tuple[float, ...] = (0.0,)
    hours_per_year: float = 8760.0


def _positive(value: object, what: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise InvalidInput(f"{what} must be {'at least 0' if zero else 'positive'}")
    return float(value)


def _spec_sheet(raw: object, where: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'spec_sheet' must map model names (or 'default') to figures")
    checked: dict[str, dict[str, Any]] = {}
    for model, figures in raw.items():
        what = f"{where}: spec_sheet '{model}'"
        if not isinstance(figures, dict):
            raise InvalidInput(f"{what} must be a mapping")
        if "from_device" in figures:
            if not isinstance(figures["from_device"], str):
                raise InvalidInput(f"{what}: 'from_device' must name a measured device, e.g. cpu")
            _positive(figures.get("speedup"), f"{what}: 'speedup'")
        else:
            lists = [figures.get(k) for k in ("batch_sizes", "p50_ms", "p99_ms")]
            if not all(isinstance(v, list) and v for v in lists) or len({len(v) for v in lists}) != 1:  # type: ignore[arg-type]
                raise InvalidInput(
                    f"{what}: give batch_sizes, p50_ms and p99_ms (lists of one length), or from_device "
                    "and speedup"
                )
        if "watts" in figures:
            _positive(figures["watts"], f"{what}: 'watts'")
        checked[str(model)] = dict(figures)
    return checked


def parse_server(entry: object, index: int) -> ServerType:
    where = f"servers[{index}]"
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be a mapping")
    unknown = sorted(
        set(entry) - {"name", "devices", "capex", "life_years", "idle_watts", "profiles", "spec_sheet"}
    )
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: 'name' is required")
    where = f"server '{name}'"
    devices = entry.get("devices", {"cpu": 1})
    if not isinstance(devices, dict) or not devices:
        raise InvalidInput(f"{where}: 'devices' must map device kinds to slots, e.g. {{cpu: 1}}")
    slots: dict[str, int] = {}
    for kind, count in devices.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidInput(f"{where}: device '{kind}' needs a whole number of slots >= 1")
        slots[str(kind).split(":")[0]] = count
    profiles = entry.get("profiles", "measured" if "spec_sheet" not in entry else "none")
    if profiles not in ("measured", "none"):
        raise InvalidInput(f"{where}: 'profiles' must be 'measured' or 'none'")
    spec = _spec_sheet(entry.get("spec_sheet"), where)
    if profiles == "none" and not spec:
        raise InvalidInput(f"{where}: without measured profiles it needs a 'spec_sheet'")
    return ServerType(
        name,
        slots,
        _positive(entry.get("capex"), f"{where}: 'capex'", zero=True),
        _positive(entry.get("life_years", 5), f"{where}: 'life_years'"),
        _positive(entry.get("idle_watts", 0), f"{where}: 'idle_watts'", zero=True),
        profiles == "measured",
        spec,
    )


def parse_servers(entries: object) -> tuple[ServerType, ...]:
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("'servers' must be a non-empty list of server types")
    servers = tuple(parse_server(entry, i) for i, entry in enumerate(entries))
    if len({s.name for s in servers}) != len(servers):
        raise InvalidInput("servers: every server type needs its own name")
    return servers


def parse_economics(raw: object) -> Economics:
    if raw is None:
        return Economics()
    if not isinstance(raw, Mapping):
        raise InvalidInput("'economics' must be a mapping")
    tariffs = raw.get("import_tariffs", [0.0])
    if not isinstance(tariffs, list) or not tariffs:
        raise InvalidInput("economics: 'import_tariffs' must be a list of fractions, e.g. [0, 0.25]")
    return Economics(
        _positive(raw.get("electricity_per_kwh", 0.25), "economics: 'electricity_per_kwh'", zero=True),
        str(raw.get("currency", "EUR")),
        tuple(_positive(t, "economics: an import tariff", zero=True) for t in tariffs),
        _positive(raw.get("hours_per_year", 8760), "economics: 'hours_per_year'"),
    )
