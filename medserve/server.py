"""Builds the server from settings and owns the ordered start-up and shutdown.

Start: load the repository's models, open gRPC and HTTP, then report ready. Stop: report not ready,
stop accepting, let in-flight requests finish within the shutdown timeout, then unload the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from functools import partial

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medserve import __version__
from medserve.cluster.registry import ReplicaRegistry
from medserve.console.parts import ConsoleParts
from medserve.core.dataplane import build_dataplane
from medserve.core.refusals import audit_refusal
from medserve.edge.roles import build_edge, build_hub
from medserve.edge.sync import EdgeSync
from medserve.explanations.service import Explainer
from medserve.imaging.config import load_config
from medserve.imaging.service import ImagingService
from medserve.jobs.manager import JobManager, JobSettings
from medserve.jobs.store import JobStore
from medserve.logs import configure_logging
from medserve.monitoring.tracing import TRACE_SETTINGS, configure_tracing, shutdown_tracing
from medserve.security.redaction import install as install_log_redaction
from medserve.security.tls import (
    TlsHttpToolsProtocol,
    TlsWebSocketsProtocol,
    dicom_server_context,
    grpc_requests_client_certificates,
    grpc_server_credentials,
    uvicorn_options,
)
from medserve.settings import Settings
from medserve.startup import (
    Door,
    Preflight,
    StartupFailure,
    bind_failure,
    bind_problem,
    doors,
    preflight,
)
from medserve.store.identity import replica_id
from medserve.store.leases import LeaseBook
from medserve.streaming.alert_delivery import AlertOutbox
from medserve.streaming.alerts import AlertHub
from medserve.streaming.monitor import MonitorSettings, PatientMonitor
from medserve.streaming.pipeline import MonitorPipeline
from medserve.transport.alert_webhook import webhook_senders
from medserve.transport.console import console_routes
from medserve.transport.destination_config import destination_from_config
from medserve.transport.dicomweb import dicomweb_routes
from medserve.transport.dicomweb_retrieve import dicomweb_retrieve_routes
from medserve.transport.dimse import StorageSCP, calling_ae_principals, ingesting
from medserve.transport.http import build_app
from medserve.transport.http_explain import explain_routes
from medserve.transport.http_limits import HttpLimits, limited_protocol
from medserve.transport.http_shared_memory import shared_memory_routes
from medserve.transport.http_trace_log import trace_log_routes
from medserve.transport.hub import edge_routes, hub_routes
from medserve.transport.jobs import jobs_routes
from medserve.transport.stream import stream_routes
from medserve.trust import Trust, build_trust, describe_store
from medserve.values.access import Caller, Principal
from medserve.values.audit_event import AuditEvent
from medserve.values.errors import MedserveError

log = logging.getLogger("medserve")


class _HttpServer(uvicorn.Server):
    """uvicorn, with signals left to ``MedServer``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _settings_summary(settings: Settings) -> str:
    """What the server started with, for the audit trail (the database URL's password hidden)."""
    shown = settings.model_dump(mode="json")
    if settings.database_url:
        from sqlalchemy.engine import make_url

        shown["database_url"] = make_url(settings.database_url).render_as_string(hide_password=True)
    return json.dumps(shown, sort_keys=True)[:2000]


def _advertised(host: str, port: int) -> str:
    """Where other replicas and operators reach this one: ``host:port`` (this host's name for a
    wildcard bind)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


class ShutdownIncomplete(MedserveError):
    """A step of the ordered shutdown failed (the log has its traceback); the later steps still ran."""


#: audit status of each refusal the HTTP door answers before a request reaches the app
_CONNECTION_REFUSALS = {431: "HeaderTooLarge", 408: "RequestTimeout", 503: "TooManyConnections"}


def http_limits(settings: Settings, on_refused: Callable[[int, str, str], None] | None = None) -> HttpLimits:
    """The HTTP door's connection limits from the settings."""
    return HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        keepalive_timeout_s=settings.http_keepalive_timeout_s,
        max_connections=settings.max_connections,
        on_refused=on_refused,
    )


