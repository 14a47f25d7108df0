"""A model version's monitoring state as JSON, and the merge of several replicas' states into one.

Windows are aligned to the epoch, so replicas with the same ``window_s`` have windows with the same
starts; merging adds up the windows that share a start (:meth:`OutputStats.merge`,
:meth:`RunningStats.merge`). The merged tracker keeps the newest ``keep`` windows, takes as automatic
reference the earliest ``reference_windows`` windows that any replica took as its own, and as pinned
reference the windows any replica pinned (a pin is made on the replica that answered it).
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

from medserve.monitoring.statistics import OutputStats, RunningStats
from medserve.monitoring.windows import Tracker, Window


def _running_state(stats: RunningStats) -> list[float]:
    return [stats.count, stats.mean, stats.m2, stats.minimum, stats.maximum, stats.nonfinite]


def _running(state: list[float]) -> RunningStats:
    count, mean, m2, minimum, maximum, nonfinite = state
    return RunningStats(int(count), float(mean), float(m2), float(minimum), float(maximum), int(nonfinite))


def _output_state(stats: OutputStats) -> dict[str, Any]:
    return {
        "kind": stats.kind,
        "running": _running_state(stats.running),
        "histogram": None if stats.histogram is None else stats.histogram.tolist(),
        "out_of_range": stats.out_of_range,
        "sketch": None if stats.sketch is None else base64.b64encode(stats.sketch.serialize()).decode(),
        "categories": {str(value): count for value, count in stats.categories.items()},
        "other": stats.other,
    }


def _output(state: dict[str, Any], bins: int, capacity: int) -> OutputStats:
    stats = OutputStats(state["kind"], bins, capacity, _running(state["running"]))
    if state["histogram"] is not None:
        stats.histogram = np.asarray(state["histogram"], dtype=np.int64)
    stats.out_of_range = int(state["out_of_range"])
    if state["sketch"] is not None:
        stats.sketch = kll_doubles_sketch.deserialize(base64.b64decode(state["sketch"]))
    stats.categories = {int(value): int(count) for value, count in state["categories"].items()}
    stats.other = int(state["other"])
    return stats


def _window_state(window: Window) -> dict[str, Any]:
    return {
        "start": window.start,
        "end": window.end,
        "observations": window.observations,
        "inputs": {name: _running_state(stats) for name, stats in window.inputs.items()},
        "outputs": {name: _output_state(stats) for name, stats in window.outputs.items()},
    }


def tracker_state(tracker: Tracker, window_s: float) -> dict[str, Any]:
    """``tracker`` as JSON-able data (call under the monitor's lock)."""
    every = {w.start: w for w in [*tracker.windows, *tracker.first, *(tracker.pinned or [])]}
    return {
        "window_s": window_s,
        "kinds": dict(tracker.kinds),
        "late": tracker.late,
        "windows": [_window_state(w) for _, w in sorted(every.items())],
        "kept": [w.start for w in tracker.windows],
        "first": [w.start for w in tracker.first],
        "pinned": None if tracker.pinned is None else [w.start for w in tracker.pinned],
    }


def merge_states(
    states: list[dict[str, Any]], *, bins: int, capacity: int, keep: int, reference: int
) -> Tracker:
    """One tracker holding what every state's replica recorded (states of one ``window_s``)."""
    merged = Tracker()
    windows: dict[float, Window] = {}
    kept: set[float] = set()
    first: set[float] = set()
    pinned: set[float] | None = None
    for state in states:
        for name, kind in state["kinds"].items():
            merged.kinds.setdefault(name, kind)
        merged.late += int(state["late"])
        kept.update(state["kept"])
        first.update(state["first"])
        if state["pinned"] is not None:
            pinned = (pinned or set()) | set(state["pinned"])
        for doc in state["windows"]:
            window = windows.get(doc["start"])
            if window is None:
                window = windows[doc["start"]] = Window(float(doc["start"]), float(doc["end"]))
            window.observations += int(doc["observations"])
            for name, running in doc["inputs"].items():
                window.inputs.setdefault(name, RunningStats()).merge(_running(running))
            for name, output in doc["outputs"].items():
                if output["kind"] != merged.kinds.get(name, output["kind"]):
                    continue  # another replica saw this output first as another kind: keep one kind
                stats = _output(output, bins, capacity)
                if name in window.outputs:
                    window.outputs[name].merge(stats)
                else:
                    window.outputs[name] = stats
    merged.windows = deque(windows[start] for start in sorted(kept)[-keep:])
    merged.first = [windows[start] for start in sorted(first)[:reference]]
    merged.pinned = None if pinned is None else [windows[start] for start in sorted(pinned)]
    return merged
