"""gRPC RPCs of Triton's extensions: system and CUDA shared memory, trace settings, log settings.

Thin adapters like :mod:`medserve.transport.grpc`: each decodes its message, calls the service's
collaborator (``InferenceService.shared_memory``, the tracing settings, the log settings) and encodes
the answer. Errors map through the gRPC door's one table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from medserve.logs import LOG_SETTINGS
from medserve.monitoring.tracing import TRACE_SETTINGS
from medserve.protocol.grpc_messages import pb
from medserve.values.access import Action
from medserve.values.errors import InvalidInput, Unsupported

if TYPE_CHECKING:
    from medserve.core.service import InferenceService
    from medserve.values.access import Caller

if TYPE_CHECKING:
    from typing import TypeAlias

    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
CallerOf = Callable[["_Context"], Awaitable["Caller"]]

CUDA_UNSUPPORTED = "CUDA shared memory is not supported by this server; use system shared memory"


class GrpcExtensionsServicer:
    """Shared memory, trace and log RPCs; ``caller_of`` authenticates like the inference RPCs."""

    def __init__(self, service: InferenceService, caller_of: CallerOf) -> None:
        self._service = service
        self._caller_of = caller_of

    async def system_status(
        self, request: pb.SystemSharedMemoryStatusRequest, context: _Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        rows = self._service.shared_memory.status(request.name, await self._caller_of(context))
        response = pb.SystemSharedMemoryStatusResponse()
        for row in rows:
            response.regions[row["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**row))
        return response

    async def system_register(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: _Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._service.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size, await self._caller_of(context)
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def system_unregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: _Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._service.shared_memory.unregister(request.name, await self._caller_of(context))
        return pb.SystemSharedMemoryUnregisterResponse()

    async def cuda_status(
        self, request: pb.CudaSharedMemoryStatusRequest, context: _Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        (await self._caller_of(context)).principal.require(Action.READ)
        if request.name:
            raise InvalidInput(f"CUDA shared memory region '{request.name}' is not registered")
        return pb.CudaSharedMemoryStatusResponse()

    async def cuda_register(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: _Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        (await self._caller_of(context)).principal.require(Action.INFER)
        raise Unsupported(CUDA_UNSUPPORTED)

    async def cuda_unregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: _Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        (await self._caller_of(context)).principal.require(Action.INFER)
        return pb.CudaSharedMemoryUnregisterResponse()

    async def trace_setting(
        self, request: pb.TraceSettingRequest, context: _Context
    ) -> pb.TraceSettingResponse:
        caller = await self._caller_of(context)
        changes = {key: list(value.value) for key, value in request.settings.items()}
        if changes:
            caller.principal.require(Action.MANAGE)
        else:
            caller.principal.require(Action.READ)
        settings = TRACE_SETTINGS.update(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    async def log_settings(self, request: pb.LogSettingsRequest, context: _Context) -> pb.LogSettingsResponse:
        caller = await self._caller_of(context)
        changes: dict[str, Any] = {}
        for key, value in request.settings.items():
            choice = value.WhichOneof("parameter_choice")
            changes[key] = getattr(value, choice) if choice else None
        caller.principal.require(Action.MANAGE if changes else Action.READ)
        response = pb.LogSettingsResponse()
        for key, setting in LOG_SETTINGS.update(changes).items():
            if isinstance(setting, bool):
                response.settings[key].bool_param = setting
            elif isinstance(setting, int):
                response.settings[key].uint32_param = setting
            else:
                response.settings[key].string_param = str(setting)
        return response

    def unary(self) -> dict[str, tuple[Callable[[Any, _Context], Awaitable[Any]], type[Message]]]:
        """The RPCs by wire method name, with their request types."""
        return {
            "SystemSharedMemoryStatus": (self.system_status, pb.SystemSharedMemoryStatusRequest),
            "SystemSharedMemoryRegister": (self.system_register, pb.SystemSharedMemoryRegisterRequest),
            "SystemSharedMemoryUnregister": (self.system_unregister, pb.SystemSharedMemoryUnregisterRequest),
            "CudaSharedMemoryStatus": (self.cuda_status, pb.CudaSharedMemoryStatusRequest),
            "CudaSharedMemoryRegister": (self.cuda_register, pb.CudaSharedMemoryRegisterRequest),
            "CudaSharedMemoryUnregister": (self.cuda_unregister, pb.CudaSharedMemoryUnregisterRequest),
            "TraceSetting": (self.trace_setting, pb.TraceSettingRequest),
            "LogSettings": (self.log_settings, pb.LogSettingsRequest),
        }
