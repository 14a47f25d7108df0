"""One authentication step for every door: a bearer token, else a verified client certificate.

A bearer token wins over a certificate: a request that sends a token is judged by the token alone.
Every refusal calls ``on_failure(door, peer, reason)`` before ``Unauthenticated`` is raised; a
failing callback is logged and does not change the refusal. Database errors (``StoreUnavailable``)
pass through without calling it: they are not a verdict on the credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from medserve.security.certificates import CertificateGrants
from medserve.security.tokens import TokenStore
from medserve.values.access import DEVELOPMENT, Principal
from medserve.values.errors import Unauthenticated

logger = logging.getLogger(__name__)

BEARER_HINT = "send 'Authorization: Bearer <token>'"
MISSING = f"missing credentials: {BEARER_HINT} or a client certificate"
FailureHook = Callable[[str, str, str], None]  # (door, peer, reason)


class Authenticator:
    """Turns a request's credentials into a :class:`Principal`."""

    def __init__(
        self,
        tokens: TokenStore | None,
        certificates: CertificateGrants | None,
        *,
        disabled: bool = False,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.tokens = tokens
        self.certificates = certificates
        self.disabled = disabled
        self.on_failure = on_failure

    def authenticate(
        self,
        authorization: str | None,
        client_cert_cn: str | None = None,
        *,
        door: str,
        peer: str = "",
    ) -> Principal:
        """The principal for an ``Authorization`` header value and/or a verified certificate CN."""
        if self.disabled:
            return DEVELOPMENT
        try:
            return self._resolve(authorization, client_cert_cn)
        except Unauthenticated as exc:
            self._failed(door, peer, str(exc))
            raise

    def _resolve(self, authorization: str | None, client_cert_cn: str | None) -> Principal:
        parts = authorization.split(None, 1) if authorization is not None else []
        if parts:
            if parts[0].lower() != "bearer":
                raise Unauthenticated(f"unsupported authorization scheme: {BEARER_HINT}")
            token = parts[1].strip() if len(parts) == 2 else ""
            if not token:
                raise Unauthenticated("malformed token")
            if self.tokens is None:
                raise Unauthenticated("token authentication is not enabled on this server")
            return self.tokens.authenticate(token)
        if client_cert_cn:
            if self.certificates is None:
                raise Unauthenticated("client certificate authentication is not enabled on this server")
            return self.certificates.principal_for(client_cert_cn)
        raise Unauthenticated(MISSING)

    def _failed(self, door: str, peer: str, reason: str) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(door, peer, reason)
        except Exception:
            logger.exception("authentication failure hook raised (door=%s, peer=%s)", door, peer)
