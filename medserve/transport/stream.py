"""Streaming door: the patient monitor over WebSocket, and its alerts over REST and Server-Sent Events.

=====================================  ========================================================
route                                  does
=====================================  ========================================================
WS   ``/v2/monitor/stream``            one JSON sample per text frame in (``sample_from_json``),
                                       one JSON reply per sample out (``result_to_json``); a bad
                                       sample gets ``{"error", "sample_seq"?, "sequence_id"?}``
                                       and the socket stays open
GET  ``/v2/alerts``                    kept alerts, newest first; ``sequence_id``,
                                       ``unacknowledged=true``, ``limit`` (default 100)
GET  ``/v2/alerts/stream``             ``text/event-stream``: ``event: alert`` per published or
                                       acknowledged alert; a comment line every ``keepalive_s``
POST ``/v2/alerts/{id}/acknowledge``   body ``{"by": "nurse-id"}`` (optional); the updated alert
=====================================  ========================================================

Routes only translate; the monitor and the ``AlertHub`` hold the logic. A WebSocket refused at the
handshake is answered with the REST door's HTTP status where the server can send one (the ASGI
``websocket.http.response`` extension), else closed with the code this door's one table,
:data:`CLOSE_CODES`, gives the error; the alert routes and the event stream answer through the REST
door's table. An error about one sample is a frame, the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from medserve.core.refusals import audit_refusal
from medserve.core.service import InferenceService
from medserve.protocol.rest_codec import dumps, loads
from medserve.streaming.alerts import AlertHub, AlertNotFound
from medserve.streaming.messages import (
    MONITOR_MODEL,
    Alert,
    MonitorResult,
    MonitorSample,
    result_to_json,
    sample_from_json,
)
from medserve.transport.http import authenticated, error_response, guarded, json_response, status_of
from medserve.transport.status_table import StatusTable
from medserve.values.access import Action, Caller
from medserve.values.digest import bytes_digest
from medserve.values.errors import (
    Conflict,
    DeadlineExceeded,
    InferenceFailed,
    InvalidConfig,
    InvalidInput,
    JobNotFound,
    MedserveError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    Unsupported,
)

log = logging.getLogger(__name__)

_MAX_ACK_BODY = 64 * 1024
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")

#: WebSocket close codes (RFC 6455 section 7.4.1, IANA registry) this door uses.
POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003
MESSAGE_TOO_BIG = 1009
_STREAM_PATH = "/v2/monitor/stream"
_STREAM_SAMPLE = f"WebSocket {_STREAM_PATH}: a sample refused"
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

#: The streaming door's one table: medserve's error tree to the code a WebSocket is closed with
#: (the nearest listed class of an error wins). A refusal the client must fix is a policy violation;
#: a server that cannot serve now says "try again later"; a server fault is an internal error.
CLOSE_CODES: StatusTable[int] = StatusTable(
    "WebSocket",
    {
        MedserveError: INTERNAL_ERROR,
        Unauthenticated: POLICY_VIOLATION,
        PermissionDenied: POLICY_VIOLATION,
        InvalidInput: POLICY_VIOLATION,
        ModelNotFound: POLICY_VIOLATION,
        JobNotFound: POLICY_VIOLATION,
        AlertNotFound: POLICY_VIOLATION,
        Conflict: POLICY_VIOLATION,
        PayloadTooLarge: MESSAGE_TOO_BIG,
        Unsupported: UNSUPPORTED_DATA,
        ModelNotReady: TRY_AGAIN_LATER,
        Overloaded: TRY_AGAIN_LATER,
        DeadlineExceeded: TRY_AGAIN_LATER,
        StoreUnavailable: TRY_AGAIN_LATER,
        InvalidConfig: INTERNAL_ERROR,
        ModelLoadError: INTERNAL_ERROR,
        InferenceFailed: INTERNAL_ERROR,
    },
)


class MonitorLike(Protocol):
    async def handle(self, sample: MonitorSample, caller: Caller | None = None) -> MonitorResult: ...


def _error_frame(message: str, doc: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"error": message}
    if isinstance(doc, dict):
        seq = doc.get("sample_seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            frame["sample_seq"] = seq
        sequence_id = doc.get("sequence_id")
        if isinstance(sequence_id, (int, str)) and not isinstance(sequence_id, bool):
            frame["sequence_id"] = sequence_id
    return frame


async def _reply_to(
    service: InferenceService, monitor: MonitorLike, caller: Caller, data: str | bytes | None
) -> dict[str, Any]:
    """The reply frame for one incoming frame: a result, or an error naming the sample if known."""
    doc: Any = None
    try:
        if not isinstance(data, str):
            raise InvalidInput("send each sample as one JSON text frame")
        raw = data.encode()
        doc = loads(raw, "monitor message")
        sample = sample_from_json(doc)
        result = await service.call(
            caller,
            MONITOR_MODEL,
            lambda: monitor.handle(sample, caller),
            input_digest=bytes_digest(raw),
            output_digest=lambda r: bytes_digest(dumps(result_to_json(r))),
            patient=sample.sequence_id,
            facts={"model_version": "1"},
        )
        return result_to_json(result)
    except MedserveError as exc:  # audited here unless the dataplane did (an inference refused)
        await audit_refusal(service.record, exc, door="websocket", what=_STREAM_SAMPLE, model=MONITOR_MODEL)
        return _error_frame(str(exc), doc)
    except Exception as exc:  # a bug must not end the patient's stream; the client hears of it
        log.exception("unexpected error handling a monitor sample")
        return _error_frame(f"internal error: {type(exc).__name__}: {exc}", doc)


def _query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidInput(f"query parameter '{name}' must be true or false, got '{raw}'")


def _query_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100").strip()
    if not raw.isdigit():
        raise InvalidInput(f"query parameter 'limit' must be a non-negative integer, got '{raw}'")
    return int(raw)


def _sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


async def refuse(websocket: WebSocket, exc: MedserveError) -> None:
    """Refuse a WebSocket handshake: the HTTP status of ``exc`` where the server can answer one, else
    a close with its code in :data:`CLOSE_CODES` (the reason cut to fit a close frame)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(str(exc), status_of(exc)))
    else:
        await websocket.close(code=CLOSE_CODES.of(exc), reason=str(exc)[:120])


