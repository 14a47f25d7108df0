"""Builds the server from settings and owns the ordered start-up and shutdown.

Start: load the repository's models, open gRPC and HTTP, then report ready. Stop: report not ready,
stop accepting, let in-flight requests finish within the shutdown timeout, then unload the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

from medserve.core.metrics import ServingMetrics
from medserve.core.registry import ModelRegistry
from medserve.core.service import InferenceService
from medserve.repository.repository import ModelRepository
from medserve.settings import Settings
from medserve.streaming.alerts import AlertHub
from medserve.streaming.monitor import MonitorSettings, PatientMonitor
from medserve.streaming.pipeline import MonitorPipeline
from medserve.transport.http import build_app
from medserve.transport.stream import stream_routes

log = logging.getLogger("medserve")


class _HttpServer(uvicorn.Server):
    """uvicorn, with signals left to ``MedServer``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class MedServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.registry = ModelRegistry(ModelRepository(settings.repository), self.metrics)
        self.service = InferenceService(self.registry)
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: object | None = None
        self.alerts: AlertHub | None = None
        self.monitor: PatientMonitor | None = None
        self._expiry: asyncio.Task[None] | None = None

    def _start_monitor(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.alerts = AlertHub(settings.data_dir / "alerts.jsonl")
        self.monitor = PatientMonitor(
            self.service,
            self.alerts,
            MonitorSettings(
                max_sessions=settings.monitor_max_sessions,
                idle_timeout_s=settings.monitor_idle_timeout_s,
                vitals_max_age_s=settings.monitor_vitals_max_age_s,
                ecg_model=settings.monitor_ecg_model,
            ),
            metrics=self.metrics,
        )
        self.service.add_pipeline(MonitorPipeline(self.monitor))
        self._expiry = asyncio.create_task(self._expire_streams())

    async def _expire_streams(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.settings.monitor_idle_timeout_s / 2))
            if self.monitor is not None and (count := self.monitor.expire()):
                log.info("closed %d idle patient stream(s)", count)

    async def start(self) -> None:
        settings = self.settings
        self.registry.repository.model_names()
        if settings.load_models:
            await self.registry.load_all()
        self._start_monitor()
        if settings.grpc_port >= 0:
            from medserve.transport.grpc import GrpcServer

            grpc_server = GrpcServer(
                self.service, settings.host, settings.grpc_port, settings.max_request_bytes
            )
            await grpc_server.start()
            self._grpc = grpc_server
        routes = stream_routes(self.monitor, self.alerts) if self.monitor and self.alerts else []
        app = build_app(self.service, self.metrics, settings.max_request_bytes, routes)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.http_port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level=settings.log_level,
            timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
        )
        self._http = _HttpServer(config)
        self._http_task = asyncio.create_task(self._http.serve())
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        self.service.set_ready(True)
        log.info(
            "medserve ready: HTTP on %s:%s, gRPC on %s",
            settings.host,
            settings.http_port,
            f"{settings.host}:{settings.grpc_port}" if settings.grpc_port >= 0 else "off",
        )

    async def stop(self) -> None:
        log.info("medserve shutting down")
        self.service.set_ready(False)
        grace = self.settings.shutdown_timeout_s
        if self._grpc is not None:
            await self._grpc.stop(grace)  # type: ignore[attr-defined]
        if self.alerts is not None:
            self.alerts.end_subscriptions()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            try:
                await asyncio.wait_for(self._http_task, grace + 5)
            except TimeoutError:
                self._http_task.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        await self.registry.close()
        if self.alerts is not None:
            self.alerts.close()
        log.info("medserve stopped")

    async def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = MedServer(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.run())
    else:
        uvloop.run(server.run())
