"""Console sessions: a token exchanged for a session cookie, CSRF tokens, the idle timeout.

The token stays on the server: the cookie carries only a random session id (256 bits). Every request
of a session is authenticated again with its token, so a revoked or expired token ends the session at
its next request, and roles and grants are applied exactly as on the API. Each session has its own
CSRF token, sent back with every action (a hidden form field) and compared in constant time. Before
signing in, the sign-in form is protected by a double-submit token: the same random value in a
cookie and in the form.

Sessions live in the memory of one server process: behind several replicas, a load balancer keeps a
browser on one replica (sticky sessions), or the operator signs in again.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: name of the session cookie and of the sign-in form's double-submit cookie
SESSION_COOKIE = "medserve_console"
SIGNIN_COOKIE = "medserve_console_signin"


def new_secret() -> str:
    """A random, URL-safe value of 256 bits."""
    return secrets.token_urlsafe(32)


def same_secret(expected: str, given: str | None) -> bool:
    """Whether ``given`` equals ``expected`` (both non-empty), compared in constant time."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass
class Session:
    id: str
    csrf: str
    credential: str
    """The bearer token the operator signed in with (never sent back to the browser)."""
    principal: str
    role: str
    created: float
    last_seen: float
    flashes: list[str] = field(default_factory=list)
    """Messages to show on the next page (the outcome of an action, after its redirect)."""

    def flash(self, message: str) -> None:
        self.flashes = (self.flashes + [message])[-5:]

    def take_flashes(self) -> list[str]:
        messages, self.flashes = self.flashes, []
        return messages


class SessionStore:
    """Sessions by id, dropped after ``idle_timeout_s`` without a request that touches them; at most
    ``max_sessions`` (the least recently used goes first)."""

    def __init__(
        self,
        idle_timeout_s: float = 900.0,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_timeout_s <= 0:
            raise ValueError("the idle timeout must be positive")
        if max_sessions < 1:
            raise ValueError("at least one session must be allowed")
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, credential: str, principal: str, role: str) -> Session:
        now = self._clock()
        self.expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(new_secret(), new_secret(), credential, principal, role, now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        """The live session ``session_id``; None when unknown or idle too long (then it is dropped).
        ``touch``: count this as activity (an event stream does not, so an open page still times out)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_timeout_s:
            del self._sessions[session_id]
            return None
        if touch:
            session.last_seen = now
            self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str | None) -> Session | None:
        """Sign out: the session is gone at once."""
        return self._sessions.pop(session_id, None) if session_id else None

    def expire(self) -> list[Session]:
        """Drop and return the sessions idle longer than the timeout."""
        now = self._clock()
        idle = [s for s in self._sessions.values() if now - s.last_seen > self.idle_timeout_s]
        for session in idle:
            del self._sessions[session.id]
        return idle

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return same_secret(session.csrf, given)
