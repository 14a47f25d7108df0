"""The gRPC door: Open Inference Protocol (KServe v2 / Triton ``GRPCInferenceService``) over grpc.aio.

A thin adapter: each RPC decodes its message with :mod:`medserve.protocol.grpc_codec`, calls
:class:`~medserve.core.service.InferenceService`, and encodes the answer. ``MedserveError``
subclasses map to gRPC status codes through one table; anything else is INTERNAL and logged.
:class:`~medserve.transport.grpc_server.GrpcServer` serves it with the standard health service.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from medserve.core.refusals import Record, audit_refusal, begin_request, end_request, remember_caller
from medserve.logs import bind_request
from medserve.monitoring.tracing import door_span, traceparent
from medserve.protocol import grpc_codec
from medserve.protocol.grpc_messages import SERVICE_NAME, pb
from medserve.protocol.repository_load import load_config_override
from medserve.protocol.validation import DEFAULT_MAX_ELEMENTS, safe_request_id
from medserve.security.tls import grpc_client_cert_cn
from medserve.streaming.alerts import AlertNotFound
from medserve.transport.grpc_extensions import GrpcExtensionsServicer
from medserve.transport.status_table import StatusTable
from medserve.values import errors
from medserve.values.access import Action

if TYPE_CHECKING:
    from medserve.core.service import InferenceService
    from medserve.values.access import Caller
    from medserve.values.types import InferenceRequest

logger = logging.getLogger(__name__)

#: The gRPC door's one table: medserve's error tree to gRPC status codes (the nearest listed class of
#: an error wins; an error no class above names is a server fault, INTERNAL).
STATUS_CODES: StatusTable[grpc.StatusCode] = StatusTable(
    "gRPC",
    {
        errors.MedserveError: grpc.StatusCode.INTERNAL,
        errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
        errors.JobNotFound: grpc.StatusCode.NOT_FOUND,
        AlertNotFound: grpc.StatusCode.NOT_FOUND,
        errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
        errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
        errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.InvalidConfig: grpc.StatusCode.INVALID_ARGUMENT,
        errors.ModelLoadError: grpc.StatusCode.INTERNAL,
        errors.InferenceFailed: grpc.StatusCode.INTERNAL,
        errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
        errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
        errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
        errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
        errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
        errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    },
)


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its nearest class in :data:`STATUS_CODES`, else INTERNAL."""
    if isinstance(error, errors.MedserveError):
        return STATUS_CODES.of(error)
    return grpc.StatusCode.INTERNAL


def _describe(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status and message for an error; unexpected ones are logged with their traceback."""
    if isinstance(error, errors.MedserveError):
        return status_code_for(error), str(error) or type(error).__name__
    logger.exception("unexpected error in gRPC handler", exc_info=error)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


def _retry_trailers(error: BaseException) -> tuple[tuple[str, str], ...]:
    """``retry-after`` (seconds, as HTTP's header) and gRPC's ``grpc-retry-pushback-ms`` for an
    error that advises when to retry (an overloaded model); empty otherwise."""
    seconds = getattr(error, "retry_after_s", None)
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return ()
    seconds = max(1.0, float(seconds))
    return (("retry-after", str(math.ceil(seconds))), ("grpc-retry-pushback-ms", str(int(seconds * 1000))))


def client_deadline_ns(context: grpc.aio.ServicerContext[Any, Any], now_ns: int) -> int | None:
    """The call's gRPC deadline as an absolute time on ``time.perf_counter_ns`` (``now_ns`` is now on
    it), or None when the client set none. A request is due by it: the scheduler keeps the earliest of
    it, the OIP ``timeout`` parameter and the priority class's deadline. A client that cancels the call
    or passes the deadline cancels its handler, so the request leaves the batcher's queue unrun."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return now_ns + round(max(0.0, float(remaining)) * 1e9)


_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)
_Unary = Callable[[_Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Resp]]


def _parse(request_type: type[_Req], data: bytes) -> _Req:
    """A request message from its bytes; bytes that are not one are INVALID_ARGUMENT, not UNKNOWN."""
    try:
        message: _Req = request_type.FromString(data)
    except DecodeError:
        raise errors.InvalidInput(
            f"the request is not a valid {request_type.DESCRIPTOR.name} message ({len(data)} bytes)"
        ) from None
    return message


def _within(request_type: type[Message], data: bytes, max_message_bytes: int) -> None:
    """Refuse a message past the served limit (gRPC itself lets through up to twice it)."""
    if len(data) > max_message_bytes:
        raise errors.PayloadTooLarge(
            f"the {request_type.DESCRIPTOR.name} message is {len(data)} bytes, more than this server's "
            f"gRPC message limit of {max_message_bytes} bytes (grpc_max_message_bytes)"
        )


