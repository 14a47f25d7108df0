"""Energy meters per device, and an account that attributes a device's energy to the work done on it.

What each source measures (the ``source`` label of every reading):

``nvml``
    The GPU's own cumulative energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules,
    Volta and later). It is the whole board: every process using that GPU, and its idle draw.
``rapl``
    Intel/AMD RAPL package counters under ``/sys/class/powercap/intel-rapl:N/energy_uj``, summed over
    the CPU packages. It is the whole CPU package (cores, caches, uncore; not DRAM, not the rest of
    the machine) and every process on it, not just this one. The counters wrap at
    ``max_energy_range_uj``; a wrap between two reads is corrected, so read at least once per wrap
    period (tens of minutes at full power; ``EnergyAccount.tick`` does it). Since 2020 most kernels
    make ``energy_uj`` readable by root only, and virtual machines usually have no powercap at all.
``estimated``
    No counter: busy seconds reported by the caller times a configured power in watts. A model of
    energy, not a measurement; always flagged ``estimated``.

Use one ``EnergyAccount`` per device, shared by everything that runs on that device: concurrent
measurements then split the device's energy by busy time instead of each claiming all of it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medserve.hardware.devices import Device

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
_PACKAGE_DOMAIN = re.compile(r"^intel-rapl:\d+$")


class MeterUnavailable(RuntimeError):
    """This meter cannot read this device here; the message says why."""


@runtime_checkable
class EnergyMeter(Protocol):
    """A cumulative energy reading of one device, in joules, that never decreases."""

    @property
    def source(self) -> str:
        """``nvml``, ``rapl`` or ``estimated``."""
        ...

    @property
    def estimated(self) -> bool: ...

    def read_joules(self) -> float:
        """Joules since the meter was created; never raises once the meter exists."""
        ...


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


class EstimatedEnergyMeter:
    """Busy seconds (``add_busy``) times ``watts``: an estimate, labelled as one."""

    source = "estimated"
    estimated = True

    def __init__(self, watts: float, *, reason: str = "") -> None:
        self.watts = _positive("watts", watts)
        #: why no measuring meter was used (empty when an estimate was asked for)
        self.reason = reason
        self._busy = 0.0
        self._lock = threading.Lock()

    def add_busy(self, seconds: float) -> None:
        """Report ``seconds`` during which the device was busy with the work being metered."""
        seconds = _positive("busy seconds", seconds)
        with self._lock:
            self._busy += seconds

    @property
    def busy_seconds(self) -> float:
        return self._busy

    def read_joules(self) -> float:
        return self._busy * self.watts


class NvmlEnergyMeter:
    """The cumulative energy counter of NVIDIA GPU ``index`` (NVML's numbering) through ``pynvml``."""

    source = "nvml"
    estimated = False

    def __init__(self, index: int) -> None:
        try:
            nvml: Any = importlib.import_module("pynvml")
        except ImportError:
            raise MeterUnavailable("pynvml is not installed (the 'gpu' extra, nvidia-ml-py)") from None
        self._nvml = nvml
        self.index = index
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise MeterUnavailable(f"NVML cannot initialise: {exc}") from None
        try:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._start_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except nvml.NVMLError as exc:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
            raise MeterUnavailable(f"GPU {index} has no NVML energy counter: {exc}") from None
        self._last = 0.0
        self._failures = 0
        self._closed = False

    def read_joules(self) -> float:
        """Joules since creation; a failed read returns the last good value (and is logged once)."""
        if self._closed:
            return self._last
        try:
            millijoules = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError as exc:
            self._failures += 1
            if self._failures == 1:
                log.warning("NVML energy counter of GPU %d cannot be read: %s", self.index, exc)
            return self._last
        self._last = max(self._last, (millijoules - self._start_mj) / 1000.0)
        return self._last

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()


@dataclass(slots=True)
class _RaplDomain:
    path: Path
    max_range_uj: int
    last_uj: int


def _read_int(path: Path) -> int:
    return int(path.read_text(encoding="ascii").strip())


def rapl_delta(last_uj: int, now_uj: int, max_range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_range_uj``."""
    return now_uj - last_uj if now_uj >= last_uj else max_range_uj - last_uj + now_uj


class RaplEnergyMeter:
    """Sum of the RAPL package domains (``intel-rapl:N`` named ``package-*``) under ``root``
    (default ``/sys/class/powercap``); sub-domains (cores, DRAM) and ``psys`` are not added."""

    source = "rapl"
    estimated = False

    def __init__(self, root: Path | None = None) -> None:
        root = POWERCAP if root is None else root
        self._domains: list[_RaplDomain] = []
        candidates = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_DOMAIN.match(p.name))
        for directory in candidates:
            try:
                name = (directory / "name").read_text(encoding="ascii").strip()
                if not name.startswith("package"):
                    continue
                domain = _RaplDomain(
                    path=directory / "energy_uj",
                    max_range_uj=_read_int(directory / "max_energy_range_uj"),
                    last_uj=_read_int(directory / "energy_uj"),
                )
            except PermissionError:
                raise MeterUnavailable(
                    f"{directory / 'energy_uj'} is readable only by root on this machine"
                ) from None
            except (OSError, ValueError) as exc:
                raise MeterUnavailable(f"RAPL domain {directory} cannot be read: {exc}") from None
            self._domains.append(domain)
        if not self._domains:
            raise MeterUnavailable(f"no RAPL package domains under {root}")
        self._total_uj = 0
        self._lock = threading.Lock()
        self._failures = 0

    @property
    def domains(self) -> list[Path]:
        return [d.path.parent for d in self._domains]

    def read_joules(self) -> float:
        """Joules since creation over all packages, wrap-arounds corrected."""
        with self._lock:
            for domain in self._domains:
                try:
                    now = _read_int(domain.path)
                except (OSError, ValueError) as exc:
                    self._failures += 1
                    if self._failures == 1:
                        log.warning("RAPL counter %s cannot be read: %s", domain.path, exc)
                    continue
                self._total_uj += rapl_delta(domain.last_uj, now, domain.max_range_uj)
                domain.last_uj = now
            return self._total_uj / 1e6


def meter_for(device: Device, *, cpu_watts: float, gpu_watts: float) -> EnergyMeter:
    """The best meter for ``device``: NVML for CUDA GPUs, RAPL for the CPU, else an estimate.

    An estimate's ``reason`` says why no counter could be used.
    """
    if device.kind == "cuda":
        nvml_index = device.details.get("nvml_index")
        if not isinstance(nvml_index, int):
            return EstimatedEnergyMeter(gpu_watts, reason=f"{device.id} was not found through NVML")
        try:
            return NvmlEnergyMeter(nvml_index)
        except MeterUnavailable as exc:
            return EstimatedEnergyMeter(gpu_watts, reason=str(exc))
    if device.kind == "cpu":
        try:
            return RaplEnergyMeter()
        except MeterUnavailable as exc:
            return EstimatedEnergyMeter(cpu_watts, reason=str(exc))
    return EstimatedEnergyMeter(gpu_watts, reason=f"no energy counter is read for {device.kind} devices")


@dataclass(slots=True)
class EnergyMeasurement:
    """Energy attributed to one piece of work; ``joules`` grows until the ``measure`` block ends."""

    source: str
    estimated: bool
    joules: float = 0.0
    seconds: float = 0.0
    done: bool = False
    _started: float = 0.0


class EnergyAccount:
    """Attributes one device's energy to the measurements running on it, by busy-time share.

    Between any two events (a measurement starting or ending, or ``tick``), the meter's increase is
    split equally among the measurements active then: each was busy for that whole span. Energy while
    none is active goes to ``unattributed_joules``. With an ``EstimatedEnergyMeter`` the account itself
    reports busy time (spans with at least one active measurement); do not also call ``add_busy``.
    """

    def __init__(self, meter: EnergyMeter, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.meter = meter
        self._clock = clock
        self._lock = threading.Lock()
        self._active: list[EnergyMeasurement] = []
        self._last_time = clock()
        self._last_joules = meter.read_joules()
        self.unattributed_joules = 0.0
        self.attributed_joules = 0.0

    def _settle(self) -> float:
        now = self._clock()
        if self._active and isinstance(self.meter, EstimatedEnergyMeter):
            self.meter.add_busy(max(0.0, now - self._last_time))
        joules = self.meter.read_joules()
        delta = max(0.0, joules - self._last_joules)
        if self._active:
            share = delta / len(self._active)
            for measurement in self._active:
                measurement.joules += share
            self.attributed_joules += delta
        else:
            self.unattributed_joules += delta
        self._last_joules, self._last_time = joules, now
        return now

    def tick(self) -> None:
        """Read the meter now: keeps wrapping counters caught up during long idle or long work."""
        with self._lock:
            self._settle()

    @contextmanager
    def measure(self) -> Iterator[EnergyMeasurement]:
        """``with account.measure() as m: ...`` then ``m.joules`` is this work's share of the energy."""
        measurement = EnergyMeasurement(source=self.meter.source, estimated=self.meter.estimated)
        with self._lock:
            measurement._started = self._settle()
            self._active.append(measurement)
        try:
            yield measurement
        finally:
            with self._lock:
                now = self._settle()
                self._active.remove(measurement)
                measurement.seconds = now - measurement._started
                measurement.done = True
