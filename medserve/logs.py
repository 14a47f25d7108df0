"""The server's logging: one line format (text, or JSON with the request id, trace id and principal of
the request being served); medserve at the configured level; the libraries it uses at WARNING, so their
per-call INFO chatter (highdicom describing each SEG and SR it writes, alembic at every start, pynetdicom
on every association, httpx on every request) stays out of the log. Triton's log settings extension
reads and changes the level and format at run time (:data:`LOG_SETTINGS`).

A JSON line never carries a token or patient data: only the fields below, and the message, whose texts
medserve writes without them.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import threading
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from medserve.monitoring.tracing import current_trace_id
from medserve.values.errors import InvalidInput, Unsupported

#: Libraries whose INFO lines describe their own work, not the server's: WARNING and above only.
QUIET_LIBRARIES = ("alembic", "highdicom", "pynetdicom", "httpx", "httpcore", "monai", "openvino")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

LogFormat = Literal["text", "json"]

#: The request being served in this task: (request id, principal name); set by the doors.
_REQUEST: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "medserve_request", default=("", "")
)


def bind_request(request_id: str, principal: str) -> None:
    """Name the request this task serves, for the log lines written while serving it."""
    _REQUEST.set((request_id, principal))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, trace_id, principal."""

    def format(self, record: logging.LogRecord) -> str:
        request_id, principal = _REQUEST.get()
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id,
            "trace_id": current_trace_id(),
            "principal": principal,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def _formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to standard error at ``level`` (debug, info, warning, error) in ``log_format``; libraries at
    WARNING or above.

    pynetdicom stays at WARNING even at debug: its DEBUG lines dump DICOM datasets, i.e. patient data.
    """
    threshold = logging.getLevelName(level.upper())
    logging.basicConfig(level=threshold, format=FORMAT)
    root = logging.getLogger()
    root.setLevel(threshold)  # also when a handler was already there
    for handler in root.handlers:
        handler.setFormatter(_formatter(log_format))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, threshold))
    LOG_SETTINGS.log_format = log_format


class LogSettings:
    """Triton's log settings extension over Python logging: ``log_info``, ``log_warning``,
    ``log_error``, ``log_verbose_level`` set the root level; ``log_format`` is ``default`` (text) or
    ``json``; ``log_file`` is read-only (medserve logs to standard error, for the service manager)."""

    def __init__(self) -> None:
        self.log_format: LogFormat = "text"
        self._lock = threading.Lock()

    def current(self) -> dict[str, bool | int | str]:
        level = logging.getLogger().getEffectiveLevel()
        return {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "json" if self.log_format == "json" else "default",
        }

    def update(self, changes: Mapping[str, Any]) -> dict[str, bool | int | str]:
        """Apply ``changes`` and return the settings now in force."""
        with self._lock:
            now = self.current()
            for key, value in changes.items():
                if key not in now:
                    raise InvalidInput(f"unknown log setting '{str(key)[:64]}'; known: {', '.join(now)}")
                if key == "log_file":
                    if value is not None and not isinstance(value, str):
                        raise InvalidInput("log_file must be a string")
                    if value not in ("", None):
                        raise Unsupported("log_file cannot be set: medserve logs to standard error")
                elif key == "log_format":
                    if value not in ("default", "json"):
                        raise InvalidInput("log_format must be 'default' or 'json'")
                elif key == "log_verbose_level":
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        raise InvalidInput("log_verbose_level must be a non-negative integer")
                elif not isinstance(value, bool):
                    raise InvalidInput(f"{key} must be true or false")
                now[key] = value
            level = (
                logging.DEBUG
                if now["log_verbose_level"]
                else logging.INFO
                if now["log_info"]
                else logging.WARNING
                if now["log_warning"]
                else logging.ERROR
                if now["log_error"]
                else logging.CRITICAL
            )
            if level != logging.getLogger().getEffectiveLevel() or "log_format" in changes:
                fmt: LogFormat = "json" if now["log_format"] == "json" else "text"
                configure_logging(logging.getLevelName(level).lower(), fmt)
            return self.current()


#: The process's log settings, changed through the log settings extension.
LOG_SETTINGS = LogSettings()
