"""Jobs door: the offline job API over the one HTTP server.

====================================  ===========================================================
route                                 does
====================================  ===========================================================
POST ``/jobs``                        submit a spec (YAML or JSON body; paths absolute on the
                                      server): 201 with the job, 400 saying what is wrong (manage)
GET  ``/jobs``                        recent jobs on models the caller is granted (read)
GET  ``/jobs/{id}``                   state, progress (items done/failed/total, items/s, ETA), error
POST ``/jobs/{id}/cancel``            stop it after the current chunk (manage)
GET  ``/jobs/{id}/failures``          item failures with locator and reason (``offset``, ``limit``)
GET  ``/jobs/{id}/results``           the sink file of a finished job (409 before it ends); the
                                      ``results`` action on the job's model (not viewers)
====================================  ===========================================================

A job is scoped to its model: reading it needs a grant for that model, as inferring on it would.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from medserve.jobs.manager import JobManager
from medserve.jobs.spec import parse_spec_text
from medserve.jobs.store import SUCCEEDED
from medserve.transport.http import authenticated, guarded, json_response, read_body
from medserve.values.access import Action
from medserve.values.errors import Conflict, InvalidInput

#: A job spec is small: its body limit is its own, not the inference request's.
_MAX_SPEC_BYTES = 1 << 20


def _int(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidInput(f"query parameter '{name}' must be a non-negative integer, not {raw!r}")
    return min(int(raw), maximum)


def jobs_routes(jobs: JobManager) -> list[BaseRoute]:
    service = jobs.service

    async def submit(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)  # rights before bytes: the body is not read before
        body = await read_body(request, _MAX_SPEC_BYTES)
        spec = parse_spec_text(body.decode("utf-8", errors="replace"), where="job spec")
        caller.principal.require(Action.MANAGE, spec.model)
        if not spec.source.is_absolute() or not spec.sink.path.is_absolute():
            raise InvalidInput("over REST, source and sink.path must be absolute paths on the server")
        status = await jobs.submit(spec, caller)
        return json_response(status.document(), 201)

    async def listing(request: Request) -> Response:
        caller = await authenticated(service, request)
        limit = _int(request, "limit", 100, 1000)
        found = await jobs.recent(caller, limit)
        visible = [s.document() for s in found if caller.principal.may(Action.READ, s.model)]
        return json_response({"jobs": visible})

    async def status(request: Request) -> Response:
        caller = await authenticated(service, request)
        job = await jobs.status(request.path_params["job"], caller)
        caller.principal.require(Action.READ, job.model)
        return json_response(job.document())

    async def cancel(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        job = await jobs.status(request.path_params["job"], caller)
        caller.principal.require(Action.MANAGE, job.model)
        return json_response((await jobs.cancel(request.path_params["job"], caller)).document())

    async def failures(request: Request) -> Response:
        caller = await authenticated(service, request)
        offset = _int(request, "offset", 0, 1 << 62)
        limit = _int(request, "limit", 1000, 10000)
        job = await jobs.status(request.path_params["job"], caller)
        caller.principal.require(Action.READ, job.model)
        found = await jobs.failures(request.path_params["job"], caller, offset, limit)
        return json_response(
            {"failures": [{"index": f.index, "locator": f.locator, "reason": f.reason} for f in found]}
        )

    async def results(request: Request) -> Response:
        caller = await authenticated(service, request)
        job_status, sink, _ = await jobs.results(request.path_params["job"], caller)
        caller.principal.require(Action.RESULTS, job_status.model)
        if job_status.state != SUCCEEDED:
            raise Conflict(f"job {job_status.id} is {job_status.state}: results come when it has succeeded")
        if not sink.is_file():
            raise Conflict(f"job {job_status.id}'s results are no longer at {sink}")
        return FileResponse(sink, filename=sink.name)

    return [
        Route("/jobs", guarded(submit), methods=["POST"]),
        Route("/jobs", guarded(listing), methods=["GET"]),
        Route("/jobs/{job}", guarded(status), methods=["GET"]),
        Route("/jobs/{job}/cancel", guarded(cancel), methods=["POST"]),
        Route("/jobs/{job}/failures", guarded(failures), methods=["GET"]),
        Route("/jobs/{job}/results", guarded(results), methods=["GET"]),
    ]
