"""Export destinations from the imaging configuration's ``destinations`` list.

Each entry names a ``type``: ``dicom`` (C-STORE, :mod:`medserve.transport.dimse_scu`), ``stow-rs``
and ``fhir`` (:mod:`medserve.transport.http_destinations`), or ``folder``
(:class:`~medserve.imaging.destinations.FolderDestination`); a bad entry is ``InvalidConfig``
naming the destination and the field.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from medserve.imaging.destinations import Destination, FolderDestination
from medserve.transport.dimse_scu import DicomStoreDestination
from medserve.transport.http_destinations import FhirDestination, StowRsDestination
from medserve.values.errors import InvalidConfig

_AE_TITLE = r"^[\x20-\x5b\x5d-\x7e]*[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*$"  # printable, no backslash


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=64)


class _NetworkConfig(_Config):
    timeout: float = Field(default=30.0, gt=0)
    ca_file: Path | None = None  # CA bundle that verifies the receiver (default: the system's)
    certfile: Path | None = None  # client certificate (PEM) for mutual TLS, with keyfile
    keyfile: Path | None = None

    def tls_context(self, name: str) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.certfile is not None:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfig(f"destination '{name}': TLS files do not load: {exc}") from exc
        return context


class DicomConfig(_NetworkConfig):
    type: Literal["dicom"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    called_aet: str = Field(max_length=16, pattern=_AE_TITLE)
    calling_aet: str = Field(default="MEDSERVE", max_length=16, pattern=_AE_TITLE)
    tls: bool = False


class _HttpConfig(_NetworkConfig):
    url: str = Field(pattern=r"^https?://[^\s/]+")
    token: str | None = None
    token_env: str | None = None  # the environment variable holding the bearer token
    headers: dict[str, str] = Field(default_factory=dict)
    verify: bool = True  # False: do not verify the server certificate (test systems only)

    def http_options(self, name: str) -> dict[str, Any]:
        token = self.token
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise InvalidConfig(f"destination '{name}': field 'token_env': ${self.token_env} is not set")
        verify: bool | ssl.SSLContext = self.verify
        if self.verify and (self.ca_file or self.certfile):
            verify = self.tls_context(name)
        return {
            "token": token,
            "headers": self.headers,
            "timeout": self.timeout,
            "verify": verify,
            "name": name,
        }


class StowRsConfig(_HttpConfig):
    type: Literal["stow-rs"]


class FhirConfig(_HttpConfig):
    type: Literal["fhir"]


class FolderConfig(_Config):
    type: Literal["folder"]
    path: Path


_CONFIG: TypeAdapter[DicomConfig | StowRsConfig | FhirConfig | FolderConfig] = TypeAdapter(
    Annotated[DicomConfig | StowRsConfig | FhirConfig | FolderConfig, Field(discriminator="type")]
)
_TYPES = "dicom, stow-rs, fhir, folder"


def destination_from_config(config: Mapping[str, Any]) -> Destination:
    """A destination from its configuration mapping; ``InvalidConfig`` names the bad field.

    ``{"name": "pacs", "type": "dicom", "host": ..., "port": ..., "called_aet": ...}`` (optional
    ``calling_aet``, ``tls``), ``{"type": "stow-rs", "url": ...}`` and ``{"type": "fhir", "url": ...}``
    (optional ``token`` or ``token_env``, ``headers``, ``verify``), ``{"type": "folder", "path": ...}``;
    all take ``name`` (default: the type), ``timeout`` and TLS files ``ca_file``, ``certfile``, ``keyfile``.
    """
    label = str(config.get("name") or config.get("type") or "?") if isinstance(config, Mapping) else "?"
    try:
        parsed = _CONFIG.validate_python(config)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
                problems.append(f"field 'type': must be one of {_TYPES}")
                continue
            loc = error["loc"][1:] if error["loc"] and error["loc"][0] in _TYPES.split(", ") else error["loc"]
            problems.append(f"field '{'.'.join(str(p) for p in loc)}': {error['msg']}")
        raise InvalidConfig(f"destination '{label}': {'; '.join(problems)}") from exc
    name = parsed.name or parsed.type
    if isinstance(parsed, DicomConfig):
        tls = parsed.tls_context(name) if parsed.tls else None
        aets = parsed.called_aet.strip(), parsed.calling_aet.strip()
        return DicomStoreDestination(parsed.host, parsed.port, *aets, parsed.timeout, tls=tls, name=name)
    if isinstance(parsed, StowRsConfig):
        return StowRsDestination(parsed.url, **parsed.http_options(name))
    if isinstance(parsed, FhirConfig):
        return FhirDestination(parsed.url, **parsed.http_options(name))
    return FolderDestination(parsed.path, name=name)
