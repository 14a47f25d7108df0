"""Priority classes and how a request names its class and deadline (pure; no clock of its own).

A class has a priority (Triton's semantics: 1 is the highest, larger numbers are less urgent) and an
optional deadline counted from the request's arrival. A request picks its class with the Open Inference
Protocol request parameters ``priority`` (an unsigned integer; 0 means the default class) or
``priority_class`` (a class name), and may tighten its deadline with ``timeout`` (microseconds, as in
Triton; 0 means none). The door may add the client's own deadline (a gRPC deadline, the HTTP
``Request-Timeout`` header). Its effective deadline is the earliest of the class deadline, the timeout
and the client's deadline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medserve.scheduling.clock import SYSTEM_CLOCK
from medserve.values.errors import InvalidInput

#: Request parameters read here.
PRIORITY = "priority"
TIMEOUT = "timeout"
PRIORITY_CLASS = "priority_class"


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A named priority level; ``deadline_ms`` None: no deadline (offline work)."""

    name: str
    priority: int
    deadline_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a priority class needs a name")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or self.priority < 1:
            raise ValueError(f"priority class '{self.name}': priority must be an integer >= 1")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ValueError(f"priority class '{self.name}': deadline_ms must be > 0 (or none)")

    @property
    def deadline_ns(self) -> int | None:
        return None if self.deadline_ms is None else int(self.deadline_ms * 1_000_000)

    def describe(self) -> str:
        deadline = "no deadline" if self.deadline_ms is None else f"deadline {self.deadline_ms:g} ms"
        return f"'{self.name}' (priority {self.priority}, {deadline})"


@dataclass(frozen=True, slots=True)
class PriorityClasses:
    """The configured classes, most urgent first, and the one a request without a class gets."""

    classes: tuple[PriorityClass, ...]
    default_name: str
    _by_name: dict[str, PriorityClass] = field(init=False, repr=False, compare=False)
    _by_priority: dict[int, PriorityClass] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("at least one priority class is needed")
        ordered = tuple(sorted(self.classes, key=lambda c: c.priority))
        by_name: dict[str, PriorityClass] = {}
        by_priority: dict[int, PriorityClass] = {}
        for cls in ordered:
            key = cls.name.casefold()
            if key in by_name:
                raise ValueError(f"priority class name '{cls.name}' is used twice")
            if cls.priority in by_priority:
                raise ValueError(
                    f"priority classes '{by_priority[cls.priority].name}' and '{cls.name}' "
                    f"share priority {cls.priority}"
                )
            by_name[key] = cls
            by_priority[cls.priority] = cls
        if self.default_name.casefold() not in by_name:
            raise ValueError(
                f"default priority class '{self.default_name}' is not one of {', '.join(by_name)}"
            )
        object.__setattr__(self, "classes", ordered)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_priority", by_priority)

    @property
    def default(self) -> PriorityClass:
        return self._by_name[self.default_name.casefold()]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def named(self, name: str) -> PriorityClass | None:
        """The class called ``name`` (case-insensitive), or None."""
        return self._by_name.get(name.casefold())

    def at(self, priority: int) -> PriorityClass | None:
        """The class of priority level ``priority``, or None."""
        return self._by_priority.get(priority)

    def listing(self) -> str:
        return ", ".join(f"{c.priority} {c.name}" for c in self.classes)


def build_classes(specs: Iterable[Mapping[str, Any]], default: str) -> PriorityClasses:
    """Classes from settings-like mappings ``{name, priority, deadline_ms}``; ValueError names the fault."""
    return PriorityClasses(
        tuple(PriorityClass(str(s["name"]), s["priority"], s.get("deadline_ms")) for s in specs), default
    )


DEFAULT_CLASS_SPECS: tuple[dict[str, Any], ...] = (
    {"name": "stat", "priority": 1, "deadline_ms": 1000.0},
    {"name": "urgent", "priority": 2, "deadline_ms": 5000.0},
    {"name": "routine", "priority": 3, "deadline_ms": 30000.0},
    {"name": "bulk", "priority": 4, "deadline_ms": None},
)
DEFAULT_CLASS_NAME = "routine"
DEFAULT_CLASSES = build_classes(DEFAULT_CLASS_SPECS, DEFAULT_CLASS_NAME)


def _unsigned(parameters: Mapping[str, Any], name: str, meaning: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(
            f"request parameter '{name}' ({meaning}) must be an unsigned integer, "
            f"got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise InvalidInput(f"request parameter '{name}' ({meaning}) must be an unsigned integer, got {value}")
    return value


def _class_of(parameters: Mapping[str, Any], classes: PriorityClasses) -> PriorityClass:
    level = _unsigned(parameters, PRIORITY, "1 is the highest priority, 0 the default")
    by_level = None
    if level:
        by_level = classes.at(level)
        if by_level is None:
            raise InvalidInput(
                f"request parameter '{PRIORITY}' is {level}, which is not a configured priority level "
                f"(levels: {classes.listing()}; 0: the default class '{classes.default.name}')"
            )
    name = parameters.get(PRIORITY_CLASS)
    if name is None:
        return by_level or classes.default
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(
            f"request parameter '{PRIORITY_CLASS}' must be a class name "
            f"(one of {', '.join(classes.names)}), got {type(name).__name__} {name!r}"
        )
    by_name = classes.named(name.strip())
    if by_name is None:
        raise InvalidInput(
            f"unknown priority class '{name}' in request parameter '{PRIORITY_CLASS}'; "
            f"configured classes: {', '.join(classes.names)}"
        )
    if by_level is not None and by_level is not by_name:
        raise InvalidInput(
            f"request parameters disagree: '{PRIORITY}' {level} is class '{by_level.name}' but "
            f"'{PRIORITY_CLASS}' is '{by_name.name}'"
        )
    return by_name


def resolve_request_class(
    parameters: Mapping[str, Any],
    classes: PriorityClasses,
    arrival_ns: int | None = None,
    client_deadline_ns: int | None = None,
) -> tuple[PriorityClass, int | None]:
    """The request's class and absolute deadline on the scheduler's clock (None: no deadline).

    ``arrival_ns`` (default: now on :data:`~medserve.scheduling.clock.SYSTEM_CLOCK`, i.e.
    ``time.perf_counter_ns``) is when the request arrived; deadlines count from it.
    ``client_deadline_ns`` (absolute, on the same clock) is the deadline the client gave its door;
    the earliest of it, the class deadline and the ``timeout`` parameter wins.

    Raises ``InvalidInput`` for parameters of the wrong type, negative numbers, a priority level or
    class name that is not configured, or a level and a name that disagree.
    """
    cls = _class_of(parameters, classes)
    if arrival_ns is None:
        arrival_ns = SYSTEM_CLOCK.now_ns()
    timeout_us = _unsigned(parameters, TIMEOUT, "microseconds; 0 means no timeout")
    budgets = [b for b in (cls.deadline_ns, timeout_us * 1000 if timeout_us else None) if b is not None]
    deadlines = [arrival_ns + min(budgets)] if budgets else []
    if client_deadline_ns is not None:
        deadlines.append(client_deadline_ns)
    return cls, min(deadlines) if deadlines else None
