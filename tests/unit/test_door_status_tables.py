"""Every error of medserve's error tree, through every door's one error→status table.

The tree is found by walking ``MedserveError.__subclasses__()`` recursively after importing every
module of the package that defines a subclass (found by reading the source, so a new error class in a
new module is walked too). Each error is raised into the code each door answers with (the REST and
DICOMweb guards, the gRPC guard, the WebSocket refusal, the DIMSE ``accept``, a STOW-RS part), and the
status it sends must be the one its table gives, and must not blame the server for a client's
mistake. No sockets: the doors' answering code is called directly, or over an in-memory ASGI client.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pydicom
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from medserve import transport
from medserve.imaging.service import StudyMismatch
from medserve.protocol.grpc_messages import pb
from medserve.transport import dicomweb, dimse, http, stream
from medserve.transport import grpc as grpc_door
from medserve.transport.dicom_status import StoreStatus, out_of_resources, server_failure
from medserve.transport.http_destinations import retryable_status
from medserve.transport.status_table import StatusTable
from medserve.values.access import Caller, Principal, Role
from medserve.values.errors import (
    DeadlineExceeded,
    InvalidInput,
    MedserveError,
    ModelNotReady,
    Overloaded,
    StoreUnavailable,
)

PACKAGE = Path(__file__).resolve().parents[2] / "medserve"
SERVER, CLIENT = "server", "client"

#: Whose failure each error is, and why. Every direct subclass of ``MedserveError`` must be listed; a
#: deeper subclass is what its nearest listed ancestor is unless listed itself. A client's error must
#: never be answered with a server-failure status (HTTP 5xx, gRPC INTERNAL/UNAVAILABLE/…, WebSocket
#: 1011-1014, DICOM Processing Failure or Out of Resources), which a client would retry or report as
#: the server's fault. A server's error may be answered either way: ``ModelLoadError`` and
#: ``InvalidConfig`` are 400 over REST to the operator whose load request met them.
SIDES: dict[str, tuple[str, str]] = {
    "medserve.values.errors.ModelNotFound": (CLIENT, "the request names a model or version not loaded"),
    "medserve.values.errors.InvalidInput": (CLIENT, "the request is malformed or does not fit the model"),
    "medserve.values.errors.PayloadTooLarge": (CLIENT, "the request body passes the configured limit"),
    "medserve.values.errors.Unauthenticated": (CLIENT, "no valid credentials were sent"),
    "medserve.values.errors.PermissionDenied": (CLIENT, "the caller's role or grants do not allow it"),
    "medserve.values.errors.JobNotFound": (CLIENT, "the request names a job that does not exist"),
    "medserve.values.errors.Conflict": (CLIENT, "the request does not fit the resource's state"),
    "medserve.streaming.alerts.AlertNotFound": (CLIENT, "the request names an alert not kept"),
    "medserve.values.errors.InvalidConfig": (SERVER, "a config.yaml or the settings are wrong"),
    "medserve.values.errors.ModelLoadError": (SERVER, "a model's files do not load"),
    "medserve.values.errors.InferenceFailed": (SERVER, "the engine raised while running the model"),
    "medserve.values.errors.Unsupported": (SERVER, "the server does not implement it (HTTP 501)"),
    "medserve.values.errors.ModelNotReady": (SERVER, "no version of the model can serve now"),
    "medserve.values.errors.Overloaded": (SERVER, "queues full, or shutting down"),
    "medserve.values.errors.DeadlineExceeded": (SERVER, "the server could not run it in time"),
    "medserve.values.errors.StoreUnavailable": (SERVER, "the database cannot be reached"),
    "medserve.imaging.destinations.ExportFailed": (SERVER, "a downstream receiver refused or was away"),
    "medserve.streaming.alert_delivery.AlertDeliveryFailed": (SERVER, "an alert webhook refused or was away"),
    "medserve.startup.StartupFailure": (SERVER, "the server cannot start (port, data dir)"),
    "medserve.server.ShutdownIncomplete": (SERVER, "the server could not stop cleanly"),
    "medserve.demo.ward_simulator.WardUnreachable": (SERVER, "the server did not answer the simulator"),
}

#: Errors of a server that cannot serve now: every door must tell the client to come back later, and
#: medserve's own outbound doors must resend on that answer.
TRANSIENT = (ModelNotReady, Overloaded, DeadlineExceeded, StoreUnavailable)

_GRPC_SERVER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
_WS_SERVER = {1011, 1012, 1013, 1014}
_CLASS = re.compile(r"^class (?P<name>\w+)\((?P<bases>[^)]*)\)", re.MULTILINE)


def _error_modules() -> list[str]:
    """Modules of the package that define a subclass of ``MedserveError``, read from the source."""
    classes: list[tuple[str, str, set[str]]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts or "_generated" in path.parts or path.name == "__main__.py":
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for match in _CLASS.finditer(path.read_text(encoding="utf-8")):
            bases = {base.strip().rsplit(".", 1)[-1] for base in match["bases"].split(",")}
            classes.append((module, match["name"], bases))
    errors, modules = {"MedserveError"}, set()
    while True:
        found = {(m, name) for m, name, bases in classes if bases & errors and name not in errors}
        if not found:
            return sorted(modules)
        errors |= {name for _, name in found}
        modules |= {m for m, _ in found}


def _walk(cls: type[MedserveError]) -> Iterator[type[MedserveError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _walk(sub)


def _error_tree() -> list[type[MedserveError]]:
    for module in _error_modules():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # an optional engine or tool is not installed here
            if (exc.name or "").startswith("medserve"):
                raise
    product = {cls for cls in _walk(MedserveError) if cls.__module__.startswith("medserve.")}
    return [MedserveError, *sorted(product, key=lambda c: f"{c.__module__}.{c.__name__}")]


TREE = _error_tree()
WALKED = (
    http.STATUS_CODES,
    dicomweb.STATUS_CODES,
    grpc_door.STATUS_CODES,
    stream.CLOSE_CODES,
    dimse.STATUS_CODES,
)
IDS = [cls.__name__ for cls in TREE]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _side(cls: type[MedserveError]) -> str:
    for ancestor in cls.__mro__:
        if _name(ancestor) in SIDES:
            return SIDES[_name(ancestor)][0]
    return SERVER  # MedserveError itself: an error nobody named is the server's fault


def _raised(cls: type[MedserveError]) -> MedserveError:
    """An instance of ``cls`` as its code would raise it (its own arguments where it needs some)."""
    message = f"{cls.__name__} raised"
    if issubclass(cls, StudyMismatch):
        return cls(message, pydicom.Dataset())
    try:
        return cls(message)
    except TypeError:  # a constructor with other arguments: the message is what the doors send
        error = cls.__new__(cls)
        MedserveError.__init__(error, message)
        return error


def test_the_walk_finds_the_tree_and_every_direct_subclass_is_classified() -> None:
    assert {InvalidInput, StudyMismatch, dicomweb.UnsupportedMediaType} <= set(TREE)
    unlisted = [
        _name(cls)
        for cls in TREE
        if cls is not MedserveError and not any(_name(a) in SIDES for a in cls.__mro__)
    ]
    assert not unlisted, f"say in SIDES whose failure these are: {unlisted}"


def test_every_door_table_is_walked_here() -> None:
    """A new door's table must join the walk below, with the code that door answers through."""
    walked = {id(table) for table in WALKED}
    unwalked: list[str] = []
    for info in pkgutil.iter_modules(transport.__path__, "medserve.transport."):
        module = importlib.import_module(info.name)
        unwalked += [
            f"{info.name}.{name}"
            for name, value in vars(module).items()
            if isinstance(value, StatusTable) and id(value) not in walked
        ]
    assert not unwalked, f"walk these doors' tables in this test too: {unwalked}"


