"""OpenAPI operations of medserve's own HTTP routes: jobs, DICOMweb and the imaging status API,
alerts, the operator console and the document itself; WebSocket routes are listed apart (OpenAPI
does not describe them)."""

from __future__ import annotations

from typing import Any

from medserve.transport.openapi_oip import Operation, operation, query_parameter
from medserve.transport.openapi_schemas import errors, json_answer, ref

_OBJECT = {"type": "object"}
_NO_TOKEN: list[dict[str, list[str]]] = []
_CONSOLE: list[dict[str, list[str]]] = [{"console_session": []}]
_UINT = {"type": "integer", "minimum": 0}
_HTML = {"text/html": {"schema": {"type": "string"}}}

_STOW_BODY = {
    "required": True,
    "content": {
        "multipart/related": {
            "schema": {"type": "string", "format": "binary"},
            "description": 'type="application/dicom": each part one DICOM Part-10 instance',
        }
    },
}
_STOW_ANSWERS = {
    "200": {"description": "all stored", "content": {"application/dicom+json": {"schema": ref("DicomJson")}}},
    "202": {
        "description": "some failed",
        "content": {"application/dicom+json": {"schema": ref("DicomJson")}},
    },
    "409": {
        "description": "none stored",
        "content": {"application/dicom+json": {"schema": ref("DicomJson")}},
    },
    **errors("400", "413", "415"),
}


def _page(summary: str, body: bool = False) -> Operation:
    """A console page (GET) or action (POST, a form with its CSRF token, answered with a redirect)."""
    answers: dict[str, Any] = {
        "200": {"description": "the page", "content": _HTML},
        "303": {"description": "to the sign-in page, or back to the page after an action"},
        "400": {"description": "the form is wrong", "content": _HTML},
        "403": {"description": "the roles or the CSRF token do not allow this", "content": _HTML},
        "404": {"description": "no such resource", "content": _HTML},
    }
    form = None
    if body:
        form = {
            "required": False,
            "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}},
        }
    return operation(summary, "console", answers, body=form, security=_CONSOLE)


def _sse(summary: str, tag: str, security: list[dict[str, list[str]]] | None = None) -> Operation:
    events = {"text/event-stream": {"schema": {"type": "string"}}}
    return operation(
        summary,
        tag,
        {
            "200": {"description": "server-sent events, until the client leaves", "content": events},
            **errors(),
        },
        security=security,
    )


JOBS_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/jobs"): operation(
        "Submit a job (needs manage)",
        "jobs",
        {"201": json_answer("the job", ref("Job")), **errors("400", "404", "413")},
        body={
            "required": True,
            "description": "a job spec; paths absolute on the server",
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": _OBJECT},
            },
        },
    ),
    ("GET", "/jobs"): operation(
        "Recent jobs",
        "jobs",
        {
            "200": json_answer(
                "the jobs", {"type": "object", "properties": {"jobs": {"type": "array", "items": ref("Job")}}}
            ),
            **errors("400"),
        },
        query=[query_parameter("limit", _UINT, "the most jobs (at most 1000)")],
    ),
    ("GET", "/jobs/{job}"): operation(
        "A job's state and progress", "jobs", {"200": json_answer("the job", ref("Job")), **errors("404")}
    ),
    ("POST", "/jobs/{job}/cancel"): operation(
        "Stop a job after its current chunk (needs manage)",
        "jobs",
        {"200": json_answer("the job", ref("Job")), **errors("404", "409")},
    ),
    ("GET", "/jobs/{job}/failures"): operation(
        "A job's item failures",
        "jobs",
        {"200": json_answer("the failures", ref("JobFailures")), **errors("400", "404")},
        query=[
            query_parameter("offset", _UINT, "the first failure"),
            query_parameter("limit", _UINT, "the most failures (at most 10000)"),
        ],
    ),
    ("GET", "/jobs/{job}/results"): operation(
        "The sink file of a job that has succeeded",
        "jobs",
        {
            "200": {
                "description": "the file",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors("404", "409"),
        },
    ),
}

IMAGING_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/dicomweb/studies"): operation(
        "STOW-RS: store instances", "dicomweb", _STOW_ANSWERS, body=_STOW_BODY
    ),
    ("POST", "/dicomweb/studies/{study}"): operation(
        "STOW-RS: store instances of one study", "dicomweb", _STOW_ANSWERS, body=_STOW_BODY
    ),
    ("GET", "/dicom/studies"): operation(
        "Received studies, their series, routing, results and exports",
        "imaging",
        {
            "200": json_answer(
                "the studies", {"type": "object", "properties": {"studies": {"type": "array"}}}
            ),
            **errors(),
        },
    ),
    ("GET", "/dicom/studies/{study}"): operation(
        "One received study", "imaging", {"200": json_answer("the study", _OBJECT), **errors("404")}
    ),
    ("GET", "/dicom/series/{series}"): operation(
        "One received series", "imaging", {"200": json_answer("the series", _OBJECT), **errors("404")}
    ),
    ("POST", "/dicom/exports/{export}/retry"): operation(
        "Send a failed export again (needs manage)",
        "imaging",
        {"200": json_answer("the export, pending again", _OBJECT), **errors("404")},
    ),
}

