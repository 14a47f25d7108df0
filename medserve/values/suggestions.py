"""Did-you-mean: the nearest known name to a misspelt one, for error messages everywhere (settings
keys, config.yaml keys, CLI commands and options, model names)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most likely misspells, or None when none is close."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` when a candidate is close to ``word``, else the empty string."""
    match = closest(word, candidates)
    return f" — did you mean '{match}'?" if match is not None else ""
