"""Train several example models at once, one worker process each, so a build uses the machine's cores.

Every model trains on one torch thread whatever the number of workers (``_profile.TRAINING_THREADS``),
so a build with one worker and a build with six make the same models. Workers are started with
``spawn`` (no fork of a process that holds torch's thread pools); their progress lines come back to
this process's ``medserve.demo.models.progress`` logger through a queue, and the first failure
(``QualityFloorMissed`` included) is raised here after the models already started have finished.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from medserve.demo.models._profile import Profile, using_profile
from medserve.demo.models._progress import PROGRESS_LOGGER

ModelBuilder = Callable[[Path, str], None]
"""Builds the named model into the repository folder (a module-level function, so it pickles)."""


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_count(models: int, workers: int | None = None) -> int:
    """Processes for ``models`` trained models: ``workers`` (default: one per available core), at most
    one per model. Raises ``ValueError`` for ``workers`` < 1."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, min(models, available_cores() if workers is None else workers))


def build_in_workers(
    build: ModelBuilder, directory: Path, names: Sequence[str], profile: Profile, workers: int
) -> None:
    """Run ``build(directory, name)`` for every name in ``workers`` processes, in the order given
    (put the longest first). Raises the first worker's exception once the running builds end."""
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    listener = logging.handlers.QueueListener(queue, _Forward())
    listener.start()
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(queue,)
        ) as pool:
            futures: list[Future[None]] = [
                pool.submit(_task, build, directory, name, profile) for name in names
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [future for future in futures if future in done and future.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                wait(futures)
                error = failed[0].exception()
                if error is not None:
                    raise error
    finally:
        listener.stop()


class _Forward(logging.Handler):
    """Hands a worker's log record to this process's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _start_worker(queue: Any) -> None:
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.addHandler(logging.handlers.QueueHandler(queue))
    progress.setLevel(logging.INFO)
    progress.propagate = False


def _task(build: ModelBuilder, directory: Path, name: str, profile: Profile) -> None:
    with using_profile(profile):
        build(directory, name)
