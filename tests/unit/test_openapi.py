"""The OpenAPI document: generated from the routes, every route documented, nothing documented that
no door mounts. (The served document of a real server, and a schemathesis run against it, are in
tests/integration/test_openapi_fuzz.py.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from medserve.transport.console import console_routes
from medserve.transport.dicomweb import dicomweb_routes
from medserve.transport.dicomweb_retrieve import dicomweb_retrieve_routes
from medserve.transport.http import build_app
from medserve.transport.http_explain import explain_routes
from medserve.transport.http_shared_memory import shared_memory_routes
from medserve.transport.http_trace_log import trace_log_routes
from medserve.transport.jobs import jobs_routes
from medserve.transport.openapi import OPERATIONS, openapi_document, route_operations, undocumented
from medserve.transport.stream import stream_routes


async def _nothing(request: Any) -> Response:
    return Response()


def _every_door() -> list[BaseRoute]:
    """The routes of every door, built as server.py builds them (the objects behind them are never
    called while routes are built)."""

    async def record(*_args: Any, **_kwargs: Any) -> None:  # the audit trail; no request is made here
        return None

    service: Any = SimpleNamespace(shared_memory=None, record=record)
    routes = stream_routes(service, SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    imaging: Any = SimpleNamespace(
        service=service, database=None, store=SimpleNamespace(root=None), results_root=None, pipelines={}
    )
    routes += dicomweb_routes(imaging, 1 << 20) + dicomweb_retrieve_routes(imaging)
    routes += jobs_routes(SimpleNamespace(service=service))  # type: ignore[arg-type]
    routes += shared_memory_routes(service) + trace_log_routes(service)
    routes += explain_routes(service, SimpleNamespace(), 1 << 20)  # type: ignore[arg-type]
    routes += console_routes(SimpleNamespace(service=service))  # type: ignore[arg-type]
    return list(build_app(service, SimpleNamespace(), 1 << 20, routes).routes)  # type: ignore[arg-type]


def test_every_route_of_every_door_is_documented_and_nothing_else() -> None:
    routes = _every_door()
    assert undocumented(routes) == []
    http = {(m, p) for m, p in route_operations(routes) if m != "WEBSOCKET"}
    assert http == set(OPERATIONS), (
        f"documented but not mounted: {sorted(set(OPERATIONS) - http)}; "
        f"mounted but not documented: {sorted(http - set(OPERATIONS))}"
    )


def test_the_document_is_openapi_3_1_with_path_parameters_from_the_routes() -> None:
    document = openapi_document(_every_door())
    assert document["openapi"] == "3.1.0"
    infer = document["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    path_parameters = [p["name"] for p in infer["parameters"] if p["in"] == "path"]
    assert path_parameters == ["model", "version"]
    assert "head" not in document["paths"]["/v2/health/live"]
    assert document["paths"]["/v2/health/live"]["get"]["security"] == []
    assert document["paths"]["/v2/openapi.json"]["get"]["security"] == []
    assert document["security"] == [{"bearer": []}]
    assert "/v2/monitor/stream" in document["x-websockets"]
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # every $ref names a component that exists
    text = str(document)
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in document["components"]["schemas"], name


def test_a_route_without_a_schema_is_listed_and_marked() -> None:
    routes: list[BaseRoute] = [
        Route("/v2/health/live", _nothing, methods=["GET"]),
        Route("/v2/brand/{thing:path}/new", _nothing, methods=["GET", "POST"]),
        WebSocketRoute("/v2/other/socket", _nothing),
    ]
    assert undocumented(routes) == [
        ("GET", "/v2/brand/{thing}/new"),
        ("POST", "/v2/brand/{thing}/new"),
        ("WEBSOCKET", "/v2/other/socket"),
    ]
    document = openapi_document(routes)
    new = document["paths"]["/v2/brand/{thing}/new"]
    assert new["get"]["x-undocumented"] is True and new["post"]["x-undocumented"] is True
    assert new["get"]["parameters"][0] == {
        "name": "thing",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert "x-undocumented" not in document["paths"]["/v2/health/live"]["get"]
