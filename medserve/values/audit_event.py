"""The audit event value: what happened, as every part of the server reports it.

Sealing events into a hash chain and storing them is ``medserve.audit``'s work; this module only names
the kinds of event and the event value, so any layer can report one without importing the trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Event kinds.
INFERENCE: Final = "inference"
INGESTION: Final = "ingestion"
EXPORT: Final = "export"
MODEL_LOAD: Final = "model.load"
MODEL_UNLOAD: Final = "model.unload"
MODEL_ROLLBACK: Final = "model.rollback"
AUTH_FAILURE: Final = "auth.failure"
CONFIG_CHANGE: Final = "config.change"
SERVER_START: Final = "server.start"
SERVER_STOP: Final = "server.stop"
TOKEN_CREATE: Final = "token.create"
TOKEN_REVOKE: Final = "token.revoke"
EVENT_KINDS: Final = frozenset(
    {
        INFERENCE,
        INGESTION,
        EXPORT,
        MODEL_LOAD,
        MODEL_UNLOAD,
        MODEL_ROLLBACK,
        AUTH_FAILURE,
        CONFIG_CHANGE,
        SERVER_START,
        SERVER_STOP,
        TOKEN_CREATE,
        TOKEN_REVOKE,
    }
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened; never patient data (``patient_ref``/``study_ref`` are pseudonymous references)."""

    event: str
    principal: str = ""
    door: str = ""
    model: str = ""
    model_version: str = ""
    model_digest: str = ""
    device: str = ""
    request_id: str = ""
    input_digest: str = ""
    output_digest: str = ""
    status: str = "ok"
    latency_us: int = 0
    study_ref: str = ""
    patient_ref: str = ""
    detail: str = ""
