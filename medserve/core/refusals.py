"""Every refusal a door answers is audited once, with its status, its reason and the principal when known.

The dataplane audits what it refuses itself (an inference it could not run, a request a door could not
decode, a failed authentication) and marks the error as audited (:func:`audited_status`). What is left,
a refusal a door answers without the dataplane having audited it (a model's metadata it may not read,
an unknown model or route, an unsupported extension, a header block past the limit), the door records
through :func:`audit_refusal` as a ``request.refused`` record. Doors remember the authenticated caller
of the request being served (:func:`remember_caller`), so the record names it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token

from medserve.values.access import Caller
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError

log = logging.getLogger(__name__)

_AUDITED = "medserve_audited"
_CALLER: ContextVar[Caller | None] = ContextVar("medserve_refusal_caller", default=None)

Record = Callable[[AuditEvent], Awaitable[None]]


def audited_status(exc: BaseException) -> str:
    """The audit status of ``exc`` (its class name, or ``internal_error``), marking it as audited."""
    with contextlib.suppress(AttributeError):  # a type without a __dict__ may be audited twice
        setattr(exc, _AUDITED, True)
    return type(exc).__name__ if isinstance(exc, MedserveError) else "internal_error"


def is_audited(exc: BaseException) -> bool:
    return bool(getattr(exc, _AUDITED, False))


def begin_request() -> Token[Caller | None]:
    """Start serving a request in this context: no caller known yet."""
    return _CALLER.set(None)


def end_request(token: Token[Caller | None]) -> None:
    _CALLER.reset(token)


def remember_caller(caller: Caller) -> None:
    """The authenticated caller of the request being served in this context."""
    _CALLER.set(caller)


def current_caller() -> Caller | None:
    return _CALLER.get()


async def audit_refusal(
    record: Record,
    exc: BaseException,
    *,
    door: str,
    what: str,
    model: str = "",
    peer: str = "",
    status: str = "",
) -> None:
    """Record ``exc``, answered by ``door`` to ``what`` (e.g. ``HTTP 404 GET /v2/models/x``), unless
    the dataplane already did; ``status`` names a refusal that is not a ``MedserveError`` (an unknown
    route). A failure to record is logged, never raised: the answer still goes out."""
    if is_audited(exc):
        return
    audited_status(exc)
    caller = current_caller()
    event = AuditEvent(
        event="request.refused",
        principal=caller.principal.name if caller is not None else "",
        door=door,
        model=model,
        request_id=caller.request_id if caller is not None else "",
        status=status or audited_status(exc),
        detail=f"{what}: {exc}"[:500] + (f" (peer {peer})" if peer and caller is None else ""),
    )
    try:
        await record(event)
    except Exception:
        log.exception("could not audit a refusal (%s)", what)
