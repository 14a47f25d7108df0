"""HTTP routes of Triton's trace extension (``/v2/trace/setting``, per model
``/v2/models/{model}/trace/setting``) and log settings extension (``/v2/logging``).

Reading needs ``read``; changing needs ``manage``. Trace settings answer as Triton does: ``trace_level``
a list of strings, the others one string each; a POSTed value may be a string, a list of strings, or
null (clear the model's override, or reset the global setting to its default).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.core.service import InferenceService
from medserve.logs import LOG_SETTINGS
from medserve.monitoring.tracing import TRACE_SETTINGS
from medserve.protocol.rest_codec import loads
from medserve.transport.http import authenticated, guarded, json_response
from medserve.values.access import Action
from medserve.values.errors import InvalidInput

#: The most bytes a settings body may have.
MAX_SETTINGS_BODY = 64 * 1024


async def _changes(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SETTINGS_BODY:
            raise InvalidInput(f"settings body is larger than {MAX_SETTINGS_BODY} bytes")
    doc = loads(body, "settings body") if body.strip() else {}
    if not isinstance(doc, dict):
        raise InvalidInput("settings body must be a JSON object")
    return doc


def _trace_json(settings: dict[str, list[str]]) -> dict[str, Any]:
    return {k: (v if k == "trace_level" else (v[0] if v else "")) for k, v in settings.items()}


def _trace_values(doc: dict[str, Any]) -> dict[str, list[str] | None]:
    changes: dict[str, list[str] | None] = {}
    for key, value in doc.items():
        if value is None:
            changes[key] = None
        elif isinstance(value, str):
            changes[key] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            changes[key] = list(value)
        else:
            raise InvalidInput(f"trace setting '{str(key)[:64]}' must be a string, a list of strings or null")
    return changes


def trace_log_routes(service: InferenceService) -> list[BaseRoute]:
    """The routes of the trace and log settings extensions."""

    async def trace_setting(request: Request) -> Response:
        caller = await authenticated(service, request)
        model = request.path_params.get("model", "")
        if request.method == "GET":
            caller.principal.require(Action.READ, model or None)
            return json_response(_trace_json(TRACE_SETTINGS.settings(model)))
        caller.principal.require(Action.MANAGE, model or None)
        if model:
            service.require_in_repository(model)
        return json_response(
            _trace_json(TRACE_SETTINGS.update(model, _trace_values(await _changes(request))))
        )

    async def logging_settings(request: Request) -> Response:
        caller = await authenticated(service, request)
        if request.method == "GET":
            caller.principal.require(Action.READ)
            return json_response(LOG_SETTINGS.current())
        caller.principal.require(Action.MANAGE)
        return json_response(LOG_SETTINGS.update(await _changes(request)))

    return [
        Route("/v2/trace/setting", guarded(trace_setting), methods=["GET", "POST"]),
        Route("/v2/models/{model}/trace/setting", guarded(trace_setting), methods=["GET", "POST"]),
        Route("/v2/logging", guarded(logging_settings), methods=["GET", "POST"]),
    ]
