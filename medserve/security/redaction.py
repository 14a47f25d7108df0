"""No credential in any log line: tokens in query strings and headers are redacted where records are made.

Browsers put a WebSocket's or an event stream's token in the URL (``?access_token=...``), and uvicorn
logs those URLs; an exception's text may quote an ``Authorization`` header. :func:`install` wraps the
logging record factory, so every record of every logger (medserve's, uvicorn's, grpc's, a library's)
has its message redacted before any handler sees it, whatever handlers are configured later.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "<redacted>"

# ``name=value`` in a query string or a form, for every parameter that carries a credential
_QUERY = re.compile(
    r"(?i)\b(access_token|token|api_key|apikey|password|passwd|secret|client_secret)=([^&\s\"'<>]+)"
)
# ``Authorization: Bearer ...`` / ``Basic ...`` (a header, quoted or logged)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/=-]{8,})")
# medserve's own token format, wherever it appears
_MEDSERVE_TOKEN = re.compile(r"\bmsv_[A-Za-z0-9_-]{8,}")


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``<redacted>``."""
    text = _QUERY.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _MEDSERVE_TOKEN.sub(REDACTED, text)


class _RedactingFactory:
    """A log record factory that redacts the message the wrapped factory made."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: logging reports it when it emits
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record


def install() -> None:
    """Redact every log record of this process from now on (calling it again changes nothing)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
