"""The time windows of one model version, and its reference.

Windows are ``window_s`` seconds long and aligned to the epoch (a window starts at a multiple of
``window_s``); the newest ``keep_windows`` are kept. The reference is the first ``reference_windows``
windows with data, once the last of them has ended, or the window the operator pinned; the *current*
window is the newest one that is not part of the reference (it may still be filling).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from medserve.monitoring.histograms import Counts, merged_counts, real_edges
from medserve.monitoring.statistics import REAL, OutputStats, RunningStats


@dataclass(slots=True)
class Window:
    """The statistics of one window: per input, and per output by its kind."""

    start: float
    end: float
    observations: int = 0
    inputs: dict[str, RunningStats] = field(default_factory=dict)
    outputs: dict[str, OutputStats] = field(default_factory=dict)


@dataclass(slots=True)
class ReferenceOutput:
    """One output over the reference windows: merged statistics, histogram and (real-valued) edges."""

    kind: str
    running: RunningStats
    counts: Counts | None
    edges: np.ndarray | None


@dataclass(slots=True)
class Reference:
    """The reference windows merged, with the real-valued outputs' histogram edges."""

    windows: list[Window]
    observations: int
    inputs: dict[str, RunningStats]
    outputs: dict[str, ReferenceOutput]

    def holds(self, window: Window) -> bool:
        return any(window is w for w in self.windows)

    def edges_of(self, name: str) -> np.ndarray | None:
        output = self.outputs.get(name)
        return None if output is None else output.edges


@dataclass(slots=True)
class Tracker:
    """The windows of one model version, its reference, and the kind each output was first seen as."""

    windows: deque[Window] = field(default_factory=deque)
    first: list[Window] = field(default_factory=list)  # the automatic reference
    pinned: list[Window] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    late: int = 0  # observations for windows no longer kept

    def window_for(self, t: float, window_s: float, keep: int, reference_windows: int) -> Window | None:
        """The window that time ``t`` falls in (opened if new); None when it is no longer kept."""
        start = math.floor(t / window_s) * window_s
        windows = self.windows
        if windows and windows[-1].start == start:
            return windows[-1]
        if not windows or start > windows[-1].start:
            window = Window(start, start + window_s)
            windows.append(window)
            while len(windows) > keep:
                windows.popleft()
            if len(self.first) < reference_windows:
                self.first.append(window)
            return window
        return next((w for w in windows if w.start == start), None)

    def reference_windows(self, needed: int, now: float) -> list[Window] | None:
        if self.pinned is not None:
            return self.pinned
        if len(self.first) >= needed and self.first[-1].end <= now:
            return self.first
        return None

    def reference(self, needed: int, now: float, bins: int) -> Reference | None:
        """The reference at ``now``, merged; None while it is not complete."""
        windows = self.reference_windows(needed, now)
        if windows is None:
            return None
        inputs: dict[str, RunningStats] = {}
        running: dict[str, RunningStats] = {}
        for window in windows:
            for name, stats in window.inputs.items():
                inputs.setdefault(name, RunningStats()).merge(stats)
            for name, out in window.outputs.items():
                running.setdefault(name, RunningStats()).merge(out.running)
        outputs: dict[str, ReferenceOutput] = {}
        for name, merged in running.items():
            kind = self.kinds[name]
            edges = real_edges(merged, bins) if kind == REAL and merged.count else None
            parts = [w.outputs[name] for w in windows if name in w.outputs]
            outputs[name] = ReferenceOutput(kind, merged, merged_counts(kind, parts, edges, bins), edges)
        observations = sum(w.observations for w in windows)
        return Reference(windows, observations, inputs, outputs)

    def current(self, reference: Reference) -> Window | None:
        """The newest window outside the reference; None if there is none."""
        if not self.windows or reference.holds(self.windows[-1]):
            return None
        return self.windows[-1]