ALERT_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v2/alerts"): operation(
        "Alerts of the patient sessions",
        "alerts",
        {"200": json_answer("the alerts", {"type": "array", "items": ref("Alert")}), **errors("400")},
        query=[
            query_parameter("sequence_id", {"type": "string"}, "one patient session's alerts"),
            query_parameter("unacknowledged", {"type": "boolean"}, "only those not acknowledged"),
            query_parameter("limit", _UINT, "the most alerts (default 100)"),
        ],
    ),
    ("GET", "/v2/alerts/stream"): _sse("New alerts as server-sent events", "alerts"),
    ("POST", "/v2/alerts/{alert_id}/acknowledge"): operation(
        "Acknowledge an alert (needs acknowledge)",
        "alerts",
        {"200": json_answer("the alert", ref("Alert")), **errors("400", "404")},
        body={"required": False, "content": {"application/json": {"schema": ref("Acknowledgement")}}},
    ),
}

_C = "/console"
CONSOLE_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", f"{_C}/signin"): {**_page("The sign-in page"), "security": _NO_TOKEN},
    ("POST", f"{_C}/signin"): {
        **_page("Sign in with an API token for a session cookie", body=True),
        "security": _NO_TOKEN,
    },
    ("POST", f"{_C}/signout"): _page("End the session", body=True),
    ("GET", f"{_C}/static/{{name}}"): operation(
        "The console's style sheet and script",
        "console",
        {"200": {"description": "the file"}, "404": {"description": "no such file"}},
        security=_NO_TOKEN,
    ),
    ("GET", f"{_C}/events"): _sse("Live figures as server-sent events", "console", _CONSOLE),
    ("GET", _C): _page("Overview: replicas, devices, alerts, errors"),
    ("GET", f"{_C}/models"): _page("Models"),
    ("GET", f"{_C}/models/{{model}}"): _page("One model"),
    ("POST", f"{_C}/models/{{model}}/{{operation}}"): _page("Load, unload or roll back a model", body=True),
    ("GET", f"{_C}/jobs"): _page("Jobs"),
    ("GET", f"{_C}/jobs/{{job}}/failures.csv"): _page("A job's failures as CSV"),
    ("POST", f"{_C}/jobs/{{job}}/{{operation}}"): _page("Cancel or resume a job", body=True),
    ("GET", f"{_C}/imaging"): _page("Studies, series, results and exports"),
    ("GET", f"{_C}/imaging/results/{{result}}"): _page("The result viewer"),
    ("GET", f"{_C}/imaging/results/{{result}}/slice.png"): _page("One slice with its segmentation overlay"),
    ("GET", f"{_C}/imaging/results/{{result}}/map.png"): _page(
        "An explained image with its explanation map (Parametric Map) over it; overlay=0 without"
    ),
    ("POST", f"{_C}/imaging/exports/{{export}}/retry"): _page("Send a failed export again", body=True),
    ("GET", f"{_C}/ward"): _page("Beds, NEWS2, trends and rhythm"),
    ("POST", f"{_C}/ward/alerts/{{alert}}/acknowledge"): _page("Acknowledge an alert", body=True),
    ("GET", f"{_C}/audit"): _page("Search the audit trail"),
    ("POST", f"{_C}/audit/verify"): _page("Verify the audit chain", body=True),
    ("GET", f"{_C}/profiles"): _page("Device profiles and placement"),
    ("GET", f"{_C}/planner"): _page("The fleet planner"),
    ("POST", f"{_C}/planner"): _page("Plan a fleet", body=True),
}

DOCUMENT_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v2/openapi.json"): operation(
        "This OpenAPI 3.1 document (needs no token: it holds no data, only the routes)",
        "server",
        {"200": json_answer("the document", _OBJECT)},
        security=_NO_TOKEN,
    ),
}

#: WebSocket routes, which OpenAPI 3.1 cannot describe: listed under ``x-websockets``.
WEBSOCKETS: dict[str, str] = {
    "/v2/monitor/stream": "patient monitoring sessions: vital-sign samples in, NEWS2 scores and "
    "alerts out, one JSON message each (needs infer on the monitor model)",
}


def _explain(versioned: bool) -> Operation:
    return operation(
        "Explain one sample's output: attributions per input element (needs infer on the model)"
        + (" of one version" if versioned else ""),
        "explanations",
        {
            "200": {
                "description": "an inference response whose one output 'attributions' has the input's shape "
                "(binary when asked for, as infer), with parameters: method, implementation, target, "
                "method_parameters (every parameter used), explains (the inference explained), "
                "output_value, baseline_value, attribution_sum, completeness_error (Integrated Gradients), "
                "feature_names (feature-vector inputs), priority_class, model_evaluations",
                "content": {
                    "application/json": {"schema": ref("InferenceResponse")},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **errors("400", "404", "413", "503"),
        },
        body={
            "required": True,
            "description": "an inference request of one sample (JSON, or binary tensors after a JSON header "
            "of Inference-Header-Content-Length bytes) whose parameters are: method (occlusion, "
            "feature_ablation, integrated_gradients, grad_cam), target ({output, index}, an index, or "
            "'output:index'), explains (the X-Request-ID of the inference explained; without it the call "
            "runs the inference itself) and the method's parameters (window, stride, baseline, steps, rule, "
            "epsilon, batch_size, implementation, layer); docs/EXPLANATIONS.md",
            "content": {
                "application/json": {"schema": ref("InferenceRequest")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    )


EXPLAIN_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v2/models/{model}/explain"): _explain(False),
    ("POST", "/v2/models/{model}/versions/{version}/explain"): _explain(True),
}
