"""Hospital daily series with every kind of defect, shared by the unit and integration tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

DAY = dt.timedelta(days=1)


HEADER = "site,date,admissions,occupancy"


def day(n: int) -> str:
    return (dt.date(2024, 1, 1) + n * DAY).isoformat()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def defective_csv(path: Path) -> Path:
    """Site A with every kind of defect, then site B, a stray row of A, and B again."""
    lines = [HEADER] + [f"A,{day(d)},{10 + d},{50 + d}" for d in range(100)]
    lines[1 + 30] = f"A,{day(30)},abc,80"  # unparsable value: history restarts after it
    lines[1 + 59] = f"A,{day(59)},69,"  # missing occupancy
    lines[1 + 60] = "A,2024-02-30,70,110"  # no such date
    lines[1 + 62] = f"A,{day(62)},72"  # a field short
    lines[1 + 63] = ""  # a blank line: skipped
    lines[1 + 65] = f"A,{day(64)},74,114"  # duplicate of the row before
    lines[1 + 66] = f"A,{day(60)},75,115"  # out of order
    lines[1 + 67] = f"A,{day(70)},80,120"  # a gap of five days: history restarts at it
    lines[1 + 68] = f"A,{day(71)},-3,121"  # negative
    lines[1 + 69 :] = [f"A,{day(d)},{10 + d},{50 + d}" for d in range(72, 100)]  # rows 69..96
    lines += [f"B,{day(d)},{20 + d},{90 + d}" for d in range(30)]  # rows 97..126
    lines += [f"A,{day(100)},1,2"]  # row 127: site A again
    lines += [f"B,{day(30)},50,120"]  # row 128
    return write_lines(path, lines)


EXPECTED_PROBLEMS = {
    30: ("line 32", "unparsable admissions 'abc'"),
    59: ("line 61", "missing occupancy"),
    60: ("line 62", "unparsable date '2024-02-30' (expected %Y-%m-%d)"),
    62: ("line 64", "expected 4 fields, found 3 fields"),
    65: ("line 67", "duplicate date 2024-03-05 for site 'A'"),
    66: ("line 68", "out of order: it follows 2024-03-05"),
    67: ("line 69", "gap: 5 missing day(s) for site 'A' between 2024-03-05 and 2024-03-11"),
    68: ("line 70", "negative admissions (-3)"),
    127: ("line 129", "site 'A' appears again after site 'B'"),
}
