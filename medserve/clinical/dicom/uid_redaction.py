"""No DICOM instance UID in a log line, whoever logs it.

Study, series and SOP Instance UIDs identify a patient's examination, so log lines carry a short
hash instead (``uid:<12 hex>``, the same hash each time). medserve's own lines hash UIDs where they
are written; :class:`RedactUIDs` does it for third-party loggers too (highdicom names the source
instance in its INFO lines, pydicom and pynetdicom quote values in warnings): installed on the root
logger's handlers and on the DICOM libraries' loggers, it rewrites any record whose text holds a UID.
UIDs of the DICOM standard (SOP classes, transfer syntaxes: PS3.6 Annex A) identify nobody and are
left as they are.
"""

from __future__ import annotations

import hashlib
import logging
import re

from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

#: A UID in running text: at least five dotted components, none with a leading zero, not inside a
#: longer token (four components would also match IPv4 addresses).
UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9][0-9]*)){4,}(?![\w.])")

#: Loggers of the libraries that see DICOM data sets; their records are redacted at the source.
DICOM_LOGGERS = ("highdicom", "pydicom", "pynetdicom", "pylibjpeg", "medserve")


def uid_ref(uid: str) -> str:
    """The pseudonym a log line shows for ``uid``."""
    return "uid:" + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]


def redact(text: str) -> str:
    """``text`` with every UID that is not one of the standard's replaced by its ``uid_ref``."""

    def replace(match: re.Match[str]) -> str:
        uid = match.group(0)
        return uid if uid in UID_dictionary else uid_ref(uid)

    return UID_IN_TEXT.sub(replace, text)


class RedactUIDs(logging.Filter):
    """Rewrites a record's message (and its exception text) when they hold a UID; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is left for the handler to report
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactUIDs()


def install() -> None:
    """Redact UIDs in every record that reaches the root logger's handlers or the DICOM loggers.

    Idempotent. highdicom's INFO lines (which attributes it copied from which instance) are below
    what an operator needs, so its logger is raised to WARNING unless someone chose a level for it.
    """
    highdicom = logging.getLogger("highdicom")
    if highdicom.level == logging.NOTSET:
        highdicom.setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    names = [
        name
        for name in logging.root.manager.loggerDict
        if any(name == prefix or name.startswith(prefix + ".") for prefix in DICOM_LOGGERS)
    ]
    for name in {*DICOM_LOGGERS, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
