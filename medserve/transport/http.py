"""HTTP/REST door: the Open Inference Protocol (KServe v2) with Triton's extensions, over Starlette.

Routes only translate: parse the request, call ``InferenceService``, encode the reply, and map
``MedserveError`` to a status code through one table. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.core.metrics import ServingMetrics
from medserve.core.refusals import audit_refusal, begin_request, end_request, remember_caller
from medserve.core.service import InferenceService
from medserve.logs import bind_request
from medserve.monitoring.tracing import door_span, traceparent
from medserve.protocol.raw_binary import decode_raw_request
from medserve.protocol.repository_load import load_config_override
from medserve.protocol.rest_codec import (
    HEADER_LENGTH,
    decode_infer_request,
    dumps,
    encode_infer_response,
    loads,
)
from medserve.protocol.validation import clipped, safe_request_id
from medserve.streaming.alerts import AlertNotFound
from medserve.transport.http_deadline import RECEIVED_NS, client_deadline_ns, unless_disconnected
from medserve.transport.openapi import openapi_route
from medserve.transport.status_table import StatusTable
from medserve.values.access import Action, Caller
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
from medserve.values.types import ModelMetadata

log = logging.getLogger(__name__)


class UnsupportedMediaType(InvalidInput):
    """A body in an encoding or media type the route does not take (HTTP 415)."""


#: Bodies (or decompressed bodies) up to this size are decoded on the event loop; larger ones in a
#: worker thread, so one large request never stalls the other clients.
OFF_LOOP_BYTES = 256 * 1024

#: The REST door's one table: medserve's error tree to HTTP status codes (the nearest listed class of
#: an error wins; an error no class above names is a server fault, 500). The DICOMweb, streaming and
#: jobs routes answer through it too.
STATUS_CODES: StatusTable[int] = StatusTable(
    "HTTP",
    {
        MedserveError: 500,
        Unauthenticated: 401,
        PermissionDenied: 403,
        ModelNotFound: 404,
        AlertNotFound: 404,
        JobNotFound: 404,
        Conflict: 409,
        PayloadTooLarge: 413,
        UnsupportedMediaType: 415,
        InvalidInput: 400,
        InvalidConfig: 400,
        ModelLoadError: 400,
        Unsupported: 501,
        ModelNotReady: 503,
        Overloaded: 503,
        DeadlineExceeded: 504,
        StoreUnavailable: 503,
        InferenceFailed: 500,
    },
)

_JSON = "application/json"
#: the setting that bounds JSON bodies, named in their 413 answers
JSON_LIMIT_SETTING = "max_json_request_bytes"


def status_of(exc: MedserveError) -> int:
    """The HTTP status the REST door answers ``exc`` with."""
    return STATUS_CODES.of(exc)


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` as a JSON answer."""
    return Response(dumps(value), status_code=status, media_type=_JSON)


