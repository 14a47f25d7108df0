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
from medserve.transport.http import _guarded, _json, authenticated
from medserve.values.access import Action
from medserve.values.errors import InvalidInput, ModelNotFound, PayloadTooLarge, StoreUnavailable

_DICOM_JSON = "application/dicom+json"
_SPOOL_BYTES = 8 * 1024 * 1024

#: PS3.4 C-STORE / PS3.18 STOW-RS failure reasons.
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_STUDY_MISMATCH = 0xC409  # "Referenced Study Instance UID mismatch"


def _boundary(content_type: str) -> bytes:
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/related":
        raise _UnsupportedMedia(
            f"STOW-RS needs Content-Type multipart/related; type=\"application/dicom\", not '{main.strip()}'"
        )
    found = dict(
        (k.strip().lower(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in params.split(";"))
        if k.strip()
    )
    kind = found.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise _UnsupportedMedia(f"STOW-RS here takes type=\"application/dicom\" parts, not '{kind}'")
    boundary = found.get("boundary", "")
    if not boundary:
        raise InvalidInput("the multipart/related Content-Type has no boundary parameter")
    return boundary.encode("latin-1")


class _UnsupportedMedia(InvalidInput):
    pass


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
        try:
            boundary = _boundary(request.headers.get("content-type", ""))
        except _UnsupportedMedia as exc:
            return _json({"error": str(exc)}, 415)
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
                    failed.append({"00081197": _element("US", FAILURE_CANNOT_UNDERSTAND)})
                    warnings.append(f"part {number}: Content-Type '{part_type}' is not application/dicom")
                    continue
                try:
                    instance = await imaging.ingest(content, caller, study_instance_uid=expected_study)
                except StudyMismatch as exc:
                    failed.append(_failed(exc.header, FAILURE_STUDY_MISMATCH))
                    warnings.append(f"part {number}: {exc}")
                    continue
                except StoreUnavailable as exc:
                    failed.append({"00081197": _element("US", FAILURE_OUT_OF_RESOURCES)})
                    warnings.append(f"part {number}: {exc}")
                    continue
                except InvalidInput as exc:
                    failed.append({"00081197": _element("US", FAILURE_CANNOT_UNDERSTAND)})
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

    async def studies(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.READ)
        return _json({"studies": await _in_thread(imaging.studies)})

    async def study(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.READ)
        uid = request.path_params["study"]
        found = await _in_thread(imaging.studies, uid)
        if not found:
            raise ModelNotFound(f"no study {uid} has been received")
        return _json(found[0])

    async def series(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.READ)
        uid = request.path_params["series"]
        found = await _in_thread(imaging.studies, None, uid)
        if not found:
            raise ModelNotFound(f"no series {uid} has been received")
        return _json(found[0]["series"][0])

    async def retry(request: Request) -> Response:
        caller = await authenticated(service, request)
        caller.principal.require(Action.MANAGE)
        export_id = request.path_params["export"]
        if not await _in_thread(imaging.outbox.retry, export_id):
            raise ModelNotFound(f"no failed export {export_id}")
        return _json({"export": export_id, "state": "pending"})

    return [
        Route("/dicomweb/studies", _guarded(stow), methods=["POST"]),
        Route("/dicomweb/studies/{study}", _guarded(stow), methods=["POST"]),
        Route("/dicom/studies", _guarded(studies), methods=["GET"]),
        Route("/dicom/studies/{study}", _guarded(study), methods=["GET"]),
        Route("/dicom/series/{series}", _guarded(series), methods=["GET"]),
        Route("/dicom/exports/{export}/retry", _guarded(retry), methods=["POST"]),
    ]


def _failed(header: Any, reason: int) -> dict[str, Any]:
    return {
        "00081150": _element("UI", str(header.get("SOPClassUID", ""))),
        "00081155": _element("UI", str(header.get("SOPInstanceUID", ""))),
        "00081197": _element("US", reason),
    }


_UNSAFE = re.compile(r"[^\x20-\x7e]|\"")


def _header_safe(text: str) -> str:
    return _UNSAFE.sub("'", text)[:300]


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)
