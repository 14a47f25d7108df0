"""HTTP door of explanations: ``POST /v2/models/{m}[/versions/{v}]/explain``.

A thin adapter over :meth:`medserve.explanations.service.Explainer.explain`: the body is an infer
request (JSON, or a JSON header plus binary tensors with ``Inference-Header-Content-Length``) whose
``parameters`` name the method, the target and the method's parameters; the answer is an infer
response whose one output is ``attributions`` (binary with ``binary_data_output``, as infer) and whose
``parameters`` say what was computed. The right (``infer`` on the model) is checked before the body is
read; errors answer through the HTTP door's one table.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.core.service import InferenceService
from medserve.explanations.service import Explainer
from medserve.logs import bind_request
from medserve.protocol.rest_codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from medserve.protocol.validation import clipped
from medserve.transport.http import JSON_LIMIT_SETTING, authenticated, guarded, read_body
from medserve.values.access import Action
from medserve.values.errors import InvalidInput, MedserveError, PayloadTooLarge

_JSON = "application/json"


def explain_routes(
    service: InferenceService,
    explainer: Explainer,
    max_request_bytes: int,
    max_json_request_bytes: int | None = None,
) -> list[BaseRoute]:
    json_limit = min(max_request_bytes, max_json_request_bytes or max_request_bytes)
    json_setting = JSON_LIMIT_SETTING if json_limit < max_request_bytes else "max_request_bytes"

    async def explain(request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version", "")
        caller = await authenticated(service, request)
        bind_request(caller.request_id, caller.principal.name)
        try:
            caller.principal.require(Action.INFER, name)  # before the body is read
            raw_length = request.headers.get(HEADER_LENGTH)
            header_length = None
            if raw_length is not None:
                if not raw_length.strip().isdigit() or int(raw_length) == 0:
                    raise InvalidInput(
                        f"{HEADER_LENGTH} must be a positive integer, got '{clipped(raw_length)}'"
                    )
                header_length = int(raw_length)
                if header_length > json_limit:
                    raise PayloadTooLarge(
                        f"the JSON header of {header_length} bytes ({HEADER_LENGTH}) exceeds the limit of "
                        f"{json_limit} bytes ({json_setting})"
                    )
            if header_length is None:
                body = await read_body(request, json_limit, json_setting)
            else:
                body = await read_body(request, max_request_bytes, "max_request_bytes")
            inference = decode_infer_request(body, header_length, name, version, max_request_bytes)
        except MedserveError as exc:
            await service.refuse(caller, name, exc)
            raise
        result = await explainer.explain(inference, caller)
        payload, json_length = encode_infer_response(result, inference)
        headers = {"X-Request-ID": result.id}
        media_type = _JSON
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            media_type = "application/octet-stream"
        return Response(payload, media_type=media_type, headers=headers)

    return [
        Route(f"{prefix}/explain", guarded(explain), methods=["POST"])
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    ]
