"""The edge's connection to its hub: mutual TLS (client certificate and key, the hub's CA) or a bearer
token naming the edge; one manifest pull, one artifact download, one uplink batch per call."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MAX_MANIFEST_BYTES = 16 << 20


class HubUnreachable(Exception):
    """The hub did not answer (connection refused, timeout, TLS failure) or answered 5xx."""


class HubRefused(Exception):
    """The hub answered with a 4xx: retrying the same request will not help by itself."""


@dataclass(frozen=True, slots=True)
class HubLink:
    url: str  # e.g. https://hub.example:8000
    token: str = ""
    certfile: Path | None = None
    keyfile: Path | None = None
    ca: Path | None = None
    timeout_s: float = 30.0


def _error(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("error", reply.text))[:500]
    except ValueError:
        return reply.text[:500]


class HubClient:
    def __init__(self, link: HubLink) -> None:
        self.link = link
        verify: ssl.SSLContext | bool = True
        if link.url.startswith("https"):
            verify = ssl.create_default_context(cafile=str(link.ca) if link.ca else None)
            if link.certfile is not None:
                verify.load_cert_chain(str(link.certfile), str(link.keyfile) if link.keyfile else None)
        headers = {"Authorization": f"Bearer {link.token}"} if link.token else {}
        self._client = httpx.AsyncClient(
            base_url=link.url.rstrip("/"), verify=verify, headers=headers, timeout=link.timeout_s
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            reply = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"hub {self.link.url}: {type(exc).__name__}: {exc}") from None
        if reply.status_code >= 500:
            raise HubUnreachable(f"hub {self.link.url}{path}: HTTP {reply.status_code}: {_error(reply)}")
        if reply.status_code >= 400:
            raise HubRefused(f"hub {self.link.url}{path}: HTTP {reply.status_code}: {_error(reply)}")
        if len(reply.content) > MAX_MANIFEST_BYTES:
            raise HubRefused(f"hub {self.link.url}{path}: answer larger than {MAX_MANIFEST_BYTES} bytes")
        return reply.json()

    async def infer(
        self, path: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        """One Open Inference Protocol request to the hub (overflow); the caller reads the answer."""
        try:
            return await self._client.post(path, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"hub {self.link.url}: {type(exc).__name__}: {exc}") from None

    async def sync(self, status: dict[str, Any]) -> Any:
        """Report this edge's status; the answer is the group's signed manifest."""
        return await self._post("/v2/hub/sync", status)

    async def uplink(self, items: list[dict[str, Any]]) -> Any:
        return await self._post("/v2/hub/uplinks", {"items": items})

    async def download(self, model: str, version: int, target: Path, max_bytes: int) -> str:
        """Write the artifact of a release to ``target``; return its SHA-256 (checked by the caller)."""
        digest = hashlib.sha256()
        path = f"/v2/hub/artifacts/{model}/{version}"
        try:
            async with self._client.stream("GET", path) as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                    kind = HubUnreachable if reply.status_code >= 500 else HubRefused
                    raise kind(f"hub {self.link.url}{path}: HTTP {reply.status_code}: {_error(reply)}")
                written = 0
                with target.open("wb") as handle:
                    async for chunk in reply.aiter_bytes():
                        written += len(chunk)
                        if written > max_bytes:
                            raise HubRefused(f"hub {path}: artifact larger than {max_bytes} bytes")
                        digest.update(chunk)
                        handle.write(chunk)
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"hub {self.link.url}: {type(exc).__name__}: {exc}") from None
        return digest.hexdigest()