class MedServer:
    def __init__(self, settings: Settings) -> None:
        install_log_redaction()  # before anything that might log a credential
        self.settings = settings
        self.trust: Trust = build_trust(settings)
        trust = self.trust
        # the registry and the one InferenceService over it, with placement at load and monitoring
        self.dataplane = build_dataplane(settings, trust, placement=True, monitoring=True)
        self.service = self.dataplane.service
        self.explainer = Explainer(  # docs/EXPLANATIONS.md: perturbations in the lowest class
            self.service, settings.priority_table().classes[-1].name, settings.explain_max_perturbations
        )
        self.metrics = self.dataplane.metrics
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: object | None = None
        self.alerts: AlertHub | None = None
        self.alert_outbox: AlertOutbox | None = None
        self.monitor: PatientMonitor | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.imaging: ImagingService | None = None
        self._scp: StorageSCP | None = None
        self._preflight: Preflight | None = None
        self._refusals: set[asyncio.Task[None]] = set()  # audit records of refused header blocks
        # replicas sharing the database: this one's id, the leases it works under, shared storage
        self.replica_id = replica_id(settings.replica_id, settings.data_dir)
        self.leases = LeaseBook(trust.database, self.replica_id, ttl_s=settings.lease_ttl_s)
        self.storage_dir = settings.storage_dir or settings.data_dir
        self.registry: ReplicaRegistry | None = None
        self.hub = build_hub(settings, trust.database)  # docs/EDGE.md
        self.edge: EdgeSync | None = None
        self.jobs = JobManager(
            self.service,
            JobStore(trust.database, self.leases),
            JobSettings(
                self.storage_dir / "jobs",
                concurrency=settings.jobs_concurrency,
                priority_class=settings.jobs_class(),
                poll_s=settings.jobs_poll_s,
                retry_s=settings.jobs_retry_s,
            ),
        )

    def _start_monitor(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.alert_webhooks:  # each alert to each webhook, once for the fleet (under leases)
            outbox = AlertOutbox(self.trust.database, webhook_senders(settings.alert_webhooks), self.leases)
            self.alert_outbox = outbox
        deliver = self.alert_outbox.enqueue if self.alert_outbox is not None else None
        self.alerts = AlertHub(settings.data_dir / "alerts.jsonl", deliver=deliver)
        if self.alert_outbox is not None:
            self.alert_outbox.enqueue_recent(self.alerts.list(limit=10_000), since=time.time() - 3600)
            self.alert_outbox.start()
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

    async def _start_imaging(self) -> None:
        settings = self.settings
        config = load_config(settings.imaging_config, self.storage_dir)
        destinations = [destination_from_config(d) for d in config.destinations]
        self.imaging = ImagingService(
            self.service,
            self.trust.database,
            self.storage_dir,
            config,
            destinations,
            quiet_time_s=settings.dicom_quiet_time_s,
            workers=settings.imaging_workers,
            leases=self.leases,
        )
        await self.imaging.start()
        if settings.dicom_port < 0:
            return
        # A closed door by default: only the calling AE titles named in the settings or added to the
        # store's peers (`medserve dicom peers add`, read at each association), each with its grants.
        grants: dict[str, list[str]] = {title: ["*"] for title in settings.dicom_allowed_calling_aets}
        grants.update(settings.dicom_calling_aets)
        fixed = calling_ae_principals(grants)
        peers = self.trust.dicom_peers
        dicom_tls = self._preflight.dicom_tls if self._preflight is not None else None

        def principal_of(title: str) -> Principal | None:
            return fixed.get(title) or peers.principal_for(title)

        self._scp = StorageSCP(
            settings.dicom_ae_title,
            ingesting(self.imaging.ingest, asyncio.get_running_loop(), principals=principal_of),
            host=settings.host,
            port=settings.dicom_port,
            allowed_calling_aets=lambda: fixed.keys() | peers.titles(),
            ssl_context=dicom_server_context(dicom_tls) if dicom_tls is not None else None,
        )
        try:
            await asyncio.to_thread(self._scp.start)
        except OSError as exc:
            self._scp = None
            raise bind_failure(self._door("DICOM"), exc) from None

    def _console_parts(self) -> ConsoleParts:
        placer = self.dataplane.placer
        return ConsoleParts(
            self.service,
            self.metrics.registry,
            self.trust.database,
            self.trust.audit,
            self.jobs,
            self.imaging,
            self.monitor,
            self.alerts,
            placer.discovery if placer is not None else None,
            replica_stale_after_s=3 * self.settings.replica_heartbeat_s,
        )

    def _connection_refused(self, status: int, reason: str, peer: str) -> None:
        """Audit what the HTTP door refused before a request reached the app (431, 408, 503 at the
        connection limit): no request was read, so no principal; the reason and the peer."""
        refusal = audit_refusal(
            self.service.record,
            LookupError(reason),
            door="http",
            what=f"HTTP {status}",
            peer=peer,
            status=_CONNECTION_REFUSALS.get(status, f"HTTP{status}"),
        )
        task = asyncio.get_running_loop().create_task(refusal)
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    def _door(self, name: str) -> Door:
        return next(door for door in doors(self.settings) if door.name == name)

    async def start(self, checked: Preflight | None = None) -> None:
        """Start every door; ``checked`` is the :func:`preflight` already done (else it is done here)."""
        settings = self.settings
        self._preflight = checked = checked or preflight(settings)
        # A replica started again under its old id holds nothing yet: the leases of its previous run
        # are given up before any of its parts claims work, so that work resumes at once.
        released = await asyncio.to_thread(self.leases.release_all)
        if released:
            log.info("released %d lease(s) held before a restart; their work resumes", released)
        tls = checked.tls
        log.info("using %s", describe_store(settings))
        if tls and tls.client_auth == "optional" and not grpc_requests_client_certificates(tls):
            log.warning("gRPC cannot ask for client certificates optionally: gRPC clients use tokens")
        self.service.repository_models()
        await self.service.record(
            AuditEvent(
                event="server.start", principal="medserve", door="system", detail=_settings_summary(settings)
            )
        )
        if settings.load_models:
            await self.service.load_all(Caller.system())
        self._start_monitor()
        if settings.grpc_port >= 0:
            from medserve.transport.grpc_server import GrpcServer

            grpc_server = GrpcServer(
                self.service,
                settings.host,
                settings.grpc_port,
                settings.grpc_max_message_bytes or settings.max_request_bytes,
                credentials=grpc_server_credentials(tls) if tls else None,
                max_concurrent_streams=settings.grpc_max_concurrent_streams,
                max_unread_responses=settings.grpc_max_unread_responses,
                explainer=self.explainer,
            )
            try:
                await grpc_server.start()
            except RuntimeError as exc:  # grpc says only "failed to bind": find out why
                door = self._door("gRPC")
                raise bind_problem(door) or StartupFailure(
                    f"gRPC cannot listen on {door.host}:{door.port}: {exc}"
                ) from None
            self._grpc = grpc_server
        routes = (
            stream_routes(self.service, self.monitor, self.alerts) if self.monitor and self.alerts else []
        )
        await self._start_imaging()
        if self.imaging is not None:
            routes += dicomweb_routes(self.imaging, settings.stow_max_request_bytes)
            routes += dicomweb_retrieve_routes(self.imaging)
        routes += jobs_routes(self.jobs)
        routes += explain_routes(
            self.service, self.explainer, settings.max_request_bytes, settings.max_json_request_bytes
        )
        routes += shared_memory_routes(self.service) + trace_log_routes(self.service)
        if self.hub is not None:
            routes += hub_routes(self.service, self.hub)
        self.edge = build_edge(settings, self.service, self.trust.database, self.leases, settings.replica_id)
        if self.edge is not None:
            routes += edge_routes(self.service, self.edge)
            if (alerts := self.alerts) is not None:  # ward alerts go up to the hub too
                self.edge.watch_alerts(lambda: [a.to_json() for a in alerts.list(limit=1000)])
        if settings.console_enabled:
            routes += console_routes(self._console_parts(), settings.console_idle_timeout_s)
        app = build_app(
            self.service,
            self.metrics,
            settings.max_request_bytes,
            routes,
            max_json_request_bytes=settings.max_json_request_bytes,
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.http_port,
            loop="none",
            http=limited_protocol(
                TlsHttpToolsProtocol if tls else HttpToolsProtocol,
                http_limits(settings, self._connection_refused),
            ),
            timeout_keep_alive=max(1, round(settings.http_keepalive_timeout_s)),
            ws=TlsWebSocketsProtocol if tls else "auto",
            ws_max_size=min(settings.max_json_request_bytes, settings.max_request_bytes),
            **(uvicorn_options(tls) if tls else {}),
            lifespan="off",
            access_log=False,
            log_config=None,  # uvicorn's lines go through medserve's handler and format (text or JSON)
            # uvicorn's DEBUG level dumps WebSocket frames, i.e. patient data, and its INFO lines are a
            # library's chatter (each connection, start and stop): WARNING and above, as other libraries
            log_level="error" if settings.log_level == "error" else "warning",
            timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
        )
        self._http = _HttpServer(config)
        # the socket bound by preflight: nothing could take the port since, and uvicorn never has to
        # bind (its own bind failure exits the process from inside a task)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[checked.http_socket]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        await self.jobs.start()
        if self.edge is not None:
            self.edge.start()
        self.service.set_ready(True)
        self.registry = ReplicaRegistry(
            self.trust.database,
            self.replica_id,
            _advertised(settings.host, self.settings.http_port),
            __version__,
            models=lambda: sorted({e.name for e in self.service.repository_index(True, Caller.system())}),
            ready=self.service.ready,
            heartbeat_s=settings.replica_heartbeat_s,
        )
        await self.registry.start()
        log.info(
            "medserve ready: HTTP on %s:%s, gRPC on %s, DICOM on %s",
            settings.host,
            settings.http_port,
            f"{settings.host}:{settings.grpc_port}" if settings.grpc_port >= 0 else "off",
            _dicom_door(settings, self._scp),
        )

    async def stop(self) -> list[str]:
        """Stop in order. A step that fails is logged with its traceback and the next ones still run,
        so the models are unloaded and ``server.stop`` is recorded whatever failed before; returns the
        names of the steps that failed."""
        log.info("medserve shutting down")
        self.service.set_ready(False)
        if self.registry is not None:
            await self.registry.stop()
        grace = self.settings.shutdown_timeout_s
        failed: list[str] = []

        async def step(name: str, action: Callable[[], Awaitable[object]]) -> None:
            try:
                await action()
            except Exception:  # logged with its traceback and reported by run(); the stop goes on
                log.exception("shutdown: %s failed", name)
                failed.append(name)

        if self.edge is not None:
            await step("edge", self.edge.stop)
        if self._scp is not None:
            await step("DICOM door", partial(asyncio.to_thread, self._scp.stop))
        if self._grpc is not None:
            await step("gRPC door", partial(self._grpc.stop, grace))  # type: ignore[attr-defined]
        if self.alerts is not None:
            self.alerts.end_subscriptions()
        await step("HTTP door", partial(self._stop_http, grace))
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await step("jobs", partial(self.jobs.stop, grace))
        if self.imaging is not None:
            await step("imaging", self.imaging.stop)
        await step("models", self.dataplane.close)
        if self.alert_outbox is not None:
            await step("alert deliveries", self.alert_outbox.stop)
        if self.alerts is not None:
            self.alerts.close()
        stopped = AuditEvent(event="server.stop", principal="medserve", door="system")
        await step("audit record server.stop", partial(self.service.record, stopped))
        await step("store", partial(asyncio.to_thread, self.trust.close))
        await step("traces", partial(asyncio.to_thread, shutdown_tracing))
        log.info("medserve stopped" + (f" ({', '.join(failed)} failed)" if failed else ""))
        return failed

    async def _stop_http(self, grace: float) -> None:
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            try:
                await asyncio.wait_for(self._http_task, grace + 5)
            except TimeoutError:
                self._http_task.cancel()
        if self._preflight is not None:
            self._preflight.close()  # its socket, if uvicorn never took it over

    async def run(self, checked: Preflight | None = None) -> None:
        """Serve until SIGINT or SIGTERM; ``ShutdownIncomplete`` when a step of the stop failed."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start(checked)
            await stop.wait()
        finally:
            failed = await self.stop()
        if failed:
            raise ShutdownIncomplete(f"the shutdown's {', '.join(failed)} step(s) failed: see the log")


def _dicom_door(settings: Settings, scp: StorageSCP | None) -> str:
    if scp is None:
        return "off"
    return f"{settings.host}:{scp.port} (AE {settings.dicom_ae_title}{', TLS' if scp.tls else ''})"


def serve(settings: Settings) -> None:
    """Check what could stop the start (one line, before anything is logged or opened), then serve."""
    checked = preflight(settings)
    try:
        configure_logging(settings.log_level, settings.log_format)
        configure_tracing(settings.otlp_traces_endpoint)
        TRACE_SETTINGS.reset(settings.trace_level, settings.trace_rate)
        server = MedServer(settings)
    except BaseException:
        checked.close()
        raise
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.run(checked))
    else:
        uvloop.run(server.run(checked))
