"""The console door's plumbing: sessions, CSRF and origin checks, rendering, errors, sign-in and
sign-out, static files and the event stream (the routes are in :mod:`medserve.transport.console`).

The operator console's pages are served over the one HTTP server, under ``/console``.

Sign-in exchanges an API token for a session cookie (HttpOnly, SameSite=Strict, Path=/console,
Secure under TLS); the token stays on the server (:mod:`medserve.console.sessions`) and every request
is authenticated again with it (door ``console``), so roles, grants, expiry and revocation apply as on
the API. Every action is a POST carrying the session's CSRF token (and, when the browser sends one, an
Origin of this server); every action is audited. Pages are server-rendered; ``/console/events`` sends
their live figures as server-sent events. Errors answer through the REST door's table
(:data:`medserve.transport.http.STATUS_CODES`) as an HTML page; a missing or ended session goes to the
sign-in page.

The pages and actions are in :mod:`medserve.transport.console_pages`.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.resources
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from medserve.console.events import live_snapshot
from medserve.console.parts import ConsoleParts
from medserve.console.sessions import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    Session,
    SessionStore,
    new_secret,
    same_secret,
)
from medserve.transport.http import STATUS_CODES
from medserve.values.access import Caller
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import (
    InvalidInput,
    MedserveError,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger(__name__)

PREFIX = "/console"
NAV = (
    ("overview", "Overview", "/console"),
    ("models", "Models", "/console/models"),
    ("jobs", "Jobs", "/console/jobs"),
    ("imaging", "Imaging", "/console/imaging"),
    ("ward", "Ward", "/console/ward"),
    ("audit", "Audit", "/console/audit"),
    ("profiles", "Profiles", "/console/profiles"),
    ("planner", "Planner", "/console/planner"),
)
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 256 * 1024
EVENT_INTERVAL_S = 2.0


class NeedsSignIn(Exception):
    """No live session (never signed in, signed out, idle too long, or its token no longer valid)."""


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def _clock(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%H:%M:%S UTC")


class ConsoleDoor:
    def __init__(self, parts: ConsoleParts, idle_timeout_s: float = 900.0) -> None:
        self.parts = parts
        self.sessions = SessionStore(idle_timeout_s)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("medserve.console", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(ms=_ms, num=_num, pct=_pct, clock=_clock)

    # -- sessions -------------------------------------------------------------------------------
    async def _authenticate(self, request: Request, session: Session) -> Caller:
        client = request.client
        try:
            return await self.parts.service.authenticate(
                f"Bearer {session.credential}",
                door="console",
                peer=f"{client.host}:{client.port}" if client else "",
                request_id=request.headers.get("x-request-id", ""),
            )
        except Unauthenticated:
            self.sessions.end(session.id)
            raise NeedsSignIn() from None

    async def signed_in(self, request: Request, *, touch: bool = True) -> tuple[Session, Caller]:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), touch=touch)
        if session is None:
            raise NeedsSignIn()
        return session, await self._authenticate(request, session)

    async def form(self, request: Request) -> dict[str, str]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and kind != "application/x-www-form-urlencoded":
            raise InvalidInput("console forms are sent as application/x-www-form-urlencoded")
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"the form cannot be read: {exc}") from None

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def action(self, request: Request) -> tuple[Session, Caller, dict[str, str]]:
        """A POST's session, caller and form, after its CSRF token and origin are checked."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise NeedsSignIn()
        fields = await self.form(request)
        if not self.same_origin(request) or not SessionStore.csrf_ok(session, fields.get("csrf")):
            log.warning(
                "console: refused a %s to %s without a valid CSRF token", request.method, request.url.path
            )
            raise PermissionDenied(
                "this form's security token is missing or out of date: reload the page and retry"
            )
        return session, await self._authenticate(request, session), fields

    async def record(
        self, caller: Caller, event: str, detail: str = "", status: str = "ok", model: str = ""
    ) -> None:
        await self.parts.service.record(
            AuditEvent(
                event=event,
                principal=caller.principal.name,
                door=caller.door,
                model=model,
                request_id=caller.request_id,
                status=status,
                detail=detail[:500],
            )
        )

    # -- answers --------------------------------------------------------------------------------
    def render(
        self, template: str, session: Session | None, page: str = "", status: int = 200, **context: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            session=session,
            nav=NAV,
            page=page,
            title=context.pop("title", dict((k, label) for k, label, _ in NAV).get(page, "medserve")),
            flashes=session.take_flashes() if session is not None else [],
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    @staticmethod
    def redirect(location: str) -> RedirectResponse:
        return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})

    def cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int | None
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with a missing session sent to the sign-in page and every ``MedserveError``
        answered as an error page with its status from the REST door's table."""

        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except NeedsSignIn:
                return self.redirect(f"{PREFIX}/signin")
            except MedserveError as exc:
                status = STATUS_CODES.of(exc)
                session = self.sessions.get(request.cookies.get(SESSION_COOKIE), touch=False)
                heading = (
                    "Not allowed" if status == 403 else "Not found" if status == 404 else "Could not do that"
                )
                return self.render("error.html", session, status=status, heading=heading, message=str(exc))
            except Exception as exc:  # a bug must not take the server down; the operator hears of it
                log.exception("console: unexpected error serving %s %s", request.method, request.url.path)
                return self.render(
                    "error.html",
                    None,
                    status=500,
                    heading="Server error",
                    message=f"{type(exc).__name__}: {exc}",
                )

        return wrapper

    # -- sign-in, sign-out, static files, events ------------------------------------------------
    async def signin_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        token = new_secret()
        response = self.render(
            "signin.html",
            None,
            status=status,
            title="Sign in",
            error=error,
            signin_csrf=token,
            idle_minutes=round(self.sessions.idle_timeout_s / 60),
        )
        self.cookie(request, response, SIGNIN_COOKIE, token, 600)
        return response

    async def signin(self, request: Request) -> Response:
        fields = await self.form(request)
        if not self.same_origin(request) or not same_secret(
            request.cookies.get(SIGNIN_COOKIE, ""), fields.get("csrf")
        ):
            return await self.signin_page(request, "The sign-in form expired: please sign in again.", 403)
        token = fields.get("token", "").strip()
        if not token:
            return await self.signin_page(request, "Enter your API token.", 400)
        client = request.client
        try:
            caller = await self.parts.service.authenticate(
                f"Bearer {token}", door="console", peer=f"{client.host}:{client.port}" if client else ""
            )
        except Unauthenticated as exc:
            return await self.signin_page(request, f"Sign-in refused: {exc}", 401)
        session = self.sessions.create(token, caller.principal.name, caller.principal.role.value)
        await self.record(caller, "console.signin", f"session started (role {session.role})")
        response = self.redirect(PREFIX)
        self.cookie(request, response, SESSION_COOKIE, session.id, None)
        response.delete_cookie(SIGNIN_COOKIE, path=PREFIX)
        return response

    async def signout(self, request: Request) -> Response:
        session, caller, _ = await self.action(request)
        self.sessions.end(session.id)
        await self.record(caller, "console.signout", "session ended by the operator")
        response = self.redirect(f"{PREFIX}/signin")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        data = importlib.resources.files("medserve.console").joinpath("static", name).read_bytes()
        return Response(data, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})

    async def events(self, request: Request) -> Response:
        await self.signed_in(request, touch=False)

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n\n"
            while self.parts.service.ready():
                try:
                    _, caller = await self.signed_in(request, touch=False)
                except NeedsSignIn:
                    yield b"event: signed-out\ndata: {}\n\n"
                    return
                try:
                    snapshot = await live_snapshot(self.parts, caller)
                except Exception:  # the stream goes on (a model reloading, a database hiccup)
                    log.exception("console: the live figures could not be read")
                    await asyncio.sleep(EVENT_INTERVAL_S)
                    continue
                yield (
                    b"event: live\ndata: "
                    + json.dumps(snapshot, allow_nan=False, default=str).encode()
                    + b"\n\n"
                )
                await asyncio.sleep(EVENT_INTERVAL_S)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
