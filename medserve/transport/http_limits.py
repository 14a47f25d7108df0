"""The HTTP door's connection limits, enforced in the protocol before any request reaches the app.

uvicorn's httptools protocol reads a header block of any size, never times out a connection that has
not yet sent a request (idle, slowloris) nor a body that stalls, and accepts connections until the
process runs out of file descriptors. :func:`limited_protocol` makes a subclass of it (plain or TLS)
that holds a door:

- a header block (request line and headers) larger than ``max_header_bytes`` is answered 431 and the
  connection closed, after reading at most one more socket read past the limit;
- an idle connection (no byte of a first request) is closed after ``keepalive_timeout_s``;
- a request whose line and headers are not complete ``header_timeout_s`` after its first byte is
  answered 408 and closed;
- a body that goes ``body_timeout_s`` without a byte is closed (the app hears a disconnect);
- beyond ``max_connections`` open connections a new one is answered 503 and closed at once, with a
  warning logged at most once a minute.

Each request's scope carries when its headers were read (``medserve.received_ns``, on
``time.perf_counter_ns``): its ``Request-Timeout`` counts from then, so the time it waited for the
event loop before the application ran is part of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medserve.transport.http_deadline import RECEIVED_NS

log = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP door's limits (each a setting; see docs/SECURITY.md)."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 512
    #: told of each refusal answered before any request reached the app, to audit it: the HTTP status
    #: (431 header block too large, 408 header or body too slow, 503 too many connections), the
    #: reason and the peer
    on_refused: Callable[[int, str, str], None] | None = None


def _answer(status: int, reason: str, message: str) -> bytes:
    body = message.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
        + ("retry-after: 1\r\n" if status == 503 else "")
        + "\r\n"
    ).encode("ascii") + body


class _LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` holding the limits of :attr:`limits` (set by :func:`limited_protocol`)."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    _last_warning: ClassVar[list[float]] = [0.0]  # shared by the door's connections

    _reading_headers = True
    _received = 0  # bytes received while the header block was being read
    _header_size = 0  # exact size of the request line and headers parsed so far
    _too_large = False
    _timer: asyncio.TimerHandle | None = None
    _timer_kind = ""

    # ---------------------------------------------------------------- timers

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._timer_kind = kind
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = ""

    def _expired(self) -> None:
        kind, self._timer = self._timer_kind, None
        if self.transport is None or self.transport.is_closing():
            return
        if kind == "body" and self.flow is not None and self.flow.read_paused:
            # the app has not taken what came yet: the client is not the slow one
            self._arm("body", self.limits.body_timeout_s)
            return
        peer = self._peer()
        reason = ""
        if kind == "header":
            log.info(
                "HTTP: %s sent no complete request header in %.0f s: closed",
                peer,
                self.limits.header_timeout_s,
            )
            self.transport.write(_answer(408, "Request Timeout", "request header not received in time"))
            timeout = self.limits.header_timeout_s
            reason = f"no complete request header in {timeout:g} s (http_header_timeout_s)"
        elif kind == "body":
            log.info("HTTP: %s sent no body byte for %.0f s: closed", peer, self.limits.body_timeout_s)
            reason = f"no request body byte for {self.limits.body_timeout_s:g} s (http_body_timeout_s)"
        self.transport.close()
        if reason:  # an idle keep-alive connection closed is no refusal
            self._refused(408, reason, peer)

    def _refused(self, status: int, reason: str, peer: str) -> None:
        if self.limits.on_refused is not None:
            self.limits.on_refused(status, reason, peer)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            now = time.monotonic()
            if now - self._last_warning[0] >= _WARN_EVERY_S:
                self._last_warning[0] = now
                log.warning(
                    "HTTP: %d connections open, the limit (max_connections): new connections are "
                    "answered 503 and closed",
                    self.limits.max_connections,
                )
            transport.write(_answer(503, "Service Unavailable", "too many open connections"))
            transport.close()
            limit = f"{self.limits.max_connections} connections open, the limit (max_connections)"
            self._refused(503, limit, self._peer())
            return
        self._arm("idle", self.limits.keepalive_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            if self._timer_kind != "header":
                self._arm("header", self.limits.header_timeout_s)
            self._received += len(data)
        elif self._timer_kind == "body":
            self._arm("body", self.limits.body_timeout_s)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._too_large or (self._reading_headers and self._received > self.limits.max_header_bytes):
            self._refuse_header()

    def _refuse_header(self) -> None:
        self._disarm()
        peer = self._peer()
        log.info("HTTP: %s sent a header block over %d bytes: 431", peer, self.limits.max_header_bytes)
        message = f"request header block exceeds the limit of {self.limits.max_header_bytes} bytes"
        self.transport.write(_answer(431, "Request Header Fields Too Large", message))
        self.transport.close()
        self._refused(431, message, peer)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._reading_headers = True
        self._header_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self.limits.max_header_bytes:
            self._too_large = True
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._received = 0
        if self._too_large:
            return  # no app task: data_received answers 431
        self._arm("body", self.limits.body_timeout_s)
        self.scope[RECEIVED_NS] = time.perf_counter_ns()  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        self._disarm()
        self._reading_headers = True
        self._received = 0
        super().on_message_complete()


def limited_protocol(base: type[HttpToolsProtocol], limits: HttpLimits) -> type[HttpToolsProtocol]:
    """``base`` (uvicorn's httptools protocol or a subclass) holding ``limits``."""
    made: type[HttpToolsProtocol] = type(
        f"Limited{base.__name__}",
        (_LimitedHttpToolsProtocol, base),
        {"limits": limits, "_last_warning": [0.0]},
    )
    return made
