"""OpenAPI operations of the DICOMweb retrieval routes (``transport/dicomweb_retrieve.py``):
QIDO-RS searches and WADO-RS retrieval (PS3.18 10.4 and 10.6)."""

from __future__ import annotations

from typing import Any

from medserve.transport.openapi_oip import Operation, operation, query_parameter
from medserve.transport.openapi_schemas import errors, ref

_UINT = {"type": "integer", "minimum": 0}
_DICOM_JSON = {"application/dicom+json": {"schema": {"type": "array", "items": ref("DicomJson")}}}
_BINARY = {"type": "string", "format": "binary"}
_ACCEPT = {
    "name": "Accept",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "a media type this route can produce; anything else answers 400 naming them",
}


def _search(level: str) -> Operation:
    return operation(
        f"QIDO-RS: search for {level}",
        "dicomweb",
        {"200": {"description": "the matches", "content": _DICOM_JSON}, **errors("400")},
        query=[
            query_parameter("limit", _UINT, "the most matches"),
            query_parameter("offset", _UINT, "skip this many matches"),
            query_parameter("includefield", {"type": "string"}, "attributes to add, or all"),
        ],
        headers=[_ACCEPT],
    )


def _retrieve(what: str, content: dict[str, Any]) -> Operation:
    return operation(
        f"WADO-RS: {what}",
        "dicomweb",
        {"200": {"description": what, "content": content}, **errors("400", "404")},
        headers=[_ACCEPT],
    )


_S, _SE, _I = "/dicomweb/studies/{study}", "/series/{series}", "/instances/{sop}"
_INSTANCES = {"multipart/related": {"schema": _BINARY}}
_RENDERED = {"image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY}}

DICOMWEB_RETRIEVE_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/dicomweb/studies"): _search("studies"),
    ("GET", "/dicomweb/series"): _search("series"),
    ("GET", "/dicomweb/instances"): _search("instances"),
    ("GET", f"{_S}/series"): _search("the series of a study"),
    ("GET", f"{_S}/instances"): _search("the instances of a study"),
    ("GET", f"{_S}{_SE}/instances"): _search("the instances of a series"),
    ("GET", _S): _retrieve("a study's instances as stored", _INSTANCES),
    ("GET", f"{_S}{_SE}"): _retrieve("a series' instances as stored", _INSTANCES),
    ("GET", f"{_S}{_SE}{_I}"): _retrieve("one instance as stored", _INSTANCES),
    ("GET", f"{_S}/metadata"): _retrieve("a study's headers", _DICOM_JSON),
    ("GET", f"{_S}{_SE}/metadata"): _retrieve("a series' headers", _DICOM_JSON),
    ("GET", f"{_S}{_SE}{_I}/metadata"): _retrieve("an instance's header", _DICOM_JSON),
    ("GET", f"{_S}{_SE}{_I}/frames/{{frames}}"): _retrieve(
        "frames (numbers from 1, comma-separated) as uncompressed pixel data",
        {"multipart/related": {"schema": _BINARY}},
    ),
    ("GET", f"{_S}{_SE}{_I}/rendered"): _retrieve("the first frame rendered", _RENDERED),
    ("GET", f"{_S}{_SE}{_I}/frames/{{frame}}/rendered"): _retrieve("one frame rendered", _RENDERED),
}
