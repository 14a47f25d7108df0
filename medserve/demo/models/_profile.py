"""How much the trained example models train: a named profile, never a time budget.

Every trained example runs a fixed number of seeded steps on a fixed number of threads, so a busy
machine takes longer but builds the same model. ``$MEDSERVE_EXAMPLES_PROFILE`` picks the profile:

- ``default`` (unset): the documented models, a few minutes for all of them on two cores;
- ``test``: fewer steps for the test suite, with floors of its own (lower, measured the same way).

A model whose training is already seconds long trains the same in both profiles.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from typing import Literal, TypeVar

PROFILE_ENV = "MEDSERVE_EXAMPLES_PROFILE"
Profile = Literal["default", "test"]
PROFILES: tuple[Profile, ...] = ("default", "test")

TRAINING_THREADS = 1
"""torch threads while an example trains. The thread count changes the floating-point sums, so it is
fixed to keep one build like the next; one thread also never waits on a core another process holds."""

_T = TypeVar("_T")
_CHOSEN: contextvars.ContextVar[Profile | None] = contextvars.ContextVar("example_profile", default=None)


def current_profile() -> Profile:
    """The profile chosen by ``using_profile`` around this call, else the one named by
    ``$MEDSERVE_EXAMPLES_PROFILE`` (``default`` when unset or empty).

    Raises ``ValueError`` naming the variable when it holds anything else."""
    chosen = _CHOSEN.get()
    if chosen is not None:
        return chosen
    raw = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not raw:
        return "default"
    if raw not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={raw!r} is not a profile; expected one of {', '.join(PROFILES)}")
    return raw


def for_profile(values: Mapping[Profile, _T], profile: Profile | None = None) -> _T:
    """``values[profile]`` (the current profile when None)."""
    return values[current_profile() if profile is None else profile]


def check_profile(name: str) -> Profile:
    """``name`` as a profile; raises ``ValueError`` naming the profiles when it is none of them."""
    for profile in PROFILES:
        if name == profile:
            return profile
    raise ValueError(f"{name!r} is not an example profile; expected one of {', '.join(PROFILES)}")


@contextlib.contextmanager
def using_profile(profile: Profile | None) -> Iterator[Profile]:
    """Build with ``profile`` inside the block (the environment's when None); yields the profile."""
    if profile is None:
        yield current_profile()
        return
    token = _CHOSEN.set(check_profile(profile))
    try:
        yield profile
    finally:
        _CHOSEN.reset(token)
