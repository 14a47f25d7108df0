"""HTTP routes of Triton's shared memory extension (``/v2/systemsharedmemory``, ``/v2/cudasharedmemory``).

System regions are registered, listed and unregistered through ``InferenceService.shared_memory``;
their owner is the registering principal. CUDA regions need a CUDA IPC handle opened on a GPU: this
server does not map them, so their status is always empty and registering answers 501.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.core.service import InferenceService
from medserve.protocol.rest_codec import loads
from medserve.transport.http import authenticated, guarded, json_response
from medserve.values.access import Action
from medserve.values.errors import InvalidInput, Unsupported

#: The most bytes a shared memory registration body may have (it is a few small JSON fields).
MAX_REGISTER_BODY = 64 * 1024

CUDA_UNSUPPORTED = "CUDA shared memory is not supported by this server; use system shared memory"


async def _small_json(request: Request, what: str) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REGISTER_BODY:
            raise InvalidInput(f"{what} is larger than {MAX_REGISTER_BODY} bytes")
    doc = loads(body, what) if body.strip() else {}
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return doc


def _uint(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"shared memory registration: '{key}' must be a non-negative integer")
    return value


def shared_memory_routes(service: InferenceService) -> list[BaseRoute]:
    """The routes of the system and CUDA shared memory extensions."""
    regions = service.shared_memory

    async def status(request: Request) -> Response:
        caller = await authenticated(service, request)
        return json_response(regions.status(request.path_params.get("name", ""), caller))

    async def register(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.INFER)  # before the body is read
        doc = await _small_json(request, "shared memory registration")
        key = doc.get("key")
        if not isinstance(key, str):
            raise InvalidInput("shared memory registration needs a 'key' string")
        regions.register(
            request.path_params["name"], key, _uint(doc, "offset", 0), _uint(doc, "byte_size"), caller
        )
        return json_response({})

    async def unregister(request: Request) -> Response:
        caller = await authenticated(service, request)
        regions.unregister(request.path_params.get("name", ""), caller)
        return json_response({})

    async def cuda_status(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.READ)
        name = request.path_params.get("name", "")
        if name:
            raise InvalidInput(f"CUDA shared memory region '{name}' is not registered")
        return json_response([])

    async def cuda_register(request: Request) -> Response:
        (await authenticated(service, request)).principal.require(Action.INFER)
        raise Unsupported(CUDA_UNSUPPORTED)

    async def cuda_unregister(request: Request) -> Response:
        (await authenticated(service, request)).principal.require(Action.INFER)
        return json_response({})

    system, cuda = "/v2/systemsharedmemory", "/v2/cudasharedmemory"
    return [
        Route(f"{system}/status", guarded(status), methods=["GET"]),
        Route(f"{system}/region/{{name}}/status", guarded(status), methods=["GET"]),
        Route(f"{system}/region/{{name}}/register", guarded(register), methods=["POST"]),
        Route(f"{system}/unregister", guarded(unregister), methods=["POST"]),
        Route(f"{system}/region/{{name}}/unregister", guarded(unregister), methods=["POST"]),
        Route(f"{cuda}/status", guarded(cuda_status), methods=["GET"]),
        Route(f"{cuda}/region/{{name}}/status", guarded(cuda_status), methods=["GET"]),
        Route(f"{cuda}/region/{{name}}/register", guarded(cuda_register), methods=["POST"]),
        Route(f"{cuda}/unregister", guarded(cuda_unregister), methods=["POST"]),
        Route(f"{cuda}/region/{{name}}/unregister", guarded(cuda_unregister), methods=["POST"]),
    ]
