"""Priority classes, request parameters and the pure SLO scheduling policy (no sockets, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medserve.scheduling.batching import BatchKey
from medserve.scheduling.priority import (
    DEFAULT_CLASSES,
    PriorityClass,
    build_classes,
    resolve_request_class,
)
from medserve.scheduling.slo import (
    NO_DEADLINE,
    ServiceTimes,
    estimate_completion_ns,
    latest_start_ns,
    retry_after_s,
    select_urgent_batch,
    urgency,
)
from medserve.settings import load_settings
from medserve.values.errors import InvalidConfig, InvalidInput

MS = 1_000_000
T0 = 1_000 * MS  # an arbitrary arrival time on the perf_counter_ns clock


# -- classes and request parameters -----------------------------------------------------------
def resolve(**parameters: Any) -> tuple[PriorityClass, int | None]:
    return resolve_request_class(parameters, DEFAULT_CLASSES, T0)


def test_default_classes() -> None:
    assert [(c.name, c.priority) for c in DEFAULT_CLASSES.classes] == [
        ("stat", 1),
        ("urgent", 2),
        ("routine", 3),
        ("bulk", 4),
    ]
    assert DEFAULT_CLASSES.default.name == "routine"
    assert DEFAULT_CLASSES.named("bulk") is not None and DEFAULT_CLASSES.named("bulk").deadline_ms is None  # type: ignore[union-attr]


def test_no_parameters_is_the_default_class_with_its_deadline() -> None:
    cls, deadline = resolve()
    assert cls.name == "routine" and deadline == T0 + 30_000 * MS
    assert resolve(priority=0)[0].name == "routine"  # Triton: 0 is the default level


@pytest.mark.parametrize(
    ("parameters", "name", "deadline_ms"),
    [
        ({"priority": 1}, "stat", 1000),
        ({"priority": 4}, "bulk", None),
        ({"priority_class": "urgent"}, "urgent", 5000),
        ({"priority_class": "STAT"}, "stat", 1000),  # names are case-insensitive
        ({"priority": 1, "priority_class": "stat"}, "stat", 1000),
        ({"timeout": 200_000}, "routine", 200),  # microseconds; earlier than the class deadline
        ({"priority": 1, "timeout": 5_000_000}, "stat", 1000),  # the class deadline is earlier
        ({"priority_class": "bulk", "timeout": 60_000_000}, "bulk", 60_000),
        ({"priority_class": "bulk", "timeout": 0}, "bulk", None),  # 0: no timeout
        ({"priority": None, "timeout": None}, "routine", 30_000),
    ],
)
def test_class_and_deadline_from_parameters(
    parameters: dict[str, Any], name: str, deadline_ms: int | None
) -> None:
    cls, deadline = resolve(**parameters)
    assert cls.name == name
    assert deadline == (None if deadline_ms is None else T0 + deadline_ms * MS)


@pytest.mark.parametrize(
    ("parameters", "needles"),
    [
        ({"priority": "1"}, ["'priority'", "unsigned integer", "str"]),
        ({"priority": True}, ["'priority'", "unsigned integer", "bool"]),
        ({"priority": 1.5}, ["'priority'", "unsigned integer", "float"]),
        ({"priority": -1}, ["'priority'", "unsigned integer", "-1"]),
        ({"priority": 9}, ["'priority'", "9", "not a configured priority level", "1 stat"]),
        ({"priority_class": 3}, ["'priority_class'", "class name", "int"]),
        ({"priority_class": ""}, ["'priority_class'", "class name"]),
        (
            {"priority_class": "emergency"},
            ["unknown priority class 'emergency'", "stat, urgent, routine, bulk"],
        ),
        ({"priority": 1, "priority_class": "routine"}, ["disagree", "'stat'", "'routine'"]),
        ({"timeout": -5}, ["'timeout'", "microseconds", "-5"]),
        ({"timeout": "100"}, ["'timeout'", "unsigned integer", "str"]),
        ({"timeout": 0.5}, ["'timeout'", "float"]),
    ],
)
def test_bad_parameters_are_invalid_input(parameters: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        resolve(**parameters)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("classes", "default", "needle"),
    [
        ([("a", 1, None), ("A", 2, None)], "a", "used twice"),
        ([("a", 1, None), ("b", 1, None)], "a", "share priority 1"),
        ([("a", 1, None)], "b", "default priority class 'b'"),
        ([], "a", "at least one"),
    ],
)
def test_class_tables_are_checked(
    classes: list[tuple[str, int, float | None]], default: str, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        build_classes(({"name": n, "priority": p, "deadline_ms": d} for n, p, d in classes), default)


@pytest.mark.parametrize(("priority", "deadline"), [(0, None), (-1, 5.0), (1, 0.0), (1, -3.0)])
def test_a_class_needs_a_positive_level_and_deadline(priority: int, deadline: float | None) -> None:
    with pytest.raises(ValueError):
        PriorityClass("x", priority, deadline)


def test_classes_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text(
        "priority_classes:\n"
        "  - {name: critical, priority: 1, deadline_ms: 250}\n"
        "  - {name: research, priority: 2}\n"
        "default_priority_class: research\n"
    )
    table = load_settings(path).priority_table()
    assert table.names == ["critical", "research"] and table.default.name == "research"
    cls, deadline = resolve_request_class({"priority": 1}, table, T0)
    assert (cls.name, deadline) == ("critical", T0 + 250 * MS)
    assert resolve_request_class({}, table, T0) == (table.default, None)
    assert load_settings().priority_table() == DEFAULT_CLASSES


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("priority_classes: [{name: a, priority: 0}]\ndefault_priority_class: a\n", "priority"),
        ("priority_classes: [{name: a, priority: 1, color: red}]\ndefault_priority_class: a\n", "color"),
        ("default_priority_class: nope\n", "default priority class 'nope'"),
        (
            "priority_classes: [{name: a, priority: 1}, {name: b, priority: 1}]\ndefault_priority_class: a\n",
            "share",
        ),
    ],
)
def test_bad_class_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "medserve.yaml"
    path.write_text(text)
    with pytest.raises(InvalidConfig, match=needle):
        load_settings(path)


# -- ordering ------------------------------------------------------------------------------------
def test_urgency_is_strict_precedence_then_earliest_deadline_then_arrival() -> None:
    items = [
        ("routine-early", urgency(3, 10 * MS, 0)),
        ("bulk", urgency(4, None, 1)),
        ("stat-late", urgency(1, 900 * MS, 2)),
        ("routine-earlier", urgency(3, 5 * MS, 3)),
        ("stat-early", urgency(1, 100 * MS, 4)),
        ("bulk-later", urgency(4, None, 5)),
        ("routine-same-deadline", urgency(3, 5 * MS, 6)),
    ]
    ordered = [name for name, key in sorted(items, key=lambda item: item[1])]
    assert ordered == [
        "stat-early",
        "stat-late",  # a later-deadline stat request still goes before any routine one
        "routine-earlier",
        "routine-same-deadline",
        "routine-early",
        "bulk",
        "bulk-later",
    ]
    assert urgency(4, None, 0)[1] == NO_DEADLINE


# -- batch selection -------------------------------------------------------------------------------
A: BatchKey = (("x", "<f4", (3,)),)
B: BatchKey = (("x", "<f4", (5,)),)


@dataclass
class Item:
    size: int
    key: BatchKey = A
    priority: int = 3
    deadline_ns: int | None = None


def per_row(ms: float) -> Any:
    return lambda rows: int(rows * ms * MS)


def unknown(rows: int) -> int | None:
    return None


def test_selection_fills_in_urgency_order_up_to_max() -> None:
    queue = [Item(2, priority=1), Item(3), Item(2), Item(4)]
    assert select_urgent_batch(queue, 8, 0, unknown) == [0, 1, 2]  # 7; then 4 does not fit: stop
    assert select_urgent_batch([Item(1)], 8, 0, unknown) == [0]
    assert select_urgent_batch([], 8, 0, unknown) == []


def test_a_lower_class_never_joins_ahead_of_a_skipped_higher_one() -> None:
    queue = [Item(1, A, 1), Item(1, B, 1), Item(1, A, 1), Item(1, A, 3)]
    assert select_urgent_batch(queue, 8, 0, unknown) == [0, 2]  # the routine A waits for the stat B
    queue = [Item(1, A, 1), Item(1, B, 2), Item(1, A, 3)]
    assert select_urgent_batch(queue, 8, 0, unknown) == [0]
    # within one class a compatible request may still pass an incompatible one (as without classes)
    queue = [Item(1, A, 1), Item(1, B, 2), Item(1, A, 2), Item(1, A, 3)]
    assert select_urgent_batch(queue, 8, 0, unknown) == [0, 2]


def test_batch_is_bounded_by_the_tightest_meetable_deadline() -> None:
    # 10 ms per row: the head's 35 ms deadline allows 3 rows, however many could be batched.
    queue = [Item(1, deadline_ns=35 * MS)] + [Item(1, deadline_ns=1000 * MS) for _ in range(7)]
    assert select_urgent_batch(queue, 8, 0, per_row(10)) == [0, 1, 2]
    # A later member's deadline bounds it as well.
    queue = [Item(1, deadline_ns=1000 * MS), Item(1, deadline_ns=25 * MS)] + [Item(1) for _ in range(6)]
    assert select_urgent_batch(queue, 8, 0, per_row(10)) == [0, 1]
    # Unknown service times (nothing measured yet) bound nothing.
    assert select_urgent_batch(queue, 8, 0, unknown) == list(range(8))


def test_a_deadline_that_cannot_be_met_anyway_does_not_shrink_the_batch() -> None:
    queue = [Item(1, deadline_ns=5 * MS)] + [Item(1) for _ in range(7)]  # 10 ms even alone: lost
    assert select_urgent_batch(queue, 8, 0, per_row(10)) == list(range(8))
    queue = [Item(1), Item(1, deadline_ns=15 * MS)] + [Item(1, deadline_ns=1000 * MS) for _ in range(6)]
    assert select_urgent_batch(queue, 8, 0, per_row(10)) == list(range(8))  # the 2nd misses at 2 rows


def test_latest_start() -> None:
    assert latest_start_ns([100 * MS, None, 60 * MS], 20 * MS, 0) == 40 * MS
    assert latest_start_ns([10 * MS, 60 * MS], 20 * MS, 0) == 40 * MS  # 10 ms: lost anyway
    assert latest_start_ns([None], 20 * MS, 0) is None
    assert latest_start_ns([100 * MS], None, 0) is None


# -- service times and admission ---------------------------------------------------------------
def test_service_times_ewma_and_estimates_between_measurements() -> None:
    times = ServiceTimes(alpha=0.5)
    assert times.estimate_ns(4) is None and not times.measured
    times.observe(2, 20 * MS)
    times.observe(2, 40 * MS)  # EWMA: 20 + 0.5 * (40 - 20)
    assert times.estimate_ns(2) == 30 * MS
    times.observe(8, 90 * MS)
    assert times.estimate_ns(5) == 60 * MS  # linear between 2 and 8
    assert times.estimate_ns(1) == 30 * MS  # below every measurement: the smallest measured
    assert times.estimate_ns(16) == 180 * MS  # above: linear in rows
    assert times.snapshot() == {2: 30 * MS, 8: 90 * MS}


def test_completion_estimate_single_instance_batching() -> None:
    # 9 rows ahead of key A plus ours (1) at max 4: batches 4, 4, 2 (ours last); 3 rows of key B: one batch.
    ahead = [(A, 3), (A, 3), (A, 3), (B, 3)]
    estimate = per_row(10)
    completion = estimate_completion_ns(
        ahead, (A, 1), batching=True, max_batch_size=4, busy_ns=[5 * MS], instances=1, estimate=estimate
    )
    assert completion == (5 + 40 + 40 + 30 + 20) * MS


def test_completion_estimate_spreads_over_instances() -> None:
    ahead = [(A, 1)] * 4
    estimate = per_row(10)
    one = estimate_completion_ns(
        ahead, (A, 1), batching=False, max_batch_size=1, busy_ns=[], instances=1, estimate=estimate
    )
    two = estimate_completion_ns(
        ahead, (A, 1), batching=False, max_batch_size=1, busy_ns=[30 * MS], instances=2, estimate=estimate
    )
    assert one == 50 * MS
    # instance 1 busy for 30 ms: three go on instance 2 (0-30), then the 4th and ours side by side
    assert two == 40 * MS
    idle = estimate_completion_ns(
        [], (A, 1), batching=False, max_batch_size=1, busy_ns=[], instances=2, estimate=estimate
    )
    assert idle == 10 * MS
    assert (
        estimate_completion_ns(
            ahead, (A, 1), batching=False, max_batch_size=1, busy_ns=[], instances=1, estimate=unknown
        )
        is None
    )


def test_retry_after() -> None:
    assert retry_after_s(90 * MS, 100 * MS) is None
    assert retry_after_s(101 * MS, 100 * MS) == 1.0  # at least a second
    assert retry_after_s(4_100 * MS, 100 * MS) == 4.0