def stream_routes(
    service: InferenceService, monitor: MonitorLike, alerts: AlertHub, keepalive_s: float = 15.0
) -> list[BaseRoute]:
    """The streaming door's routes, to mount beside the REST door's."""

    async def monitor_stream(websocket: WebSocket) -> None:
        try:
            caller = await authenticated(service, websocket, "websocket")
            caller.principal.require(Action.INFER, MONITOR_MODEL)
        except MedserveError as exc:
            what = f"WebSocket handshake {_STREAM_PATH}"
            await audit_refusal(service.record, exc, door="websocket", what=what, model=MONITOR_MODEL)
            await refuse(websocket, exc)
            return
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes")
                reply = await _reply_to(service, monitor, caller, data)
                await websocket.send_text(dumps(reply).decode())
        except WebSocketDisconnect:
            return

    async def list_alerts(request: Request) -> Response:
        (await authenticated(service, request, "http")).principal.require(Action.READ, MONITOR_MODEL)
        sequence_id = request.query_params.get("sequence_id") or None
        found = alerts.list(
            sequence_id=sequence_id,
            unacknowledged_only=_query_flag(request, "unacknowledged"),
            limit=_query_limit(request),
        )
        return json_response([alert.to_json() for alert in found])

    async def alert_stream(request: Request) -> Response:
        (await authenticated(service, request, "sse")).principal.require(Action.READ, MONITOR_MODEL)
        subscription = alerts.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while True:
                    try:
                        alert = await asyncio.wait_for(anext(subscription), keepalive_s)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    except StopAsyncIteration:
                        return
                    yield _sse("alert", dumps(alert.to_json()))
            finally:
                await subscription.aclose()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def acknowledge(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.ACKNOWLEDGE, MONITOR_MODEL)
        body = await request.body()
        if len(body) > _MAX_ACK_BODY:
            raise InvalidInput(f"an acknowledgement body must be under {_MAX_ACK_BODY} bytes")
        doc = loads(body, "acknowledgement") if body.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidInput("an acknowledgement body must be a JSON object")
        by = doc.get("by", "unspecified")
        if not isinstance(by, str) or not by.strip():
            raise InvalidInput("'by' must be a non-empty string naming who acknowledges")
        alert_id = request.path_params["alert_id"]

        async def ack() -> Alert:
            return alerts.acknowledge(alert_id, by.strip(), time.time())

        alert = await service.call(
            caller,
            MONITOR_MODEL,
            ack,
            event="alert.acknowledge",
            action=Action.ACKNOWLEDGE,
            facts={"request_id": alert_id},
        )
        return json_response(alert.to_json())

    return [
        WebSocketRoute("/v2/monitor/stream", monitor_stream),
        Route("/v2/alerts", guarded(list_alerts), methods=["GET"]),
        Route("/v2/alerts/stream", guarded(alert_stream), methods=["GET"]),
        Route("/v2/alerts/{alert_id}/acknowledge", guarded(acknowledge), methods=["POST"]),
    ]
