"""What ``InferenceService`` needs of the parts it is given: pipelines served as models, the audit
sink, the authenticator, the pseudonym key and the output observer (model monitoring).

Structural types only, so the dataplane depends on none of the services that implement them.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from medserve.values.access import Caller, Principal
from medserve.values.audit_event import AuditEvent
from medserve.values.types import InferenceRequest, InferenceResponse, ModelMetadata


class Pipeline(Protocol):
    """A served model made of server-side logic over other models (e.g. the patient monitor)."""

    name: str

    async def infer(self, request: InferenceRequest, caller: Caller) -> InferenceResponse: ...

    def metadata(self) -> ModelMetadata: ...


class AuditSink(Protocol):
    async def record(self, event: AuditEvent) -> None: ...


class Authenticator(Protocol):
    def authenticate(
        self, authorization: str | None, client_cert_cn: str | None = None, *, door: str, peer: str = ""
    ) -> Principal: ...


class Pseudonyms(Protocol):
    def ref(self, kind: str, value: str) -> str: ...


class OutputObserver(Protocol):
    def observe(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        now: float | None = None,
    ) -> None: ...

    def snapshot(self, model: str) -> dict[str, Any]: ...
