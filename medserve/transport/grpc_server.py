"""The gRPC door's server: the OIP inference service and ``grpc.health.v1.Health`` on one port,
with its message-size limits, readiness published to health watchers, and a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from medserve.protocol.grpc_messages import SERVICE_NAME
from medserve.settings import GRPC_MAX_MESSAGE_BYTES
from medserve.transport.grpc import GrpcInferenceServicer, inference_handler
from medserve.transport.grpc_explain import explain_handler

if TYPE_CHECKING:
    from medserve.core.service import InferenceService
    from medserve.explanations.service import Explainer

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def transport_limit(max_message_bytes: int) -> int:
    """What gRPC itself lets through: twice the served limit (at most gRPC's 2 GiB - 1 ceiling), so a
    message a little too large is read and refused alone (RESOURCE_EXHAUSTED for that request, a
    ModelStreamInfer stream stays open) while memory stays bounded; past it gRPC ends the call."""
    return min(2 * max_message_bytes, GRPC_MAX_MESSAGE_BYTES)


class _ReadinessHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` whose Check reflects the service's readiness when asked."""

    def __init__(self, service: InferenceService, names: tuple[str, ...]) -> None:
        super().__init__()
        self._service = service
        self._names = names

    async def Check(  # noqa: N802 - name fixed by the health protocol
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service in self._names:
            await self.refresh()
        return await super().Check(request, context)

    async def refresh(self) -> None:
        """Publish SERVING or NOT_SERVING (ignored once shutdown has begun)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if await self._service.check_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.set(name, status)


class GrpcServer:
    """The gRPC door: OIP inference service plus gRPC health, on ``host:port``.

    ``port=0`` picks a free port; :attr:`port` tells which after :meth:`start`.
    """

    HEALTH_NAMES = ("", SERVICE_NAME)
    HEALTH_POLL_SECONDS = 1.0

    def __init__(
        self,
        service: InferenceService,
        host: str = "0.0.0.0",
        port: int = 8001,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ServerCredentials | None = None,
        max_concurrent_streams: int = 100,
        max_unread_responses: int = 64,
        explainer: Explainer | None = None,
    ) -> None:
        self._service = service
        self._explainer = explainer  # ModelExplain (medserve.transport.grpc_explain) when given
        self._host = host
        self._requested_port = port
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._max_concurrent_streams = max_concurrent_streams
        self._max_unread_responses = max_unread_responses
        self._server: grpc.aio.Server | None = None
        self._health = _ReadinessHealthServicer(service, self.HEALTH_NAMES)
        self._health_watch: asyncio.Task[None] | None = None
        self.port: int = port

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; raises RuntimeError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("gRPC server already started")
        limit = transport_limit(self._max_message_bytes)
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # Fail loudly when the port is taken instead of silently sharing it.
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", self._max_concurrent_streams),
        ]
        server = grpc.aio.server(options=options)
        servicer = GrpcInferenceServicer(self._service, self._max_message_bytes, self._max_unread_responses)
        handlers = [inference_handler(servicer)]
        if self._explainer is not None:
            handlers.append(explain_handler(servicer, self._explainer))
        server.add_generic_rpc_handlers(tuple(handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        target = f"{self._host}:{self._requested_port}"
        if self._credentials is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, self._credentials)
        if bound == 0:
            raise RuntimeError(f"gRPC server could not bind {target}")
        self.port = bound
        await server.start()
        self._server = server
        await self._health.refresh()
        self._health_watch = asyncio.create_task(self._watch_readiness())
        logger.info("gRPC server listening on %s", self.address)

    async def _watch_readiness(self) -> None:
        """Keep health Watch streams current as readiness changes."""
        while True:
            await asyncio.sleep(self.HEALTH_POLL_SECONDS)
            await self._health.refresh()

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, stop accepting RPCs, let running ones finish for ``grace`` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._health_watch is not None:
            self._health_watch.cancel()
            self._health_watch = None
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        logger.info("gRPC server on %s stopped", self.address)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "GrpcServer", "transport_limit"]
