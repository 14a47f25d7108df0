"""The server's logging: one line format; medserve at the configured level; the libraries it uses at
WARNING, so their per-call INFO chatter (highdicom describing each SEG and SR it writes, alembic at
every start, pynetdicom on every association, httpx on every request) stays out of the log."""

from __future__ import annotations

import logging

#: Libraries whose INFO lines describe their own work, not the server's: WARNING and above only.
QUIET_LIBRARIES = ("alembic", "highdicom", "pynetdicom", "httpx", "httpcore", "monai", "openvino")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to standard error at ``level`` (debug, info, warning, error); libraries at WARNING or above.

    pynetdicom stays at WARNING even at debug: its DEBUG lines dump DICOM datasets, i.e. patient data.
    """
    threshold = logging.getLevelName(level.upper())
    logging.basicConfig(level=threshold, format=FORMAT)
    logging.getLogger().setLevel(threshold)  # also when a handler was already there
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, threshold))
