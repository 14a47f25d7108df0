"""DICOMweb door: STOW-RS (store instances) and the imaging status API, over the one HTTP server.

==========================================  ===================================================
route                                       does
==========================================  ===================================================
POST ``/dicomweb/studies``                  STOW-RS: ``multipart/related; type="application/
POST ``/dicomweb/studies/{study}``          dicom"``; each part one Part-10 instance, stored
                                            before the reply. DICOM JSON reply with the Referenced
                                            and Failed SOP Sequences: 200 all stored, 202 some
                                            failed, 409 none stored; a ``Warning`` header per
                                            failure says what was wrong
GET  ``/dicom/studies``                     received studies, their series, routing state,
GET  ``/dicom/studies/{study}``             results and exports
GET  ``/dicom/series/{series}``
POST ``/dicom/exports/{id}/retry``          send a failed export again (manage role)
==========================================  ===================================================

The body is spooled to a temporary file past a few MiB and parsed part by part, so memory holds
one instance at a time however large the study.

Errors: this door's one table, :data:`STATUS_CODES`, is the REST door's with an unsupported media
type added (415); an instance refused inside a STOW-RS request gets the Failure Reason the DIMSE
door's table gives its error (:func:`medserve.transport.dimse.store_status_of`), as a C-STORE would.
"""

from __future__ import annotations

import asyncio
import mmap
import re
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.imaging.service import ImagingService, StudyMismatch
from medserve.protocol.rest_codec import dumps
from medserve.transport import http
from medserve.transport.dicom_status import StoreStatus
from medserve.transport.dimse import store_status_of
from medserve.transport.http import authenticated, json_response
from medserve.values.access import Action, Caller
from medserve.values.errors import InvalidInput, MedserveError, ModelNotFound, PayloadTooLarge

_DICOM_JSON = "application/dicom+json"
_SPOOL_BYTES = 8 * 1024 * 1024


class UnsupportedMediaType(InvalidInput):
    """A STOW-RS request whose Content-Type is not ``multipart/related; type="application/dicom"``."""


#: The DICOMweb door's one table: the REST door's, with an unsupported media type answered 415.
STATUS_CODES = http.STATUS_CODES.extended("DICOMweb", {UnsupportedMediaType: 415})


def guarded(handler: http.Handler) -> http.Handler:
    """``handler`` answering its errors through the DICOMweb door's table."""
    return http.guarded(handler, STATUS_CODES)


