"""The REST door's OpenAPI 3.1 document, generated from the application's own routes.

:func:`openapi_document` walks the Starlette routes the server really mounts and joins each
``(method, path)`` with its documented operation (:data:`OPERATIONS`); path parameters come from the
route itself. A route without an operation is still listed, marked ``x-undocumented`` (the tests
refuse any), so the document never hides a route. Served at ``GET /v2/openapi.json`` without a token:
it describes the routes that are on and holds no data, model names or settings.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from medserve import __version__
from medserve.transport.openapi_dicomweb import DICOMWEB_RETRIEVE_OPERATIONS
from medserve.transport.openapi_medserve import (
    ALERT_OPERATIONS,
    CONSOLE_OPERATIONS,
    DOCUMENT_OPERATIONS,
    EXPLAIN_OPERATIONS,
    IMAGING_OPERATIONS,
    JOBS_OPERATIONS,
    WEBSOCKETS,
)
from medserve.transport.openapi_oip import OIP_OPERATIONS, Operation
from medserve.transport.openapi_schemas import SCHEMAS, SECURITY_SCHEMES

log = logging.getLogger(__name__)

#: Where the document is served.
OPENAPI_PATH = "/v2/openapi.json"

#: Every documented operation of every door, keyed by ``(METHOD, path)``.
OPERATIONS: dict[tuple[str, str], Operation] = {
    **OIP_OPERATIONS,
    **JOBS_OPERATIONS,
    **IMAGING_OPERATIONS,
    **DICOMWEB_RETRIEVE_OPERATIONS,
    **ALERT_OPERATIONS,
    **CONSOLE_OPERATIONS,
    **DOCUMENT_OPERATIONS,
    **EXPLAIN_OPERATIONS,
}

_PARAMETER = re.compile(r"{([^}:]+)}")


def route_operations(routes: Sequence[BaseRoute]) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of each HTTP operation of ``routes`` (HEAD, which Starlette adds to every
    GET, left out), and ``("WEBSOCKET", path)`` of each WebSocket route; other route kinds (mounts)
    as ``("MOUNT", path)``, which no table documents."""
    found: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Route):
            methods = sorted((route.methods or {"GET"}) - {"HEAD"})
            found += [(method, route.path_format) for method in methods]
        elif isinstance(route, WebSocketRoute):
            found.append(("WEBSOCKET", route.path_format))
        else:
            found.append(("MOUNT", str(getattr(route, "path", type(route).__name__))))
    return found


def undocumented(routes: Sequence[BaseRoute]) -> list[tuple[str, str]]:
    """The operations of ``routes`` that have no documented schema."""
    return [
        (method, path)
        for method, path in route_operations(routes)
        if (method == "WEBSOCKET" and path not in WEBSOCKETS)
        or (method not in ("WEBSOCKET",) and (method, path) not in OPERATIONS)
    ]


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAMETER.findall(path)
    ]


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{words}"


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    websockets: dict[str, str] = {}
    missing = set(undocumented(routes))
    for method, path in route_operations(routes):
        if method == "WEBSOCKET":
            websockets[path] = WEBSOCKETS.get(path, "")
            continue
        if method == "MOUNT":
            continue
        documented = OPERATIONS.get((method, path))
        op: dict[str, Any] = (
            dict(documented)
            if documented
            else {"summary": "", "responses": {"default": {"description": "undocumented"}}}
        )
        if (method, path) in missing:
            op["x-undocumented"] = True
        op["operationId"] = _operation_id(method, path)
        parameters = _path_parameters(path) + list(op.get("parameters", []))
        if parameters:
            op["parameters"] = parameters
        paths.setdefault(path, {})[method.lower()] = op
    if missing:
        log.warning("OpenAPI: routes without a documented schema: %s", sorted(missing))
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "medserve",
            "version": __version__,
            "description": "The Open Inference Protocol (KServe v2 REST) with Triton's extensions, "
            "and medserve's own routes.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
        "security": [{"bearer": []}],
    }
    if websockets:
        document["x-websockets"] = websockets
    return document


def openapi_route(routes: Callable[[], Sequence[BaseRoute]]) -> Route:
    """The route serving the document of ``routes()`` (read once, on the first request)."""
    cached: list[bytes] = []

    async def serve(request: Request) -> Response:
        if not cached:
            cached.append(json.dumps(openapi_document(routes()), separators=(",", ":")).encode())
        return Response(cached[0], media_type="application/json")

    return Route(OPENAPI_PATH, serve, methods=["GET"])