def _guarded(
    handler: _Unary[_Req, _Resp],
    request_type: type[_Req],
    max_message_bytes: int = DEFAULT_MAX_ELEMENTS,
    record: Record | None = None,
) -> _Unary[bytes, _Resp]:
    """Wrap a unary handler so the request is parsed in it and errors become gRPC statuses (abort is
    outside the ``try``); a refusal the dataplane did not audit is audited here through ``record``."""
    method = request_type.DESCRIPTOR.name.removesuffix("Request")

    async def call(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> _Resp:
        token = begin_request()
        request: _Req | None = None
        try:
            _within(request_type, data, max_message_bytes)
            request = _parse(request_type, data)
            return await handler(request, context)
        except Exception as error:  # mapped to a status below, never swallowed
            code, message = _describe(error)
            trailers = _retry_trailers(error)
            if record is not None and isinstance(error, errors.MedserveError):
                model = getattr(request, "model_name", None) or getattr(request, "name", "")
                await audit_refusal(
                    record,
                    error,
                    door="grpc",
                    what=f"gRPC {code.name} {method}",
                    model=str(model)[:256],
                    peer=context.peer() or "",
                )
        finally:
            end_request(token)
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    call.__name__ = getattr(handler, "__name__", "handler")
    return call


class GrpcInferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService``, each a thin call into the service."""

    def __init__(
        self,
        service: InferenceService,
        max_request_bytes: int = DEFAULT_MAX_ELEMENTS,
        max_unread_responses: int = 64,
    ) -> None:
        self._service = service
        self._max_elements = max_request_bytes
        #: the largest message served; gRPC lets through up to twice it, so a larger one is refused alone
        self.max_message_bytes = max_request_bytes
        self._max_unread = max(1, max_unread_responses)

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        authorization = metadata.get("authorization")
        request_id = metadata.get("x-request-id", "")
        caller = await self._service.authenticate(
            authorization if isinstance(authorization, str) else None,
            grpc_client_cert_cn(context),
            door="grpc",
            peer=context.peer() or "",
            request_id=safe_request_id(request_id) if isinstance(request_id, str) else "",
        )
        remember_caller(caller)  # a refusal after this names the caller in its audit record
        return caller

    async def server_live(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.live())

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self._service.check_ready())

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self._service.model_ready(request.name, request.version, await self._caller(context))
        )

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return grpc_codec.encode_server_metadata(self._service.server_metadata(await self._caller(context)))

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        caller = await self._caller(context)
        metadata = self._service.model_metadata(request.name, request.version, caller)
        return grpc_codec.encode_model_metadata(metadata)

    async def model_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        arrived = time.perf_counter_ns()
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        with door_span("ModelInfer", "grpc", request.model_name, metadata) as span:
            parent = traceparent(span)
            if parent is not None:
                await context.send_initial_metadata((("traceparent", parent),))
            caller = await self._caller(context)
            bind_request(caller.request_id, caller.principal.name)
            inference = await self._decoded(request, caller, client_deadline_ns(context, arrived))
            response = await self._service.infer(inference, caller)
            logger.debug("inference of %s answered: %d output(s)", request.model_name, len(response.outputs))
            audited_id = inference.id or caller.request_id  # an explain request may name it
            context.set_trailing_metadata((("x-request-id", audited_id),))
            return grpc_codec.encode_infer_response(response)

    async def _decoded(
        self, request: pb.ModelInferRequest, caller: Caller, deadline_ns: int | None
    ) -> InferenceRequest:
        """The request decoded, with the call's deadline; one that cannot be is audited as refused."""
        try:  # a refusal to a caller not granted the model is an audited inference refusal too
            caller.principal.require(Action.INFER, request.model_name)
            inference = grpc_codec.decode_infer_request(request, self._max_elements)
        except errors.MedserveError as exc:
            await self._service.refuse(caller, request.model_name, exc)
            raise
        inference.deadline_ns = deadline_ns
        return inference

    async def model_stream_infer(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request as soon as it is done; requests run concurrently so they batch.

        Errors go into the answer's ``error_message``; the stream stays open. At most
        ``max_unread_responses`` requests are in flight or answered but not yet taken by the client:
        beyond that the stream is not read until the client reads (back-pressure, bounded memory).
        """
        try:
            caller = await self._caller(context)
        except errors.MedserveError as error:
            await context.abort(status_code_for(error), str(error))
        answers: asyncio.Queue[pb.ModelStreamInferResponse] = asyncio.Queue()
        unread = asyncio.Semaphore(self._max_unread)
        reader = asyncio.create_task(self._read_stream(requests, answers, caller, unread, context))
        get: asyncio.Task[pb.ModelStreamInferResponse] | None = None
        try:
            while True:
                get = asyncio.create_task(answers.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    yield get.result()  # resumes once the client has taken the answer
                    unread.release()
                    continue
                get.cancel()
                while not answers.empty():
                    yield answers.get_nowait()
                reader.result()  # re-raise a failure to read the stream
                return
        finally:
            # A client that goes away cancels this generator while it waits: cancel and await both
            # tasks, so neither is left pending (asyncio's "Task was destroyed but it is pending!").
            pending = [task for task in (get, reader) if task is not None and not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _read_stream(
        self,
        requests: AsyncIterator[bytes],
        answers: asyncio.Queue[pb.ModelStreamInferResponse],
        caller: Caller,
        unread: asyncio.Semaphore,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Start one task per incoming request, each once an unread answer's place is free; return
        once all are answered. Each request is due by the stream's deadline, if it has one."""
        async with asyncio.TaskGroup() as group:
            while True:
                await unread.acquire()
                try:
                    data = await anext(requests)
                except StopAsyncIteration:
                    unread.release()
                    return
                deadline_ns = client_deadline_ns(context, time.perf_counter_ns())
                group.create_task(self._answer(data, answers, caller, deadline_ns, context.peer() or ""))

    async def _answer(
        self,
        data: bytes,
        answers: asyncio.Queue[pb.ModelStreamInferResponse],
        caller: Caller,
        deadline_ns: int | None,
        peer: str,
    ) -> None:
        request = pb.ModelInferRequest()
        try:
            _within(pb.ModelInferRequest, data, self.max_message_bytes)
            request = _parse(pb.ModelInferRequest, data)
            response = await self._service.infer(await self._decoded(request, caller, deadline_ns), caller)
            answer = pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_infer_response(response))
        except Exception as error:  # reported in the stream, which stays open
            code, message = _describe(error)
            answer = grpc_codec.encode_stream_error(request, message)
            if isinstance(error, errors.MedserveError):  # what the dataplane did not audit (too large,
                await audit_refusal(  # not a message), as the unary calls do
                    self._service.record,
                    error,
                    door="grpc",
                    what=f"gRPC {code.name} ModelStreamInfer",
                    model=request.model_name[:256],
                    peer=peer,
                )
        answers.put_nowait(answer)

    async def model_config(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelConfigResponse:
        config = self._service.model_config(request.name, request.version, await self._caller(context))
        return grpc_codec.encode_model_config(config)

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelStatisticsResponse:
        caller = await self._caller(context)
        stats = self._service.model_statistics(request.name, request.version, caller)
        return grpc_codec.encode_model_statistics(stats)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryIndexResponse:
        entries = self._service.repository_index(request.ready, await self._caller(context))
        return grpc_codec.encode_repository_index(entries)

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryModelLoadResponse:
        caller = await self._caller(context)
        parameters = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()
        }
        await self._service.load_model(request.model_name, caller, load_config_override(parameters))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self,
        request: pb.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RepositoryModelUnloadResponse:
        await self._service.unload_model(request.model_name, await self._caller(context))
        return pb.RepositoryModelUnloadResponse()


def _serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def inference_handler(servicer: GrpcInferenceServicer) -> grpc.GenericRpcHandler:
    """The handlers registered under the wire name ``inference.GRPCInferenceService``."""
    unary: dict[str, tuple[_Unary[Any, Any], type[Message]]] = {
        "ServerLive": (servicer.server_live, pb.ServerLiveRequest),
        "ServerReady": (servicer.server_ready, pb.ServerReadyRequest),
        "ModelReady": (servicer.model_ready, pb.ModelReadyRequest),
        "ServerMetadata": (servicer.server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": (servicer.model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": (servicer.model_infer, pb.ModelInferRequest),
        "ModelConfig": (servicer.model_config, pb.ModelConfigRequest),
        "ModelStatistics": (servicer.model_statistics, pb.ModelStatisticsRequest),
        "RepositoryIndex": (servicer.repository_index, pb.RepositoryIndexRequest),
        "RepositoryModelLoad": (servicer.repository_model_load, pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": (
            servicer.repository_model_unload,
            pb.RepositoryModelUnloadRequest,
        ),
        # Triton's shared memory, trace and log extensions
        **GrpcExtensionsServicer(servicer._service, servicer._caller).unary(),
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {
        method: grpc.unary_unary_rpc_method_handler(
            _guarded(handler, request_type, servicer.max_message_bytes, servicer._service.record),
            response_serializer=_serialize,
        )
        for method, (handler, request_type) in unary.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.model_stream_infer,
        response_serializer=_serialize,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


__all__ = [
    "STATUS_CODES",
    "GrpcInferenceServicer",
    "inference_handler",
    "status_code_for",
]