# -- inbound doors: the status each sends ----------------------------------------------------------


async def _http_answer(guard: Any, error: MedserveError) -> Response:
    async def handler(request: Request) -> Response:
        raise error

    response: Response = await guard(handler)(cast(Request, None))
    return response


class _Aborted(Exception):
    pass


class _GrpcContext:
    code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.code, self.details = code, details
        raise _Aborted


class _WebSocket:
    def __init__(self, denial: bool) -> None:
        self.scope: dict[str, Any] = {"extensions": {"websocket.http.response": {}} if denial else {}}
        self.closed: int | None = None
        self.denied: Response | None = None

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code

    async def send_denial_response(self, response: Response) -> None:
        self.denied = response


@pytest.mark.parametrize("cls", TREE, ids=IDS)
async def test_every_door_answers_every_error_through_its_table(cls: type[MedserveError]) -> None:
    error = _raised(cls)
    client = _side(cls) == CLIENT

    rest = await _http_answer(http.guarded, error)
    assert rest.status_code == http.STATUS_CODES.for_class(cls) == http.status_of(error)
    assert bytes(rest.body).startswith(b'{"error":')
    assert not (client and rest.status_code >= 500), rest.status_code

    web = await _http_answer(dicomweb.guarded, error)
    assert web.status_code == dicomweb.STATUS_CODES.for_class(cls)
    assert not (client and web.status_code >= 500), web.status_code

    async def rpc(request: Any, context: Any) -> Any:
        raise error

    context = _GrpcContext()
    with pytest.raises(_Aborted):
        await grpc_door._guarded(rpc, pb.ServerLiveRequest)(b"", cast(Any, context))
    assert context.code == grpc_door.STATUS_CODES.for_class(cls) == grpc_door.status_code_for(error)
    assert not (client and context.code in _GRPC_SERVER), context.code

    closing, denying = _WebSocket(denial=False), _WebSocket(denial=True)
    await stream.refuse(cast(Any, closing), error)
    await stream.refuse(cast(Any, denying), error)
    assert closing.closed == stream.CLOSE_CODES.for_class(cls)
    assert not (client and closing.closed in _WS_SERVER), closing.closed
    assert denying.denied is not None and denying.denied.status_code == rest.status_code

    async def ingest(encoded: bytes, caller: Caller) -> object:
        raise error

    accept = dimse.ingesting(ingest, asyncio.get_running_loop(), timeout_s=10)
    answer = await asyncio.to_thread(accept, b"", "MODALITY", "127.0.0.1:104")
    status, comment = answer if isinstance(answer, tuple) else (answer, "")
    assert status == dimse.STATUS_CODES.for_class(cls) == dimse.store_status_of(error)
    assert comment == str(error)  # the sender learns why (an Error Comment on every failure)
    assert StoreStatus(status) is not StoreStatus.SUCCESS
    assert not (client and server_failure(status)), hex(status)

    if issubclass(cls, TRANSIENT):  # come back later, and medserve's outbound doors do
        assert rest.status_code in (503, 504) and retryable_status(rest.status_code)
        assert context.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert closing.closed == stream.TRY_AGAIN_LATER
        assert out_of_resources(status)
    if client:  # never resent by medserve's outbound doors
        assert not retryable_status(rest.status_code) and not out_of_resources(status)


