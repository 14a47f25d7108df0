"""Why RDKit refused a molecule: its error log captured around a call, tidied into one line.

RDKit reports parse and sanitisation problems on its error log rather than in exceptions.
``rdBase.CaptureErrorLog`` (RDKit 2026.03 and later) redirects that log while a block runs; the
messages are then stripped of timestamps, caret drawings and repetition. With an older RDKit the log
is only silenced and the reason is generic. The capture swaps the process-wide log stream, so
captures are serialised by a lock; an RDKit error raised by another thread meanwhile may land in it.

``read_quietly`` is the cheap way to use it: RDKit's logs are silenced for the first try, and only
a failure (rare in real libraries) is repeated under the capture to learn why.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rdkit import rdBase

T = TypeVar("T")

_LOCK = threading.Lock()
_TIMESTAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\]\s?")
_PREFIXES = ("SMILES Parse Error: ", "ERROR: ")
_NOISE = ("moving to the beginning of the next molecule",)
_CARET = re.compile(r"^\s*[~^]+\s*$")
_MAX_LENGTH = 500


class RDKitMessages:
    """The RDKit error-log messages of one ``captured_errors`` block."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def reason(self, fallback: str) -> str:
        """The messages as one line (``fallback`` when RDKit said nothing)."""
        kept: list[str] = []
        for line in self.lines:
            if line not in kept:
                kept.append(line)
        # "Failed parsing SMILES 'x' for input: 'x'" only repeats what the lines before it said.
        if len(kept) > 1:
            kept = [line for line in kept if not line.startswith("Failed parsing SMILES")]
        text = "; ".join(kept) if kept else fallback
        return text if len(text) <= _MAX_LENGTH else text[: _MAX_LENGTH - 3] + "..."


@contextmanager
def captured_errors() -> Iterator[RDKitMessages]:
    """Capture RDKit's error log while the block runs, without printing it."""
    messages = RDKitMessages()
    capture_type = getattr(rdBase, "CaptureErrorLog", None)
    with _LOCK:
        if capture_type is None:
            with rdBase.BlockLogs():
                yield messages
            return
        with capture_type() as capture:
            try:
                yield messages
            finally:
                messages.lines = _tidy(str(capture.messages))


def read_quietly(read: Callable[[], T | None], fallback: str) -> tuple[T | None, str]:
    """``(read(), "")`` with RDKit's logs silenced; when ``read()`` gives None, it is called again
    with the error log captured and the result is ``(None, reason)`` (``fallback`` if RDKit is silent).
    ``read`` must be repeatable (parse the same text again)."""
    with rdBase.BlockLogs():
        result = read()
    if result is not None:
        return result, ""
    with captured_errors() as errors:
        result = read()
    return result, "" if result is not None else errors.reason(fallback)


def _tidy(log: str) -> list[str]:
    """Log lines without timestamps and prefixes; a caret line and the echo of the input above it
    (``check for mistakes around position 3:`` / ``CC(`` / ``~~^``) are dropped."""
    lines: list[str] = []
    for raw in log.splitlines():
        line = _TIMESTAMP.sub("", raw).strip()
        if _CARET.match(line):
            if lines:
                lines.pop()
            continue
        for prefix in _PREFIXES:
            if line.startswith(prefix):
                line = line[len(prefix) :].strip()
        if line and line not in _NOISE:
            lines.append(line.rstrip(":").strip())
    return lines