def retry_after_header(seconds: float | None) -> str | None:
    """``Retry-After`` in whole seconds (at least 1), or None when there is no advice."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return str(max(1, math.ceil(seconds)))


def error_response(message: str, status: int, retry_after_s: float | None = None) -> Response:
    """The REST door's error answer: ``{"error": message}``, with ``WWW-Authenticate`` on 401 and
    ``Retry-After`` when there is advice."""
    response = json_response({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="medserve"'
    retry_after = retry_after_header(retry_after_s)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


async def authenticated(service: InferenceService, connection: HTTPConnection, door: str = "http") -> Caller:
    """The caller of an HTTP request or WebSocket: bearer token or verified client certificate.

    Browsers cannot set headers on WebSockets and EventSource, so those doors also take the token
    from an ``access_token`` query parameter.
    """
    authorization = connection.headers.get("authorization")
    if authorization is None and door != "http" and "access_token" in connection.query_params:
        authorization = f"Bearer {connection.query_params['access_token']}"
    tls = connection.scope.get("extensions", {}).get("tls", {})
    client = connection.client
    caller = await service.authenticate(
        authorization,
        tls.get("client_cert_cn") if isinstance(tls, dict) else None,
        door=door,
        peer=f"{client.host}:{client.port}" if client else "",
        request_id=safe_request_id(connection.headers.get("x-request-id", "")),
    )
    remember_caller(caller)  # a refusal after this names the caller in its audit record
    return caller


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler, table: StatusTable[int] = STATUS_CODES) -> Handler:
    """``handler`` with every ``MedserveError`` answered ``{"error": ...}`` under its status in ``table``."""

    async def wrapper(request: Request) -> Response:
        token = begin_request()
        try:
            return await handler(request)
        except MedserveError as exc:
            status = table.of(exc)
            await audit_http_refusal(request, exc, status)
            return error_response(str(exc), status, getattr(exc, "retry_after_s", None))
        except ClientDisconnect:  # nobody is left to answer: not a server fault
            log.info("client left during %s %s before its body was read", request.method, request.url.path)
            return error_response("client disconnected", 400)
        except Exception as exc:  # a bug must not take the server down; the client hears of it
            log.exception("unexpected error serving %s %s", request.method, request.url.path)
            return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
        finally:
            end_request(token)

    return wrapper


async def audit_http_refusal(request: Request, exc: BaseException, code: int, status: str = "") -> None:
    """Audit a refusal of this door (once: not one the dataplane already recorded). The application's
    ``state.audit_record`` is where records go; an application without one audits nothing here."""
    scope = getattr(request, "scope", None) or {}
    record = getattr(getattr(scope.get("app"), "state", None), "audit_record", None)
    if record is None:
        return
    client = request.client
    await audit_refusal(
        record,
        exc,
        door="http",
        what=f"HTTP {code} {request.method} {clipped(request.url.path)}",
        model=str(request.path_params.get("model", ""))[:256],
        peer=f"{client.host}:{client.port}" if client else "",
        status=status,
    )


async def read_body(request: Request, limit: int, setting: str = "") -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit``; decompressed if encoded
    (a large body in a worker thread, off the event loop). ``setting`` names the limit in the answer."""
    named = f" ({setting})" if setting else ""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes{named}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes{named}")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding '{clipped(encoding)}' is not supported (use gzip or deflate)"
        )
    if len(body) > OFF_LOOP_BYTES // 16:  # a small compressed body may inflate to the limit
        return await run_in_threadpool(_inflate, body, encoding, limit, named)
    return _inflate(body, encoding, limit, named)


def _inflate(body: bytes, encoding: str, limit: int, named: str = "") -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes{named}")
    return data


def _accepted_encodings(accept: str) -> set[str]:
    """The codings ``Accept-Encoding`` accepts: those listed without ``q=0`` (RFC 9110 12.5.3)."""
    accepted: set[str] = set()
    for part in accept.split(","):
        coding, _, params = part.partition(";")
        quality = params.strip().lower().removeprefix("q=").strip() if params else "1"
        try:
            if float(quality) <= 0:
                continue
        except ValueError:
            continue
        accepted.add(coding.strip().lower())
    return accepted


def _compress(body: bytes, accept: str) -> tuple[bytes, str | None]:
    accepted = _accepted_encodings(accept)
    if "gzip" in accepted:
        compressor = zlib.compressobj(wbits=31)
        return compressor.compress(body) + compressor.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body), "deflate"
    return body, None


def _metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    def tensors(items: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in items]

    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
        "parameters": meta.parameters,
    }


