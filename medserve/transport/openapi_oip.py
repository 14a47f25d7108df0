"""OpenAPI operations of the Open Inference Protocol's REST routes and Triton's extensions.

Keys are ``(METHOD, path)`` with the path as Starlette writes it (``{model}``); path parameters are
added by :mod:`medserve.transport.openapi` from the route itself.
"""

from __future__ import annotations

from typing import Any

from medserve.transport.openapi_schemas import errors, json_answer, json_body, ref

Operation = dict[str, Any]

_EMPTY_OK = {"200": json_answer("done", {"type": "object"})}
_NO_TOKEN: list[dict[str, list[str]]] = []  # an operation that needs no token


def operation(
    summary: str,
    tag: str,
    responses: dict[str, Any],
    body: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    headers: list[dict[str, Any]] | None = None,
) -> Operation:
    """One OpenAPI operation object."""
    found: Operation = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        found["requestBody"] = body
    parameters = [*(query or []), *(headers or [])]
    if parameters:
        found["parameters"] = parameters
    if security is not None:
        found["security"] = security
    return found


def query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _infer(versioned: bool) -> Operation:
    binary = {
        "description": "the binary tensor data extension: a JSON inference request of "
        "Inference-Header-Content-Length bytes, then the tensors' bytes; with a length of 0, Triton's "
        "raw binary request (the body is the single input's bytes)",
        "schema": {"type": "string", "format": "binary"},
    }
    return operation(
        "Run an inference" + (" on one version" if versioned else ""),
        "inference",
        {
            "200": {
                "description": "the outputs (binary outputs when asked for, after the JSON header)",
                "content": {
                    "application/json": {"schema": ref("InferenceResponse")},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **errors("400", "404", "409", "413", "415", "429", "503", "504"),
        },
        body={
            "required": True,
            "content": {
                "application/json": {"schema": ref("InferenceRequest")},
                "application/octet-stream": binary,
            },
        },
        headers=[
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "the length of the JSON header of a binary request",
            },
            {
                "name": "traceparent",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "W3C trace context: a sampled parent continues the client's trace",
            },
        ],
    )


def _model_routes(prefix: str, versioned: bool) -> dict[tuple[str, str], Operation]:
    which = " (one version)" if versioned else ""
    return {
        ("GET", prefix): operation(
            f"Model metadata{which}",
            "models",
            {"200": json_answer("metadata", ref("ModelMetadata")), **errors("400", "404")},
        ),
        ("GET", f"{prefix}/ready"): operation(
            f"Is the model ready{which}",
            "models",
            {"200": {"description": "ready (empty body)"}, **errors("400", "404")},
        ),
        ("GET", f"{prefix}/config"): operation(
            f"Model configuration{which} in Triton's ModelConfig JSON form",
            "models",
            {"200": json_answer("the configuration", {"type": "object"}), **errors("400", "404")},
        ),
        ("GET", f"{prefix}/stats"): operation(
            f"Model statistics{which} (Triton's statistics extension)",
            "models",
            {"200": json_answer("model_stats", {"type": "object"}), **errors("400", "404")},
        ),
        ("POST", f"{prefix}/infer"): _infer(versioned),
    }


def _shared_memory(kind: str) -> dict[tuple[str, str], Operation]:
    base, tag = f"/v2/{kind}sharedmemory", f"{kind} shared memory"
    register_answer = (
        {"200": json_answer("registered", {"type": "object"}), **errors("400", "409")}
        if kind == "system"
        else {**errors("501")}
    )
    status = {"200": json_answer("the caller's regions", ref("SharedMemoryStatus")), **errors("400")}
    return {
        ("GET", f"{base}/status"): operation(f"Status of the caller's {kind} regions", tag, status),
        ("GET", f"{base}/region/{{name}}/status"): operation(f"Status of one {kind} region", tag, status),
        ("POST", f"{base}/region/{{name}}/register"): operation(
            f"Register a {kind} shared memory region",
            tag,
            register_answer,
            body=json_body(ref("SharedMemoryRegister"), required=True) if kind == "system" else None,
        ),
        ("POST", f"{base}/unregister"): operation(
            f"Unregister all the caller's {kind} regions", tag, {**_EMPTY_OK, **errors()}
        ),
        ("POST", f"{base}/region/{{name}}/unregister"): operation(
            f"Unregister one {kind} region", tag, {**_EMPTY_OK, **errors("400")}
        ),
    }


def _trace(scope: str) -> dict[tuple[str, str], Operation]:
    path = "/v2/trace/setting" if scope == "global" else "/v2/models/{model}/trace/setting"
    answer = {"200": json_answer("the settings in force", ref("TraceSetting")), **errors("400", "404")}
    return {
        ("GET", path): operation(f"Trace settings ({scope})", "trace", answer),
        ("POST", path): operation(
            f"Change trace settings ({scope}; needs manage)",
            "trace",
            answer,
            body=json_body(ref("TraceSetting")),
        ),
    }


OIP_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v2"): operation(
        "Server metadata", "server", {"200": json_answer("metadata", ref("ServerMetadata")), **errors()}
    ),
    ("GET", "/v2/health/live"): operation(
        "Is the server live",
        "health",
        {"200": {"description": "live (empty body)"}, "503": json_answer("not live", ref("Error"))},
        security=_NO_TOKEN,
    ),
    ("GET", "/v2/health/ready"): operation(
        "Is the server ready",
        "health",
        {"200": {"description": "ready (empty body)"}, "503": json_answer("not ready", ref("Error"))},
        security=_NO_TOKEN,
    ),
    ("GET", "/v2/models/stats"): operation(
        "Statistics of every model",
        "models",
        {"200": json_answer("model_stats", {"type": "object"}), **errors()},
    ),
    ("POST", "/v2/repository/index"): operation(
        "The repository's models and their states",
        "repository",
        {"200": json_answer("the index", ref("RepositoryIndex")), **errors("400")},
        body=json_body(ref("RepositoryIndexRequest")),
    ),
    ("POST", "/v2/repository/models/{model}/load"): operation(
        "Load a model, optionally with a configuration override (needs manage)",
        "repository",
        {**_EMPTY_OK, **errors("400", "404", "409", "501")},
        body=json_body(ref("LoadRequest")),
    ),
    ("POST", "/v2/repository/models/{model}/unload"): operation(
        "Unload a model (needs manage)", "repository", {**_EMPTY_OK, **errors("400", "404")}
    ),
    ("POST", "/v2/repository/models/{model}/rollback"): operation(
        "Serve an earlier version, or clear a rollback (needs manage)",
        "repository",
        {"200": json_answer("the outcome", {"type": "object"}), **errors("400", "404", "409")},
        body=json_body(ref("RollbackRequest")),
    ),
    ("GET", "/v2/models/{model}/monitoring"): operation(
        "Input drift and output monitoring of a model",
        "models",
        {"200": json_answer("the monitoring figures", {"type": "object"}), **errors("400", "404")},
    ),
    ("GET", "/metrics"): operation(
        "Prometheus metrics (needs read)",
        "server",
        {
            "200": {
                "description": "the exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **errors(),
        },
    ),
    ("GET", "/v2/logging"): operation(
        "Log settings (Triton's logging extension)",
        "logging",
        {"200": json_answer("the settings", ref("LogSettings")), **errors()},
    ),
    ("POST", "/v2/logging"): operation(
        "Change log settings (needs manage)",
        "logging",
        {"200": json_answer("the settings in force", ref("LogSettings")), **errors("400")},
        body=json_body(ref("LogSettings")),
    ),
    **_model_routes("/v2/models/{model}", versioned=False),
    **_model_routes("/v2/models/{model}/versions/{version}", versioned=True),
    **_shared_memory("system"),
    **_shared_memory("cuda"),
    **_trace("global"),
    **_trace("model"),
}
