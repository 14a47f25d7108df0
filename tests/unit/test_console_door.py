"""The console door's sign-in, cookies, CSRF and origin checks over an in-memory ASGI client (no
sockets), with a stand-in for the service that knows one token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from medserve.console.parts import ConsoleParts
from medserve.core.service import InferenceService
from medserve.store.database import Database
from medserve.transport.console_door import PREFIX, ConsoleDoor
from medserve.values.access import Caller, Principal, Role
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import Unauthenticated

TOKEN = "msv_abc_secret"


class FakeService:
    def __init__(self) -> None:
        self.records: list[AuditEvent] = []
        self.valid = True

    async def authenticate(
        self, authorization: str | None, client_cert_cn: str | None = None, **kw: Any
    ) -> Caller:
        if authorization != f"Bearer {TOKEN}" or not self.valid:
            raise Unauthenticated("invalid token")
        return Caller(Principal("alice", Role.ADMIN), kw["door"], "rid")

    async def record(self, event: AuditEvent) -> None:
        self.records.append(event)

    def ready(self) -> bool:
        return True


def app(service: FakeService) -> tuple[Starlette, ConsoleDoor]:
    parts = ConsoleParts(cast(InferenceService, service), CollectorRegistry(), cast(Database, None))
    door = ConsoleDoor(parts, idle_timeout_s=60)

    async def act(request: Request) -> Response:
        _, caller, fields = await door.action(request)
        return PlainTextResponse(f"done by {caller.principal.name}: {fields.get('x', '')}")

    async def page(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return PlainTextResponse(f"{caller.principal.name} csrf={session.csrf}")

    routes = [
        Route(f"{PREFIX}/signin", door.guarded(door.signin_page), methods=["GET"]),
        Route(f"{PREFIX}/signin", door.guarded(door.signin), methods=["POST"]),
        Route(f"{PREFIX}/signout", door.guarded(door.signout), methods=["POST"]),
        Route(f"{PREFIX}/page", door.guarded(page), methods=["GET"]),
        Route(f"{PREFIX}/act", door.guarded(act), methods=["POST"]),
    ]
    return Starlette(routes=routes), door


async def signed_in(client: httpx.AsyncClient) -> str:
    form = await client.get("/console/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    answer = await client.post("/console/signin", data={"csrf": token.group(1), "token": TOKEN})
    assert answer.status_code == 303, answer.text
    page = await client.get("/console/page")
    found = re.search(r"csrf=(\S+)", page.text)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_session_cookie_is_strict_httponly_and_secure_under_tls(scheme: str) -> None:
    service = FakeService()
    application, _ = app(service)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://console.test") as client:
        form = await client.get("/console/signin")
        signin_cookie = form.headers["set-cookie"].lower()
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        answer = await client.post("/console/signin", data={"csrf": token.group(1), "token": TOKEN})
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("medserve_console="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/console"} <= flags
        assert ("secure" in flags) == (scheme == "https")
        assert ("secure" in signin_cookie) == (scheme == "https")
        assert TOKEN not in cookie
    assert [r.event for r in service.records] == ["console.signin"]
    assert service.records[0].door == "console" and service.records[0].principal == "alice"


async def test_actions_need_the_csrf_token_and_no_foreign_origin() -> None:
    application, _ = app(FakeService())
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        csrf = await signed_in(client)
        assert (await client.post("/console/act", data={"x": "1"})).status_code == 403
        assert (await client.post("/console/act", data={"csrf": csrf[:-1] + "x"})).status_code == 403
        foreign = {"Origin": "http://evil.test"}
        assert (await client.post("/console/act", data={"csrf": csrf}, headers=foreign)).status_code == 403
        same = {"Origin": "http://console.test"}
        answer = await client.post("/console/act", data={"csrf": csrf, "x": "2"}, headers=same)
        assert answer.status_code == 200 and answer.text == "done by alice: 2"
        as_json = await client.post("/console/act", json={"csrf": csrf})
        assert as_json.status_code == 400 and "x-www-form-urlencoded" in as_json.text


async def test_sign_in_refuses_a_forged_form_a_bad_token_and_an_empty_one() -> None:
    service = FakeService()
    application, _ = app(service)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        forged = await client.post("/console/signin", data={"csrf": "guess", "token": TOKEN})
        assert forged.status_code == 403
        form = await client.get("/console/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        bad = await client.post("/console/signin", data={"csrf": token.group(1), "token": "msv_x_y"})
        assert bad.status_code == 401 and "Sign-in refused: invalid token" in bad.text
        form = await client.get("/console/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        empty = await client.post("/console/signin", data={"csrf": token.group(1), "token": " "})
        assert empty.status_code == 400
    assert service.records == []


async def test_a_token_that_stops_working_ends_the_session_and_sign_out_is_audited() -> None:
    service = FakeService()
    application, door = app(service)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        csrf = await signed_in(client)
        assert len(door.sessions) == 1
        answer = await client.post("/console/signout", data={"csrf": csrf})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/signin"
        assert len(door.sessions) == 0
        assert (await client.get("/console/page")).status_code == 303
        await signed_in(client)
        service.valid = False  # revoked or expired
        answer = await client.get("/console/page")
        assert answer.status_code == 303 and answer.headers["location"] == "/console/signin"
        assert len(door.sessions) == 0
    assert [r.event for r in service.records] == ["console.signin", "console.signout", "console.signin"]


def test_the_templates_and_static_files_ship_in_the_package() -> None:
    package = Path(__file__).resolve().parents[2] / "medserve" / "console"
    assert {p.name for p in (package / "static").iterdir()} >= {"console.css", "console.js"}
    for template in (package / "templates").glob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, (
            f"{template.name} loads something from outside"
        )
