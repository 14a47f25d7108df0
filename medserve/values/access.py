"""Who may do what: roles, actions, principals and the one authorisation rule every door uses.

=========  =======================================================================
role       may
=========  =======================================================================
admin      everything: repository load/unload/rollback, configuration, and below
service    infer and acknowledge alerts on granted models, read their metadata and the results
           (job result files) of work on them
viewer     read metadata, statistics, metrics, alerts and job states; never result files
=========  =======================================================================

A principal may carry model grants (``models``); then every model-scoped action is limited to
those models, whatever the role. Grants are checked before the model is looked up, so a refusal
never tells whether a model exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from medserve.values.errors import PermissionDenied


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    VIEWER = "viewer"


class Action(StrEnum):
    READ = "read"  # server/model metadata, readiness, config, statistics, metrics, alerts
    INFER = "infer"
    ACKNOWLEDGE = "acknowledge"  # acknowledge an alert
    MANAGE = "manage"  # repository load/unload/rollback, configuration
    RESULTS = "results"  # read result files (job sinks), which carry patient data


_ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.SERVICE: frozenset({Action.READ, Action.INFER, Action.ACKNOWLEDGE, Action.RESULTS}),
    Role.VIEWER: frozenset({Action.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated identity: a token's name, a client certificate's CN, or a system part."""

    name: str
    role: Role
    models: frozenset[str] | None = None  # None: every model
    credential: str = ""  # "token:<id>", "cert:<cn>", "system", "development"

    def may(self, action: Action, model: str | None = None) -> bool:
        if action not in _ROLE_ACTIONS[self.role]:
            return False
        return model is None or self.models is None or model in self.models

    def require(self, action: Action, model: str | None = None) -> None:
        if self.may(action, model):
            return
        if action not in _ROLE_ACTIONS[self.role]:
            raise PermissionDenied(f"role '{self.role}' of '{self.name}' may not {action}")
        raise PermissionDenied(f"'{self.name}' has no grant for model '{model}'")

    def may_all(self, action: Action, models: Iterable[str]) -> bool:
        """Whether this principal may ``action`` on every one of ``models`` (the role, then grants)."""
        return action in _ROLE_ACTIONS[self.role] and all(self.may(action, m) for m in models)

    def visible(self, models: Iterable[str]) -> list[str]:
        """The models among ``models`` this principal may see."""
        return [m for m in models if self.models is None or m in self.models]


#: The server's own parts (pipelines calling models, start-up loading).
SYSTEM = Principal("medserve", Role.ADMIN, None, "system")
#: Everyone, when authentication is turned off with the development flag.
DEVELOPMENT = Principal("development", Role.ADMIN, None, "development")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, through which door, for which request: passed with every service call."""

    principal: Principal
    door: str  # "http", "grpc", "websocket", "sse", "dicom", "pipeline:<name>", "system"
    request_id: str = ""
    peer: str = ""

    @staticmethod
    def system(door: str = "system") -> Caller:
        return Caller(SYSTEM, door, uuid.uuid4().hex)

    def for_pipeline(self, pipeline: str) -> Caller:
        """The caller a pipeline uses for the models it calls on this caller's behalf.

        The pipeline was authorised as a whole; the models inside it run with the pipeline's
        authority, and audit records keep the original principal's name.
        """
        inner = Principal(self.principal.name, Role.ADMIN, None, f"pipeline:{pipeline}")
        return Caller(inner, f"pipeline:{pipeline}", self.request_id, self.peer)