class _Service:
    async def authenticate(self, *args: Any, door: str, **kwargs: Any) -> Caller:
        return Caller(Principal("modality", Role.ADMIN, None, "token:test"), door)


class _Imaging:
    """What the DICOMweb door calls: the service to authenticate with, and an ingest that refuses."""

    def __init__(self) -> None:
        self.service = _Service()
        self.error: MedserveError = InvalidInput("not set")

    async def ingest(self, data: bytes, caller: Caller, *, study_instance_uid: str | None = None) -> Any:
        raise self.error


def _stow(imaging: _Imaging, content_type: str, body: bytes) -> httpx.Response:
    """POST ``body`` to the DICOMweb door's STOW-RS route, in memory."""
    app = Starlette(routes=dicomweb.dicomweb_routes(cast(Any, imaging), 1 << 20))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://medserve") as client:
            return await client.post(
                "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
            )

    return asyncio.run(post())


@pytest.mark.parametrize("cls", TREE, ids=IDS)
def test_a_refused_stow_rs_instance_gets_the_dimse_door_reason(cls: type[MedserveError]) -> None:
    imaging = _Imaging()
    imaging.error = _raised(cls)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--\r\n"
    reply = _stow(imaging, 'multipart/related; type="application/dicom"; boundary=b', body)
    assert reply.status_code == 409, reply.text
    (failed,) = reply.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [dimse.STATUS_CODES.for_class(cls)]
    assert f"{cls.__name__} raised" in reply.headers["warning"]


def test_an_unsupported_stow_rs_media_type_is_415() -> None:
    reply = _stow(_Imaging(), "application/json", b"{}")
    assert reply.status_code == 415 and "multipart/related" in reply.json()["error"]


# -- the table itself ----------------------------------------------------------------------------


class _Refused(InvalidInput):
    pass


class _Both(_Refused, StoreUnavailable):
    pass


def test_a_table_resolves_along_the_mro_and_must_map_the_root() -> None:
    table = StatusTable("test", {MedserveError: 500, InvalidInput: 400, StoreUnavailable: 503})
    assert table.for_class(_Refused) == 400  # inherited from its parent
    assert table.of(_Both("x")) == 400  # the nearest listed class wins: InvalidInput before StoreUnavailable
    assert table.for_class(Overloaded) == 500  # nothing nearer: the root's
    assert table.extended("more", {_Refused: 422}).for_class(_Both) == 422
    assert dict(table)[InvalidInput] == 400
    with pytest.raises(ValueError, match="MedserveError"):
        StatusTable("test", {InvalidInput: 400})