def build_app(
    service: InferenceService,
    metrics: ServingMetrics,
    max_request_bytes: int,
    extra_routes: Sequence[BaseRoute] = (),
    max_json_request_bytes: int | None = None,
) -> Starlette:
    """The Starlette application of the REST door. JSON (an infer body, a binary request's JSON
    header, the JSON-only requests) is held to ``max_json_request_bytes`` as well: decoding it takes
    many times its size in memory."""
    json_limit = min(max_request_bytes, max_json_request_bytes or max_request_bytes)
    json_setting = JSON_LIMIT_SETTING if json_limit < max_request_bytes else "max_request_bytes"

    async def read_json_body(request: Request) -> bytes:
        return await read_body(request, json_limit, json_setting)

    def model_args(request: Request) -> tuple[str, str]:
        params = request.path_params
        return params["model"], params.get("version", "")

    async def server_metadata(request: Request) -> Response:
        return json_response(service.server_metadata(await authenticated(service, request)))

    async def live(request: Request) -> Response:
        if service.live():
            return Response(status_code=200)  # as Triton: the status is the answer, the body is empty
        return error_response("server is not live", 503)

    async def ready(request: Request) -> Response:
        if await service.check_ready():
            return Response(status_code=200)
        why = ": the store cannot be reached" if service.readiness.reason else ""
        return error_response(f"server is not ready{why}", 503)

    async def model_metadata(request: Request) -> Response:
        caller = await authenticated(service, request)
        return json_response(_metadata_json(service.model_metadata(*model_args(request), caller)))

    async def model_ready(request: Request) -> Response:
        name, version = model_args(request)
        if service.model_ready(name, version, await authenticated(service, request)):
            return Response(status_code=200)
        # the Open Inference Protocol answers a model that is not ready with a 4xx (Triton: 400)
        which = f"version '{clipped(version)}' of model '{name}'" if version else f"model '{name}'"
        return error_response(f"{which} is not ready", 400)

    async def model_config(request: Request) -> Response:
        caller = await authenticated(service, request)
        return json_response(service.model_config(*model_args(request), caller))

    async def model_stats(request: Request) -> Response:
        caller = await authenticated(service, request)
        name = request.path_params.get("model", "")
        return json_response(service.model_statistics(name, request.path_params.get("version", ""), caller))

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        with door_span(f"POST /v2/models/{name}/infer", "http", name, request.headers) as span:
            response = await _infer(request)
            parent = traceparent(span)
            if parent is not None:
                response.headers["traceparent"] = parent
            return response

    async def _infer(request: Request) -> Response:
        arrived = request.scope.get(RECEIVED_NS) or time.perf_counter_ns()
        name, version = model_args(request)
        caller = await authenticated(service, request)
        bind_request(caller.request_id, caller.principal.name)
        try:  # every refusal is audited, with the caller
            caller.principal.require(Action.INFER, name)  # before the body is read
            deadline_ns = client_deadline_ns(request.headers, arrived)
            raw_length = request.headers.get(HEADER_LENGTH)
            header_length = None
            if raw_length is not None:
                if not raw_length.strip().isdigit():
                    raise InvalidInput(
                        f"{HEADER_LENGTH} must be a non-negative integer, got '{clipped(raw_length)}'"
                    )
                header_length = int(raw_length)
                if header_length > json_limit:
                    raise PayloadTooLarge(
                        f"the JSON header of {header_length} bytes ({HEADER_LENGTH}) exceeds the limit of "
                        f"{json_limit} bytes ({json_setting})"
                    )
            if header_length is None:  # all JSON: tensors in binary (the binary data extension) go further
                body = await read_json_body(request)
            else:
                body = await read_body(request, max_request_bytes, "max_request_bytes")
            decode = partial(decode_infer_request, body, header_length, name, version, max_request_bytes)
            if header_length == 0:  # Triton's raw binary request: the body is the one input's bytes
                metadata = service.model_metadata(name, version, caller)
                decode = partial(decode_raw_request, body, metadata, version)
            inference = await run_in_threadpool(decode) if len(body) > OFF_LOOP_BYTES else decode()
            inference.deadline_ns = deadline_ns
        except MedserveError as exc:
            await service.refuse(caller, name, exc)
            raise
        result = await unless_disconnected(request, service.infer(inference, caller))
        log.debug("inference of %s answered: %d output(s)", name, len(result.outputs))  # names the request
        payload, json_length = encode_infer_response(result, inference)
        # the id the inference is audited under: an explain request names it (docs/EXPLANATIONS.md)
        headers: dict[str, str] = {"X-Request-ID": inference.id or caller.request_id}
        media_type = _JSON
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            media_type = "application/octet-stream"
        accept = request.headers.get("accept-encoding", "")
        headers["Vary"] = "Accept-Encoding"  # the body depends on it: caches must key on it
        if accept:
            payload, encoding = _compress(payload, accept)
            if encoding:
                headers["Content-Encoding"] = encoding
        return Response(payload, media_type=media_type, headers=headers)

    async def repository_index(request: Request) -> Response:
        caller = await authenticated(service, request)
        body = await read_json_body(request)
        doc = loads(body, "repository index request") if body.strip() else {}
        ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
        rows = service.repository_index(ready_only, caller)
        return json_response(
            [{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows]
        )

    async def load(request: Request) -> Response:
        caller = await authenticated(service, request)
        body = await read_json_body(request)
        doc = loads(body, "load request") if body.strip() else {}
        parameters = doc.get("parameters", {}) if isinstance(doc, dict) else {}
        config = load_config_override(parameters if isinstance(parameters, dict) else None)
        await service.load_model(request.path_params["model"], caller, config)
        return json_response({})

    async def unload(request: Request) -> Response:
        caller = await authenticated(service, request)
        await read_json_body(request)
        await service.unload_model(request.path_params["model"], caller)
        return json_response({})

    async def rollback(request: Request) -> Response:
        caller = await authenticated(service, request)
        body = await read_json_body(request)
        doc = loads(body, "rollback request") if body.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidInput("rollback request must be a JSON object")
        version = doc.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidInput("rollback 'version' must be an integer")
        outcome = await service.rollback_model(
            request.path_params["model"], caller, version, bool(doc.get("clear", False))
        )
        return json_response(outcome)

    async def monitoring(request: Request) -> Response:
        caller = await authenticated(service, request)
        return json_response(await service.model_monitoring(request.path_params["model"], caller))

    async def prometheus(request: Request) -> Response:
        principal = (await authenticated(service, request)).principal
        principal.require(Action.READ)
        text = metrics.exposition(principal.models)  # a caller sees only its granted models' figures
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes: list[BaseRoute] = [
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2/models/stats", guarded(model_stats), methods=["GET"]),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", guarded(load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", guarded(unload), methods=["POST"]),
        Route("/v2/repository/models/{model}/rollback", guarded(rollback), methods=["POST"]),
        Route("/v2/models/{model}/monitoring", guarded(monitoring), methods=["GET"]),
        Route("/metrics", guarded(prometheus), methods=["GET"]),
    ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, guarded(model_metadata), methods=["GET"]),
            Route(f"{prefix}/ready", guarded(model_ready), methods=["GET"]),
            Route(f"{prefix}/config", guarded(model_config), methods=["GET"]),
            Route(f"{prefix}/stats", guarded(model_stats), methods=["GET"]),
            Route(f"{prefix}/infer", guarded(infer), methods=["POST"]),
        ]

    async def not_found(request: Request, exc: Exception) -> Response:
        message = f"no route for {request.method} {request.url.path}"
        await audit_http_refusal(request, LookupError(message), 404, "NoRoute")
        return error_response(message, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        message = f"method {request.method} is not allowed on {request.url.path}"
        await audit_http_refusal(request, LookupError(message), 405, "MethodNotAllowed")
        response = error_response(message, 405)
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        if allow:
            response.headers["Allow"] = allow
        return response

    routes += list(extra_routes)
    # the OpenAPI document is generated from the routes the application really has
    app = Starlette(
        routes=[*routes, openapi_route(lambda: app.routes)],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.state.audit_record = service.record  # refusals the dataplane did not audit (see guarded)
    return app