def _boundary(content_type: str) -> bytes:
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS needs Content-Type multipart/related; type=\"application/dicom\", not '{main.strip()}'"
        )
    found = dict(
        (k.strip().lower(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in params.split(";"))
        if k.strip()
    )
    kind = found.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise UnsupportedMediaType(f"STOW-RS here takes type=\"application/dicom\" parts, not '{kind}'")
    boundary = found.get("boundary", "")
    if not boundary:
        raise InvalidInput("the multipart/related Content-Type has no boundary parameter")
    return boundary.encode("latin-1")


def iter_parts(body: bytes | mmap.mmap, boundary: bytes) -> Iterator[tuple[dict[str, str], bytes]]:
    """The (headers, content) of each part of a multipart body (RFC 2046)."""
    delimiter = b"--" + boundary
    start = body.find(delimiter)
    if start < 0:
        raise InvalidInput("the multipart body does not contain its boundary")
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return  # close delimiter
        if body[position : position + 2] == b"\r\n":
            position += 2
        header_end = body.find(b"\r\n\r\n", position)
        if header_end < 0:
            raise InvalidInput("a multipart part has no end of headers (truncated body?)")
        headers = {}
        for line in bytes(body[position:header_end]).decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise InvalidInput("the multipart body ends inside a part (no closing boundary)")
        yield headers, bytes(body[content_start:next_delimiter])
        position = next_delimiter + 2 + len(delimiter)


async def _spool(request: Request, limit: int) -> IO[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - closed by the caller
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            spool.close()
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        spool.write(chunk)
    spool.flush()
    return spool


def _element(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def dicomweb_routes(imaging: ImagingService, max_request_bytes: int) -> list[BaseRoute]:
    service = imaging.service

    async def stow(request: Request) -> Response:
        caller = await authenticated(service, request, door="dicomweb")
        caller.principal.require(Action.INFER)
        boundary = _boundary(request.headers.get("content-type", ""))
        expected_study = request.path_params.get("study")
        spool = await _spool(request, max_request_bytes)
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        warnings: list[str] = []
        base = str(request.base_url).rstrip("/")
        try:
            size = spool.seek(0, 2)
            spool.seek(0)
            body: bytes | mmap.mmap = (
                spool.read()
                if size <= _SPOOL_BYTES
                else mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
            )
            for number, (headers, content) in enumerate(iter_parts(body, boundary), start=1):
                part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
                if part_type != "application/dicom":
                    failed.append(_failed(StoreStatus.CANNOT_UNDERSTAND))
                    warnings.append(f"part {number}: Content-Type '{part_type}' is not application/dicom")
                    continue
                try:
                    instance = await imaging.ingest(content, caller, study_instance_uid=expected_study)
                except MedserveError as exc:
                    header = exc.header if isinstance(exc, StudyMismatch) else None
                    failed.append(_failed(store_status_of(exc), header))
                    warnings.append(f"part {number}: {exc}")
                    continue
                stored.append(
                    {
                        "00081150": _element("UI", instance.sop_class_uid),
                        "00081155": _element("UI", instance.sop_uid),
                        "00081190": _element(
                            "UR",
                            f"{base}/dicomweb/studies/{instance.study_uid}/series/{instance.series_uid}"
                            f"/instances/{instance.sop_uid}",
                        ),
                    }
                )
        finally:
            spool.close()
        if not stored and not failed:
            raise InvalidInput("the multipart body contains no parts")
        reply: dict[str, Any] = {}
        if expected_study:
            reply["00081190"] = _element("UR", f"{base}/dicomweb/studies/{expected_study}")
        if stored:
            reply["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            reply["00081198"] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if stored else 409)
        response = Response(dumps(reply), status_code=status, media_type=_DICOM_JSON)
        for text in warnings[:20]:
            response.headers.append("Warning", f'299 medserve "{_header_safe(text)}"')
        return response

    async def visible(caller: Caller, *uids: str | None) -> list[dict[str, Any]]:
        """The studies (of ``uids``: study, series) with only the series the caller may see."""
        caller.principal.require(Action.READ)
        found: list[dict[str, Any]] = await _in_thread(imaging.visible_studies, caller.principal, *uids)
        return found

    async def studies(request: Request) -> Response:
        caller = await authenticated(service, request)
        return json_response({"studies": await visible(caller)})

    async def study(request: Request) -> Response:
        caller = await authenticated(service, request)
        uid = request.path_params["study"]
        found = await visible(caller, uid)
        if not found:
            raise ModelNotFound(f"no study {uid} has been received")
        return json_response(found[0])

    async def series(request: Request) -> Response:
        caller = await authenticated(service, request)
        uid = request.path_params["series"]
        found = await visible(caller, None, uid)
        if not found:
            raise ModelNotFound(f"no series {uid} has been received")
        return json_response(found[0]["series"][0])

    async def retry(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        export_id = request.path_params["export"]
        if not await _in_thread(imaging.outbox.retry, export_id, caller.principal):
            raise ModelNotFound(f"no failed export {export_id}")
        return json_response({"export": export_id, "state": "pending"})

    return [
        Route("/dicomweb/studies", guarded(stow), methods=["POST"]),
        Route("/dicomweb/studies/{study}", guarded(stow), methods=["POST"]),
        Route("/dicom/studies", guarded(studies), methods=["GET"]),
        Route("/dicom/studies/{study}", guarded(study), methods=["GET"]),
        Route("/dicom/series/{series}", guarded(series), methods=["GET"]),
        Route("/dicom/exports/{export}/retry", guarded(retry), methods=["POST"]),
    ]


def _failed(reason: int, header: Any = None) -> dict[str, Any]:
    """A Failed SOP Sequence item: the instance's UIDs when its header is known, and the reason."""
    item: dict[str, Any] = {}
    if header is not None:
        item["00081150"] = _element("UI", str(header.get("SOPClassUID", "")))
        item["00081155"] = _element("UI", str(header.get("SOPInstanceUID", "")))
    item["00081197"] = _element("US", int(reason))
    return item


_UNSAFE = re.compile(r"[^\x20-\x7e]|\"")


def _header_safe(text: str) -> str:
    return _UNSAFE.sub("'", text)[:300]


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)
