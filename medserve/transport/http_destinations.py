"""Outbound HTTP doors: results sent to a DICOMweb server by STOW-RS and to a FHIR server.

Each is an export :class:`~medserve.imaging.destinations.Destination` over one ``httpx`` client. A
receiver's answer becomes a receipt or an :class:`~medserve.imaging.destinations.ExportFailed` that
says whether a resend may work: this door's one table is :func:`retryable_status` for HTTP statuses
and :func:`~medserve.transport.dicom_status.out_of_resources` for STOW-RS Failure Reasons; the
outbox decides when to resend.

Failure texts never quote response bodies (they may hold patient data): only status codes, DICOM
failure reasons and FHIR OperationOutcome issue codes.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import orjson

from medserve.imaging.destinations import Destination, ExportFailed, ExportItem
from medserve.transport.dicom_status import StoreStatus, out_of_resources
from medserve.values.errors import InvalidInput

_CHUNK = 1 << 20
_CANNOT_UNDERSTAND = int(StoreStatus.CANNOT_UNDERSTAND)  # a failure that gives no reason


def retryable_status(code: int) -> bool:
    """Whether a receiver's HTTP ``code`` may go away if the same request is sent later: a timeout,
    too many requests, or a server-side failure (5xx)."""
    return code in (408, 429) or code >= 500


class _HttpDestination(Destination):
    """Shared HTTP plumbing: one client, bearer token, status-to-retryable mapping."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        verify: bool | ssl.SSLContext = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name or self.kind)
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"destination '{name}': url must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(timeout=timeout, verify=verify, headers=all_headers)

    def close(self) -> None:
        self._client.close()

    def _post(self, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.post(url, **kwargs)
        except httpx.TransportError as exc:  # connect, TLS, timeout, dropped connection: try again later
            raise ExportFailed(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc

    @staticmethod
    def _refused(response: httpx.Response, what: str, extra: str = "") -> ExportFailed:
        code = response.status_code
        retryable = retryable_status(code)
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(response.headers.get("retry-after", ""))
        text = f"{what}: HTTP {code} {response.reason_phrase}".rstrip() + (f" ({extra})" if extra else "")
        return ExportFailed(text, retryable, retry_after)


def _stow_failures(response: httpx.Response) -> list[int]:
    """The Failure Reasons of the FailedSOPSequence in a STOW-RS response (0xC000 where absent)."""
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:  # an XML (or other) response: look for the sequence's tag only
        return [_CANNOT_UNDERSTAND] if b"00081198" in response.content else []
    if isinstance(body, list):  # some servers answer a one-element array
        body = body[0] if body else {}
    failed = body.get("00081198", {}).get("Value", []) if isinstance(body, dict) else []
    reasons = []
    for entry in failed if isinstance(failed, list) else []:
        value = entry.get("00081197", {}).get("Value", []) if isinstance(entry, dict) else []
        reasons.append(int(value[0]) if value and isinstance(value[0], int) else _CANNOT_UNDERSTAND)
    return reasons


class StowRsDestination(_HttpDestination):
    """A DICOMweb server, by STOW-RS: ``POST {url}/studies`` with a multipart/related body (DICOM items)."""

    kind = "stow-rs"
    accepted = frozenset({"dicom"})

    def _send(self, item: ExportItem) -> str:
        with item.path.open("rb") as f:
            f.seek(128)
            if f.read(4) != b"DICM":
                raise ExportFailed(f"{item.path} is not a DICOM Part-10 file", retryable=False)
        boundary = f"medserve-{uuid.uuid4().hex}"
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        length = len(head) + item.path.stat().st_size + len(tail)

        def body() -> Iterator[bytes]:
            yield head
            with item.path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk
            yield tail

        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
        }
        what = f"STOW-RS to {self.url}"
        response = self._post(f"{self.url}/studies", what, content=body(), headers=headers)
        code = response.status_code
        if code in (200, 202, 409):
            reasons = _stow_failures(response)
            if not reasons and code != 409:
                warned = " with warnings" if code == 202 else ""
                return f"STOW-RS HTTP {code}: stored{warned}"
            if reasons and all(r == StoreStatus.DUPLICATE_SOP_INSTANCE for r in reasons):
                return f"STOW-RS HTTP {code}: already stored (duplicate SOP instance)"
            codes = ", ".join(f"0x{r:04X}" for r in reasons) or "none given"
            if reasons and all(out_of_resources(r) for r in reasons):
                raise ExportFailed(f"{what}: HTTP {code}: failure reasons {codes}", retryable=True)
            raise ExportFailed(
                f"{what}: HTTP {code}: instance refused, failure reasons {codes}", retryable=False
            )
        if 200 <= code < 300:
            return f"STOW-RS HTTP {code}"
        raise self._refused(response, what)


def _issue_codes(response: httpx.Response) -> str:
    """The issue codes of an OperationOutcome response (never its free-text diagnostics)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    issues = body.get("issue")
    codes = [f"{i.get('severity', '?')}/{i.get('code', '?')}" for i in issues or () if isinstance(i, dict)]
    return "issues " + ", ".join(codes) if codes else ""


class FhirDestination(_HttpDestination):
    """A FHIR server: the Bundle (transaction or batch) is POSTed to the base URL (FHIR items)."""

    kind = "fhir"
    accepted = frozenset({"fhir"})

    def _send(self, item: ExportItem) -> str:
        content = item.path.read_bytes()
        try:
            bundle = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ExportFailed(f"{item.path} is not JSON: {exc}", retryable=False) from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ExportFailed(f"{item.path} is not a FHIR Bundle", retryable=False)
        if bundle.get("type") not in ("transaction", "batch"):
            raise ExportFailed(f"{item.path} is a '{bundle.get('type')}' Bundle, not a transaction", False)
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "X-Request-ID": item.uid,
        }
        what = f"FHIR bundle {item.uid} to {self.url}"
        response = self._post(self.url, what, content=content, headers=headers)
        if not 200 <= response.status_code < 300:
            raise self._refused(response, what, _issue_codes(response))
        entries = self._entry_statuses(response)
        failed = [s for s in entries if not s.startswith("2")]
        if failed:  # a batch commits entry by entry
            retryable = all(s[:3].isdigit() and retryable_status(int(s[:3])) for s in failed)
            raise ExportFailed(
                f"{what}: {len(failed)} of {len(entries)} entries failed ({failed[0]})", retryable
            )
        return f"FHIR HTTP {response.status_code}: bundle {item.uid}, {len(entries)} entries"

    @staticmethod
    def _entry_statuses(response: httpx.Response) -> list[str]:
        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            return []
        entries = body.get("entry") if isinstance(body, dict) else None
        statuses = []
        for entry in entries if isinstance(entries, list) else []:
            answer = entry.get("response") if isinstance(entry, dict) else None
            if isinstance(answer, dict) and isinstance(answer.get("status"), str):
                statuses.append(answer["status"].strip())
        return statuses
