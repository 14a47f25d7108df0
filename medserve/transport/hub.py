"""Hub and edge doors over the one HTTP server (docs/EDGE.md).

Hub (``hub_enabled``)
=============================================  =====================================================
route                                          does
=============================================  =====================================================
POST ``/v2/hub/groups/{group}/publish``        ``{"model", "version"}``: publish a signed version of
                                               this hub's repository to the group (admin: manage)
POST ``/v2/hub/groups/{group}/pin``            ``{"model", "version"}`` or ``{"model", "clear": true}``
POST ``/v2/hub/groups/{group}/rollback``       ``{"model"}``: pin the release before the one served
GET  ``/v2/hub/groups/{group}/manifest``       the group's signed manifest (admin: manage)
GET  ``/v2/hub/edges``                         every edge's last sync, versions, backlog, uplinks
POST ``/v2/hub/sync``                          an edge reports its status; answer: its manifest
GET  ``/v2/hub/artifacts/{model}/{version}``   an artifact published to the calling edge's group
POST ``/v2/hub/uplinks``                       ``{"items": [...]}``: kept once per idempotency key
=============================================  =====================================================

An edge is a principal (token name or client certificate CN) that ``hub_edges`` maps to a group; its
rights are checked before any body is read. Edge (``edge_hub_url``): POST ``/v2/edge/sync`` (manage)
pulls now; GET ``/v2/edge/status`` (read) says the last sync, versions, backlog, and the hub's reach.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from medserve.core.service import InferenceService
from medserve.edge.hub import Hub
from medserve.edge.manifest import valid_name
from medserve.edge.receiver import parse_items, receive
from medserve.edge.sync import EdgeSync
from medserve.transport.http import authenticated, guarded, json_response, read_body
from medserve.values.access import Action, Caller
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import InvalidInput

_MAX_ADMIN_BODY = 64 << 10
_MAX_STATUS_BODY = 1 << 20
_MAX_UPLINK_BODY = 32 << 20


async def _json(request: Request, limit: int, what: str) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        document = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what}: body is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{what}: body must be a JSON object")
    return document


def _version(document: dict[str, Any], what: str) -> int:
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput(f"{what}: 'version' must be a positive integer, not {version!r}")
    return version


def hub_routes(service: InferenceService, hub: Hub) -> list[BaseRoute]:
    async def audited(caller: Caller, event: str, model: str, detail: str) -> None:
        await service.record(
            AuditEvent(event=event, principal=caller.principal.name, door="http", model=model, detail=detail)
        )

    async def admin(request: Request, what: str) -> tuple[Caller, str, dict[str, Any]]:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)  # rights before the body
        group = valid_name(request.path_params["group"], "group")
        document = await _json(request, _MAX_ADMIN_BODY, what)
        model = valid_name(document.get("model"), f"{what}: model")
        caller.principal.require(Action.MANAGE, model)
        return caller, group, {**document, "model": model}

    async def publish(request: Request) -> Response:
        caller, group, doc = await admin(request, "publish request")
        version = _version(doc, "publish request")
        release = await asyncio.to_thread(hub.publish, group, doc["model"], version, caller.principal.name)
        await audited(
            caller, "hub.publish", release.model, f"group {group} version {version} sha256 {release.digest}"
        )
        return json_response({"group": group, **release.to_json()})

    async def pin(request: Request) -> Response:
        caller, group, doc = await admin(request, "pin request")
        version = None if doc.get("clear") is True else _version(doc, "pin request")
        outcome = await asyncio.to_thread(hub.pin, group, doc["model"], version, caller.principal.name)
        await audited(caller, "hub.pin", doc["model"], f"group {group} pinned {version}")
        return json_response(outcome)

    async def rollback(request: Request) -> Response:
        caller, group, doc = await admin(request, "rollback request")
        outcome = await asyncio.to_thread(hub.rollback, group, doc["model"], caller.principal.name)
        await audited(caller, "hub.rollback", doc["model"], f"group {group} to {outcome['serving']}")
        return json_response(outcome)

    async def manifest(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        group = valid_name(request.path_params["group"], "group")
        return json_response(await asyncio.to_thread(hub.manifest, group))

    async def edges(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        return json_response({"edges": await asyncio.to_thread(hub.edges)})

    async def edge_sync(request: Request) -> Response:
        caller = await authenticated(service, request)
        group = hub.group_of(caller.principal.name)  # an edge, before its body is read
        status = await _json(request, _MAX_STATUS_BODY, "edge status")
        await asyncio.to_thread(hub.record_sync, caller.principal.name, group, status)
        return json_response(await asyncio.to_thread(hub.manifest, group))

    async def artifact(request: Request) -> Response:
        caller = await authenticated(service, request)
        group = hub.group_of(caller.principal.name)
        model = valid_name(request.path_params["model"], "model")
        raw = request.path_params["version"]
        if not raw.isdigit():
            raise InvalidInput(f"version must be a positive integer, not {raw!r}")
        path = await asyncio.to_thread(hub.artifact, group, model, int(raw))
        await audited(caller, "hub.download", model, f"group {group} version {raw}")
        return FileResponse(path, media_type="application/octet-stream")

    async def uplinks(request: Request) -> Response:
        caller = await authenticated(service, request)
        hub.group_of(caller.principal.name)
        items = parse_items(await _json(request, _MAX_UPLINK_BODY, "uplink"))
        receipt = await asyncio.to_thread(receive, hub.database, caller.principal.name, items)
        kinds = sorted({kind for _, kind, _ in items})
        await audited(
            caller,
            "hub.uplink",
            "",
            f"{len(receipt.accepted)} kept, {len(receipt.duplicates)} duplicate(s), "
            f"{len(receipt.refused)} refused ({', '.join(kinds)})",
        )
        return json_response(receipt.to_json())

    return [
        Route("/v2/hub/groups/{group}/publish", guarded(publish), methods=["POST"]),
        Route("/v2/hub/groups/{group}/pin", guarded(pin), methods=["POST"]),
        Route("/v2/hub/groups/{group}/rollback", guarded(rollback), methods=["POST"]),
        Route("/v2/hub/groups/{group}/manifest", guarded(manifest), methods=["GET"]),
        Route("/v2/hub/edges", guarded(edges), methods=["GET"]),
        Route("/v2/hub/sync", guarded(edge_sync), methods=["POST"]),
        Route("/v2/hub/artifacts/{model}/{version}", guarded(artifact), methods=["GET"]),
        Route("/v2/hub/uplinks", guarded(uplinks), methods=["POST"]),
    ]


def edge_routes(service: InferenceService, sync: EdgeSync) -> list[BaseRoute]:
    async def sync_now(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        report = await sync.sync()
        await service.record(
            AuditEvent(
                event="edge.sync",
                principal=caller.principal.name,
                door="http",
                detail=f"{len(report['installed'])} installed, {len(report['refused'])} refused",
            )
        )
        return json_response(report)

    async def status(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.READ)
        return json_response(await sync.status())

    return [
        Route("/v2/edge/sync", guarded(sync_now), methods=["POST"]),
        Route("/v2/edge/status", guarded(status), methods=["GET"]),
    ]
