"""InferenceService: the one dataplane every door (HTTP, gRPC, WebSocket, DICOM, ...) calls.

Doors decode their wire format into ``core.types`` values, turn the credentials they received into a
``Caller`` with :meth:`InferenceService.authenticate`, call this service with it, and encode what it
returns; they map ``MedserveError`` subclasses to their own status codes and hold no other logic.

Here, once for every door: each call is authorised against the caller's role and model grants, and
every inference, model load/unload/rollback and authentication failure gets an audit record that is
durably queued before the call returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from medserve import __version__
from medserve.core.collaborators import AuditSink, Authenticator, OutputObserver, Pipeline, Pseudonyms
from medserve.core.model import ServedModel
from medserve.core.model_info import ServedModelInfo
from medserve.core.overflow import Overflow, infer_or_overflow
from medserve.core.readiness import Readiness
from medserve.core.refusals import audited_status
from medserve.core.registry import ModelRegistry
from medserve.core.shared_memory import SystemSharedMemory
from medserve.monitoring.tracing import child_span, record_tensors
from medserve.values.access import Action, Caller
from medserve.values.audit_event import AuditEvent
from medserve.values.digest import tensors_digest
from medserve.values.errors import InvalidInput, MedserveError, ModelNotFound, Unauthenticated, Unsupported
from medserve.values.suggestions import did_you_mean
from medserve.values.types import InferenceRequest, InferenceResponse, ModelMetadata, RepositoryEntry, Tensor

log = logging.getLogger(__name__)

T = TypeVar("T")

OFFLOAD_DIGEST_BYTES = 1 << 20
"""Tensors larger than this (1 MiB: about 0.6 ms of SHA-256 here) are hashed for the audit record in
a worker thread, the inputs while the model runs, so that a large request does not hold the event loop
(and every other client) for the time of its hash."""

#: Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = (  # those docs/COMPATIBILITY.md marks supported; not cuda_shared_memory
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
    "system_shared_memory",
    "trace",
    "logging",
    "parameters",
)

#: Request parameters that name a patient or a study; audit records keep only their pseudonyms.
PATIENT_PARAMETERS = ("patient_id", "sequence_id")
STUDY_PARAMETERS = ("study_instance_uid", "study_uid", "accession_number")


def _first(parameters: dict[str, Any], names: tuple[str, ...]) -> object:
    return next((parameters[k] for k in names if parameters.get(k) not in (None, "")), "")


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        authenticator: Authenticator,
        *,
        audit: AuditSink | None = None,
        pseudonyms: Pseudonyms | None = None,
        observer: OutputObserver | None = None,
        observe_per_s: int = 50,
        shared_memory: SystemSharedMemory | None = None,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self._authenticator = authenticator
        self._pseudonyms = pseudonyms
        self._observer = observer
        self.readiness = Readiness()  # started, and the store answering once the server watches it
        self._pipelines: dict[str, Pipeline] = {}
        self.observe_per_s = observe_per_s
        self._observed: dict[str, tuple[int, int]] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        #: Triton's system shared memory regions, registered through the doors.
        self.shared_memory = shared_memory if shared_memory is not None else SystemSharedMemory()
        self.overflow: Overflow | None = None  # where refused requests may go (an edge's hub)

    def add_pipeline(self, pipeline: Pipeline) -> None:
        self._pipelines[pipeline.name] = pipeline

    # -- identity and audit -----------------------------------------------------------------
    async def authenticate(
        self,
        authorization: str | None,
        client_cert_cn: str | None = None,
        *,
        door: str,
        peer: str = "",
        request_id: str = "",
    ) -> Caller:
        """The caller behind a door's credentials; a failure is audited, then raised."""
        try:
            principal = self._authenticator.authenticate(authorization, client_cert_cn, door=door, peer=peer)
        except Unauthenticated as exc:
            await self.record(
                AuditEvent(
                    event="auth.failure",
                    door=door,
                    request_id=request_id,
                    status=audited_status(exc),
                    detail=f"{exc} (peer {peer or 'unknown'})",
                )
            )
            raise
        return Caller(principal, door, request_id or uuid.uuid4().hex, peer)

    async def record(self, event: AuditEvent) -> None:
        """Queue an audit record durably (returns once it is safe from a crash)."""
        if self.audit is not None:
            await self.audit.record(event)

    def pseudonym(self, kind: str, value: object) -> str:
        if self._pseudonyms is None or value in (None, ""):
            return ""
        return self._pseudonyms.ref(kind, str(value))

    async def call(
        self,
        caller: Caller,
        model: str,
        work: Callable[[], Awaitable[T]],
        *,
        event: str = "inference",
        action: Action = Action.INFER,
        input_digest: str | Awaitable[str] = "",
        output_digest: Callable[[T], str] | None = None,
        patient: object = "",
        study: object = "",
        facts: dict[str, str] | None = None,
    ) -> T:
        """Authorise ``caller`` for ``action`` on ``model``, run ``work`` and audit the outcome.

        ``facts`` may be filled by ``work`` while it runs (``model_version``, ``model_digest``,
        ``device``, ``request_id``). Doors whose unit of work is not an OIP request (a WebSocket
        sample, a DICOM instance) use this directly; ``infer`` is built on it. ``input_digest`` may be
        still on its way (an awaitable, hashing while ``work`` runs).
        """
        try:
            caller.principal.require(action, model or None)  # "": not about one model (DICOM ingestion)
        except BaseException:
            if isinstance(input_digest, asyncio.Future):
                input_digest.cancel()  # a refused call is not audited here: its hash is not needed
            raise
        facts = {} if facts is None else facts
        started = time.perf_counter_ns()
        status, outcome = "ok", ""
        result: T | None = None
        try:
            with child_span(f"medserve.{event}", **{"medserve.model": model}):
                result = await work()
            return result
        except BaseException as exc:
            status = audited_status(exc)
            outcome = str(exc)[:500] if isinstance(exc, MedserveError) else ""
            raise
        finally:
            patient_ref, study_ref = self.pseudonym("patient", patient), self.pseudonym("study", study)
            for raw, ref in ((patient, patient_ref), (study, study_ref)):
                if raw not in (None, "") and str(raw) in outcome:
                    outcome = outcome.replace(str(raw), f"<{ref or 'redacted'}>")  # error texts may echo ids
            if not isinstance(input_digest, str):
                try:
                    input_digest = await input_digest
                except Exception:  # the record is written whatever happened to the hash
                    log.exception("hashing the inputs of a %s call to %s failed", event, model)
                    input_digest = ""
            with child_span("audit"):
                await self.record(
                    AuditEvent(
                        event=event,
                        principal=caller.principal.name,
                        door=caller.door,
                        model=model,
                        model_version=facts.get("model_version", ""),
                        model_digest=facts.get("model_digest", ""),
                        device=facts.get("device", ""),
                        request_id=facts.get("request_id") or caller.request_id,
                        input_digest=input_digest,
                        output_digest=output_digest(result) if (output_digest and result is not None) else "",
                        status=status,
                        latency_us=(time.perf_counter_ns() - started) // 1000,
                        patient_ref=patient_ref,
                        study_ref=study_ref,
                        detail=outcome or facts.get("detail", ""),
                    )
                )

    async def refuse(self, caller: Caller, model: str, exc: MedserveError) -> None:
        """Audit an inference request a door could not even decode (the door then raises ``exc``)."""
        await self.record(
            AuditEvent(
                event="inference",
                principal=caller.principal.name,
                door=caller.door,
                model=model,
                request_id=caller.request_id,
                status=audited_status(exc),
                detail=str(exc)[:500],
            )
        )

    # -- server -----------------------------------------------------------------------------
    def set_ready(self, ready: bool) -> None:
        self.readiness.set(ready)

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready as last checked (never waits); the health doors ask :meth:`check_ready`."""
        return self.readiness.ready()

    async def check_ready(self) -> bool:
        return await self.readiness.check()

    def server_metadata(self, caller: Caller) -> dict[str, Any]:
        caller.principal.require(Action.READ)
        return {"name": "medserve", "version": __version__, "extensions": list(EXTENSIONS)}

    # -- models -----------------------------------------------------------------------------
    def model_ready(self, name: str, version: str, caller: Caller) -> bool:
        caller.principal.require(Action.READ, name)
        if name in self._pipelines and version in ("", "1"):
            return True
        try:
            return self.registry.get(name, version).ready()
        except ModelNotFound:
            self.registry.repository.model_dir(name)
            return False

    def model_metadata(self, name: str, version: str, caller: Caller) -> ModelMetadata:
        caller.principal.require(Action.READ, name)
        pipeline = self._pipelines.get(name)
        if pipeline is not None and version in ("", "1"):
            return pipeline.metadata()
        return self._served(name, version, caller).metadata(self.registry.versions(name))

    def model_config(self, name: str, version: str, caller: Caller) -> dict[str, Any]:
        caller.principal.require(Action.READ, name)
        return self._served(name, version, caller).triton_config()

    def model_info(self, name: str, caller: Caller, version: str = "") -> ServedModelInfo:
        """The version serving ``name`` (the newest unless ``version`` is given), for a workflow:
        its declared tensors, batch limit, artifact digest, device and configuration metadata."""
        caller.principal.require(Action.READ, name)
        return ServedModelInfo.of(self._served(name, version, caller))

    def model_statistics(self, name: str, version: str, caller: Caller) -> dict[str, Any]:
        caller.principal.require(Action.READ, name or None)
        if name:
            if version:
                models = [self.registry.get(name, version)]
            else:
                self.registry.get(name)
                models = [m for m in self.registry.loaded_models() if m.name == name]
        else:
            if version:
                raise ModelNotFound("a version was given without a model name")
            visible = set(caller.principal.visible(m.name for m in self.registry.loaded_models()))
            models = [m for m in self.registry.loaded_models() if m.name in visible]
        return {"model_stats": [m.stats.to_dict(m.name, m.version) for m in models]}

    async def infer(
        self, request: InferenceRequest, caller: Caller, *, input_digest: str | None = None
    ) -> InferenceResponse:
        """Authorise, run and audit one request. ``input_digest``: the SHA-256 of the inputs
        (``tensors_digest``), when the caller computed it off the event loop (large job batches)."""
        name = request.model_name
        pipeline = self._pipelines.get(name)
        facts = {"model_version": request.model_version, "request_id": request.id}
        audited = self.audit is not None
        output_digest = [""]
        caller.principal.require(Action.INFER, name)  # before any region is read
        try:
            self.shared_memory.resolve_inputs(request, caller)
            output_regions = self.shared_memory.output_refs(request, caller)
        except MedserveError as exc:
            await self.refuse(caller, name, exc)
            raise

        async def run() -> InferenceResponse:
            record_tensors(name, "TENSOR_QUEUE_INPUT", request.inputs)  # with trace level TENSORS
            if pipeline is not None:
                if request.model_version not in ("", "1"):
                    raise ModelNotFound(f"pipeline '{name}' has only version '1'")
                facts["model_version"] = "1"
                response = await pipeline.infer(request, caller)
            else:
                model = self._served(name, request.model_version, caller)
                facts.update(
                    model_version=model.version, model_digest=model.loaded.sha256, device=model.device
                )
                response = await infer_or_overflow(model, request, self.overflow, facts, caller.request_id)
                if self._observer is not None:
                    self._observe(model.name, model.version, request, response)
            record_tensors(name, "TENSOR_BACKEND_OUTPUT", response.outputs)
            if audited:
                output_digest[0] = await digest_of(response.outputs)
            if output_regions:
                self.shared_memory.place_outputs(response, output_regions, caller)
            return response

        if not audited:
            given: str | Awaitable[str] = ""
        elif input_digest is not None:
            given = input_digest
        elif _nbytes(request.inputs) > OFFLOAD_DIGEST_BYTES:
            given = asyncio.ensure_future(asyncio.to_thread(tensors_digest, request.inputs))
        else:
            given = tensors_digest(request.inputs)
        return await self.call(
            caller,
            name,
            run,
            input_digest=given,
            output_digest=(lambda _response: output_digest[0]) if audited else None,
            patient=_first(request.parameters, PATIENT_PARAMETERS),
            study=_first(request.parameters, STUDY_PARAMETERS),
            facts=facts,
        )

    async def infer_step(self, request: InferenceRequest, caller: Caller) -> InferenceResponse:
        """One step (a frame, a sliding-window patch) of a pipeline run that is audited as a whole
        by the ``call`` around it: authorised, batched and counted like any request, but without an
        audit record or a monitoring sample of its own."""
        caller.principal.require(Action.INFER, request.model_name)
        return await self._served(request.model_name, request.model_version, caller).infer(request)

    def _served(self, name: str, version: str, caller: Caller) -> ServedModel:
        """The model serving ``name``; a name that does not exist gets the nearest one the caller may
        see (a caller granted other models learns nothing of them)."""
        try:
            return self.registry.get(name, version)
        except ModelNotFound as exc:
            known = self.registry.known() | set(self._pipelines)
            if name in known:
                raise
            hint = did_you_mean(name, caller.principal.visible(sorted(known)))
            if not hint:
                raise
            raise ModelNotFound(f"{exc}{hint}") from None

    def _observe(
        self, model: str, version: str, request: InferenceRequest, response: InferenceResponse
    ) -> None:
        """Feed the model monitor a sample of the traffic: at most ``observe_per_s`` responses a second."""
        second, count = self._observed.get(model, (0, 0))
        now = int(time.monotonic())
        if now != second:
            second, count = now, 0
        if count >= self.observe_per_s:
            return
        self._observed[model] = (second, count + 1)

        def numeric(tensors: list[Any]) -> dict[str, np.ndarray]:
            return {t.name: t.data for t in tensors if t.datatype != "BYTES"}

        try:
            self._observer.observe(model, version, numeric(request.inputs), numeric(response.outputs))  # type: ignore[union-attr]
        except (ValueError, TypeError, ArithmeticError) as exc:  # monitoring must never fail a request
            log.warning("model monitoring skipped a response of %s: %s", model, type(exc).__name__)

    async def model_monitoring(self, name: str, caller: Caller) -> dict[str, Any]:
        """Output distributions and input statistics over time windows, with drift scores (of every
        replica: read from the store in a worker thread, never on the event loop)."""
        caller.principal.require(Action.READ, name)
        if self._observer is None:
            raise Unsupported("model monitoring is not enabled on this server")
        try:
            return await asyncio.to_thread(self._observer.snapshot, name)
        except ModelNotFound:
            self.registry.get(name)  # not loaded: ModelNotFound; loaded but not yet used: no windows
            return {"model": name, "versions": []}

    # -- repository -------------------------------------------------------------------------
    def repository_index(self, ready_only: bool, caller: Caller) -> list[RepositoryEntry]:
        caller.principal.require(Action.READ)
        rows = self.registry.index(ready_only)
        visible = set(caller.principal.visible(r.name for r in rows))
        return [r for r in rows if r.name in visible]

    async def _audited_change(
        self, event: str, name: str, caller: Caller, change: Callable[[], Awaitable[None]], detail: str = ""
    ) -> None:
        """Authorise and run a repository change; its record names the versions serving after it."""
        facts: dict[str, str] = {"detail": detail} if detail else {}

        async def run() -> None:
            try:
                await change()
            finally:
                versions = self.registry.versions(name)
                facts["model_version"] = ",".join(versions)
                facts["model_digest"] = ",".join(
                    self.registry.get(name, v).loaded.sha256[:16] for v in versions
                )

        await self.call(caller, name, run, event=event, action=Action.MANAGE, facts=facts)

    async def load_model(self, name: str, caller: Caller, config: dict[str, Any] | None = None) -> None:
        """Load (or reload) ``name``; ``config``: Triton's model configuration as JSON, applied over its
        config.yaml for this load (Triton's repository extension), named with its digest in the record."""
        detail = ""
        if config is not None:
            digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
            detail = f"config override sha256:{digest[:16]} ({', '.join(sorted(config)) or 'empty'})"
        await self._audited_change(
            "model.load", name, caller, lambda: self.registry.load(name, config), detail=detail
        )

    async def unload_model(self, name: str, caller: Caller) -> None:
        await self._audited_change("model.unload", name, caller, lambda: self.registry.unload(name))

    async def ensure_loaded(self, name: str, caller: Caller) -> None:
        """Load ``name`` unless a version of it is serving, exactly as ``load_model`` does (``manage``
        on the model, a ``model.load`` record); callers asking at the same time load it once."""
        if self.registry.versions(name):
            return
        async with self._loading.setdefault(name, asyncio.Lock()):
            if not self.registry.versions(name):
                await self.load_model(name, caller)

    async def load_all(self, caller: Caller) -> None:
        """Load every model in the repository; one that fails is logged and left unavailable."""
        for name in self.registry.repository.model_names():
            try:
                await self.load_model(name, caller)
            except MedserveError as exc:
                log.error("model %s is not serving: %s", name, exc)

    def repository_models(self) -> list[str]:
        """The models in the repository; raises ``InvalidConfig`` when it cannot be read."""
        return self.registry.repository.model_names()

    def require_in_repository(self, name: str) -> None:
        """Raises ``ModelNotFound`` unless the repository has a folder for ``name`` (loaded or not)."""
        self.registry.repository.model_dir(name)

    async def close(self) -> None:
        """Unload every model (their in-flight batches finish first), write back live profiles and
        unmap every shared memory region."""
        await self.registry.close()
        self.shared_memory.close()

    async def rollback_model(
        self, name: str, caller: Caller, version: int | None = None, clear: bool = False
    ) -> dict[str, Any]:
        """Pin ``name`` to an earlier version (default: the one before the newest served), or unpin."""
        caller.principal.require(Action.MANAGE, name)
        lineage = self.registry.lineage
        if lineage is None:
            raise InvalidInput("rollback needs the lineage store, which this server was started without")
        if clear:
            lineage.unpin(name)
        else:
            if version is None:
                served = [int(v) for v in self.registry.versions(name)]
                if not served:
                    raise ModelNotFound(f"model '{name}' is not loaded")
                version = lineage.rollback_target(
                    name, max(served), self.registry.repository.versions_on_disk(name)
                )
            elif version not in self.registry.repository.versions_on_disk(name):
                raise InvalidInput(f"model '{name}' has no version folder {version}")
            lineage.pin(name, version, caller.principal.name)
        await self._audited_change("model.rollback", name, caller, lambda: self.registry.load(name))
        return {"model": name, "pinned": lineage.pinned(name), "serving": self.registry.versions(name)}


def _nbytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.data.nbytes for t in tensors if isinstance(t.data, np.ndarray) and t.data.dtype != object)


async def digest_of(tensors: Sequence[Tensor]) -> str:
    """``tensors_digest``, in a worker thread when the tensors are larger than ``OFFLOAD_DIGEST_BYTES``."""
    if _nbytes(tensors) > OFFLOAD_DIGEST_BYTES:
        return await asyncio.to_thread(tensors_digest, tensors)
    return tensors_digest(tensors)
