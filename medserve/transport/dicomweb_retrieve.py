"""DICOMweb door, retrieval: QIDO-RS searches and WADO-RS retrieval over the one HTTP server.

=====================================================================  ==============================
route (GET, under ``/dicomweb``)                                       answers
=====================================================================  ==============================
``/studies``, ``/series``, ``/instances``,                             QIDO-RS: DICOM JSON array of
``/studies/{study}/series``, ``/studies/{study}/instances``,           matches (``imaging/qido.py``)
``/studies/{study}/series/{series}/instances``
``/studies/{study}``, ``…/series/{series}``, ``…/instances/{sop}``     WADO-RS: ``multipart/related;
                                                                       type="application/dicom"``, the
                                                                       files as stored
``…/metadata`` (study, series, instance)                               DICOM JSON headers
``…/instances/{sop}/frames/{1,2,…}``                                   ``multipart/related; type=
                                                                       "application/octet-stream"``
``…/instances/{sop}/rendered``, ``…/frames/{n}/rendered``              ``image/png`` or ``image/jpeg``
=====================================================================  ==============================

The instances are those of ``imaging/dicomweb_catalog.py``: received ones and medserve's SEG / SR,
each readable only with a grant for its model (or by a principal without grants). Nothing the caller
may not read is ever named: an unreadable study is answered 404 like a missing one. Errors go
through the DICOMweb door's table (``transport/dicomweb.py``); an ``Accept`` that names nothing this
route can produce is a 400 naming what it can.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from medserve.imaging import qido, wado
from medserve.imaging.dicomweb_catalog import Catalog, CatalogEntry
from medserve.imaging.service import ImagingService
from medserve.protocol.rest_codec import dumps
from medserve.transport.dicomweb import guarded
from medserve.transport.http import authenticated
from medserve.values.errors import InvalidInput, ModelNotFound

_DICOM_JSON = "application/dicom+json"


def _accepted(request: Request) -> list[tuple[str, str]]:
    """(media type, its ``type`` parameter) of each Accept entry, in order; ``*/*`` when none."""
    out = []
    for item in request.headers.get("accept", "*/*").split(","):
        main, *params = (p.strip() for p in item.split(";"))
        kind = ""
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "type":
                kind = value.strip().strip('"').lower()
        if main:
            out.append((main.lower(), kind))
    return out or [("*/*", "")]


def _negotiate(request: Request, offered: Sequence[str], multipart_of: str = "") -> str:
    """The first of ``offered`` the Accept header allows (``multipart_of``: the parts' type)."""
    for main, kind in _accepted(request):
        if main in ("*/*", "multipart/*") or (main == "multipart/related" and _covers(kind, multipart_of)):
            return offered[0]
        for media in offered:
            if main == media or (main.endswith("/*") and media.startswith(main[:-1])):
                return media
    wanted = f'multipart/related; type="{multipart_of}"' if multipart_of else ", ".join(offered)
    raise InvalidInput(f"this resource is offered as {wanted}; the Accept header allows none of it")


def _covers(kind: str, media: str) -> bool:
    """Whether the Accept entry's part ``kind`` ('' for any, ``*/*``, ``image/*``) covers ``media``."""
    return kind in ("", "*/*", media) or (kind.endswith("/*") and media.startswith(kind[:-1]))


def _multipart(parts: AsyncIterator[bytes], part_type: str, boundary: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for content in parts:
            yield f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("latin-1") + content + b"\r\n"
        yield f"--{boundary}--\r\n".encode("latin-1")

    media = f'multipart/related; type="{part_type.split(";")[0]}"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media)


def dicomweb_retrieve_routes(imaging: ImagingService) -> list[BaseRoute]:
    service = imaging.service
    catalog = Catalog(imaging.database, imaging.store.root, imaging.results_root, imaging.pipelines)

    async def entries(request: Request, *, required: bool) -> list[CatalogEntry]:
        caller = await authenticated(service, request, door="dicomweb")
        params = request.path_params
        found = await asyncio.to_thread(
            catalog.entries, caller.principal, params.get("study"), params.get("series"), params.get("sop")
        )
        if required and not found:
            level = "instance" if "sop" in params else "series" if "series" in params else "study"
            raise ModelNotFound(f"no {level} with that UID is held here for this caller")
        return found

    def searcher(level: str) -> Any:
        async def search(request: Request) -> Response:
            query = qido.parse_query(request.query_params.multi_items())
            _negotiate(request, [_DICOM_JSON, "application/json"])
            found = await entries(request, required=False)
            base = str(request.base_url).rstrip("/") + "/dicomweb"
            answer = await asyncio.to_thread(qido.search, found, level, query, base)
            return Response(dumps(answer), status_code=200, media_type=_DICOM_JSON)

        return search

    async def instances(request: Request) -> Response:
        _negotiate(request, ["application/dicom"], "application/dicom")
        found = await entries(request, required=True)

        async def files() -> AsyncIterator[bytes]:
            for entry in found:
                yield await asyncio.to_thread(entry.path.read_bytes)

        syntax = str(found[0].header.file_meta.get("TransferSyntaxUID", "")) if len(found) == 1 else ""
        part = "application/dicom" + (f"; transfer-syntax={syntax}" if syntax else "")
        return _multipart(files(), part, uuid.uuid4().hex)

    async def metadata(request: Request) -> Response:
        _negotiate(request, [_DICOM_JSON, "application/json"])
        found = await entries(request, required=True)
        answer = [wado.metadata(entry.header) for entry in found]
        return Response(dumps(answer), status_code=200, media_type=_DICOM_JSON)

    async def frames(request: Request) -> Response:
        numbers = wado.frame_numbers(request.path_params["frames"])
        _negotiate(request, ["application/octet-stream"], "application/octet-stream")
        found = await entries(request, required=True)
        pixels = await asyncio.to_thread(wado.frames, found[0].path, numbers)

        async def parts() -> AsyncIterator[bytes]:
            for frame in pixels:
                yield frame

        part = f"application/octet-stream; transfer-syntax={wado.EXPLICIT_VR_LITTLE_ENDIAN}"
        return _multipart(parts(), part, uuid.uuid4().hex)

    async def rendered(request: Request) -> Response:
        text = request.path_params.get("frame", "1")
        number = wado.frame_numbers(text)[0] if "," not in text else 0
        if number == 0:
            raise InvalidInput("a rendered frame is one frame number, not a list")
        media = _negotiate(request, list(wado.RENDERED_TYPES))
        found = await entries(request, required=True)
        image = await asyncio.to_thread(wado.render, found[0].path, number, media)
        return Response(image, status_code=200, media_type=media)

    study, series, sop = "/dicomweb/studies/{study}", "/series/{series}", "/instances/{sop}"
    routes: list[tuple[str, Any]] = [
        ("/dicomweb/studies", searcher("study")),
        ("/dicomweb/series", searcher("series")),
        ("/dicomweb/instances", searcher("instance")),
        (study + "/series", searcher("series")),
        (study + "/instances", searcher("instance")),
        (study + series + "/instances", searcher("instance")),
        (study, instances),
        (study + series, instances),
        (study + series + sop, instances),
        (study + "/metadata", metadata),
        (study + series + "/metadata", metadata),
        (study + series + sop + "/metadata", metadata),
        (study + series + sop + "/frames/{frames}", frames),
        (study + series + sop + "/rendered", rendered),
        (study + series + sop + "/frames/{frame}/rendered", rendered),
    ]
    return [Route(path, guarded(handler), methods=["GET"]) for path, handler in routes]
