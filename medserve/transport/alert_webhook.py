"""Alert destinations: a webhook gets each ward alert as an HTTP POST of its JSON (``Alert.to_json()``).

The alert id is sent as ``Idempotency-Key`` and ``X-Request-ID``: a resend after an ambiguous failure
(a replica killed between the send and recording it) carries the same key, so the receiver can drop
it. 2xx is delivered; 408, 429 and 5xx, and connection failures, are retried later (honouring
``Retry-After``); any other status is a refusal a resend cannot fix. Failure texts name the status,
never the response body.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from medserve.streaming.alert_delivery import AlertDeliveryFailed
from medserve.transport.http_destinations import retryable_status
from medserve.values.errors import InvalidConfig


class WebhookAlertSender:
    """POSTs alerts to one URL."""

    def __init__(self, name: str, url: str, *, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidConfig(f"alert webhook '{name}': url must start with http:// or https://")
        self.name = name
        self.url = url
        self._client = httpx.Client(timeout=timeout_s)

    def send(self, alert: dict[str, Any]) -> str:
        alert_id = str(alert.get("id", ""))
        headers = {"Idempotency-Key": alert_id, "X-Request-ID": alert_id}
        try:
            response = self._client.post(self.url, json=alert, headers=headers)
        except httpx.TransportError as exc:  # connect, TLS, timeout, dropped connection: try again later
            raise AlertDeliveryFailed(f"webhook {self.name}: {type(exc).__name__}", retryable=True) from exc
        code = response.status_code
        if 200 <= code < 300:
            return f"HTTP {code}"
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(response.headers.get("retry-after", ""))
        reason = f"webhook {self.name}: HTTP {code} {response.reason_phrase}".rstrip()
        raise AlertDeliveryFailed(reason, retryable_status(code), retry_after)

    def close(self) -> None:
        self._client.close()


def webhook_senders(webhooks: dict[str, str]) -> list[WebhookAlertSender]:
    """The alert destinations named in the settings (``alert_webhooks``: name → URL)."""
    return [WebhookAlertSender(name, url) for name, url in sorted(webhooks.items())]
