"""Durable file system steps shared by every writer of files that must survive a crash."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_directory(directory: Path, *, strict: bool = False) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable.

    ``strict``: an error opening or syncing the directory is raised (the audit journal must know);
    otherwise it is ignored, for platforms and file systems where a directory cannot be opened.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        if strict:
            os.fsync(fd)
        else:
            with contextlib.suppress(OSError):
                os.fsync(fd)
    finally:
        os.close(fd)
