"""Export destinations: where results (DICOM SEG/SR instances, FHIR Bundles) are sent.

Each destination has a ``name``, a ``kind`` (its type), says which items it ``accepts`` and has a
blocking :meth:`Destination.send`, called from a worker thread by the outbox, that returns a short
receipt or raises :class:`ExportFailed` saying whether a later resend may work.

Resends are expected (the outbox resends after an ambiguous failure, e.g. a timeout after the body
went out), so every destination sends stable identifiers the receiver recognises: DICOM instances
keep their SOP Instance UID (C-STORE, STOW-RS), FHIR Bundles their id (also sent as
``X-Request-ID``), and the folder destination writes to a name made of them.

Failure texts never quote response bodies (they may hold patient data): only status codes, DICOM
failure reasons and FHIR OperationOutcome issue codes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from medserve.clinical.dicom.scu import send_files
from medserve.values.errors import InvalidConfig, InvalidInput, MedserveError

ItemKind = Literal["dicom", "fhir"]
ITEM_KINDS: tuple[str, ...] = ("dicom", "fhir")
_DUPLICATE_INSTANCE = 0x0111
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


class ExportFailed(MedserveError):
    """A send failed; ``retryable`` says whether sending the same item later may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the receiver asked to wait (Retry-After), if any


@dataclass(frozen=True)
class ExportItem:
    """One file to send: a DICOM Part-10 file (``uid``: its SOP Instance UID) or a FHIR JSON Bundle
    (``uid``: the Bundle id), with the Study Instance UID it belongs to."""

    kind: str
    path: Path
    uid: str
    study_instance_uid: str

    def __post_init__(self) -> None:
        if self.kind not in ITEM_KINDS:
            raise InvalidInput(f"export item kind must be one of {', '.join(ITEM_KINDS)}, not {self.kind!r}")
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if not self.uid:
            raise InvalidInput("export item has no identifier (SOP Instance UID or Bundle id)")

    @property
    def sop_instance_uid(self) -> str:
        return self.uid if self.kind == "dicom" else ""

    @property
    def bundle_id(self) -> str:
        return self.uid if self.kind == "fhir" else ""


class Destination(ABC):
    """Where export items go. Subclasses set ``kind`` and ``accepted`` and implement ``_send``."""

    kind: ClassVar[str]
    accepted: ClassVar[frozenset[str]]

    def __init__(self, name: str) -> None:
        self.name = name

    def accepts(self, kind: str) -> bool:
        """Whether items of ``kind`` ("dicom" or "fhir") go to this destination."""
        return kind in self.accepted

    def send(self, item: ExportItem) -> str:
        """Send ``item`` (blocking); a short receipt, or ``ExportFailed``. Skips kinds it does not take."""
        if not self.accepts(item.kind):
            return f"skipped: {self.kind} destination '{self.name}' does not take {item.kind} items"
        if not item.path.is_file():
            raise ExportFailed(f"the file to export, {item.path}, does not exist", retryable=False)
        return self._send(item)

    @abstractmethod
    def _send(self, item: ExportItem) -> str: ...

    def close(self) -> None:
        """Release connections; the destination must not be used afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class DicomStoreDestination(Destination):
    """A PACS or other storage SCP, by C-STORE (DICOM items only)."""

    kind = "dicom"
    accepted = frozenset({"dicom"})

    def __init__(
        self,
        host: str,
        port: int,
        called_aet: str,
        calling_aet: str = "MEDSERVE",
        timeout: float = 30.0,
        *,
        tls: ssl.SSLContext | None = None,
        name: str = "dicom",
    ) -> None:
        super().__init__(name)
        self.host, self.port, self.called_aet, self.calling_aet = host, port, called_aet, calling_aet
        self.timeout = timeout
        self.tls = tls

    def _send(self, item: ExportItem) -> str:
        where = f"{self.called_aet}@{self.host}:{self.port}"
        report = send_files(
            [item.path],
            self.host,
            self.port,
            called_aet=self.called_aet,
            calling_aet=self.calling_aet,
            timeout=self.timeout,
            tls=self.tls,
        )
        result = report.results[0]
        if result.sop_instance_uid and result.sop_instance_uid != item.uid:
            raise ExportFailed(f"{item.path} holds another SOP instance than the one queued", retryable=False)
        if result.ok:
            return f"C-STORE to {where}: status 0x{result.status or 0:04X}"
        if result.status == _DUPLICATE_INSTANCE:
            return f"C-STORE to {where}: already stored (0x0111 duplicate SOP instance)"
        detail = f"0x{result.status:04X} {result.detail}" if result.status is not None else result.detail
        raise ExportFailed(f"C-STORE to {where}: {result.outcome}: {detail}", result.retryable)


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
        retryable = code in (408, 429) or code >= 500
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
        return [0xC000] if b"00081198" in response.content else []
    if isinstance(body, list):  # some servers answer a one-element array
        body = body[0] if body else {}
    failed = body.get("00081198", {}).get("Value", []) if isinstance(body, dict) else []
    reasons = []
    for entry in failed if isinstance(failed, list) else []:
        value = entry.get("00081197", {}).get("Value", [0xC000]) if isinstance(entry, dict) else [0xC000]
        reasons.append(int(value[0]) if value and isinstance(value[0], int) else 0xC000)
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
            if reasons and all(r == _DUPLICATE_INSTANCE for r in reasons):
                return f"STOW-RS HTTP {code}: already stored (duplicate SOP instance)"
            codes = ", ".join(f"0x{r:04X}" for r in reasons) or "none given"
            if reasons and all(0xA700 <= r <= 0xA7FF for r in reasons):  # out of resources
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
            retryable = all(s[:3] in ("408", "429") or s.startswith("5") for s in failed)
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


def _safe(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ExportFailed(f"{what} {value!r} cannot name a file", retryable=False)
    return value


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FolderDestination(Destination):
    """A folder: ``{path}/{study_uid}/{kind}/{uid}.dcm|.json``, written atomically, same name on resend."""

    kind = "folder"
    accepted = frozenset(ITEM_KINDS)

    def __init__(self, path: Path | str, *, name: str = "folder") -> None:
        super().__init__(name)
        self.path = Path(path)

    def _send(self, item: ExportItem) -> str:
        study = _safe(item.study_instance_uid, "Study Instance UID")
        filename = _safe(item.uid, "identifier") + (".dcm" if item.kind == "dicom" else ".json")
        folder = self.path / study / item.kind
        target = folder / filename
        relative = f"{study}/{item.kind}/{filename}"
        tmp: str | None = None
        try:
            source_digest = _digest(item.path)
            same_size = target.is_file() and target.stat().st_size == item.path.stat().st_size
            if same_size and _digest(target) == source_digest:
                return f"already in folder: {relative}"
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out, item.path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(folder)
        except OSError as exc:
            retryable = exc.errno not in (13, 1, 30)  # EACCES, EPERM, EROFS need an operator
            raise ExportFailed(
                f"writing {relative} under {self.path}: {exc.strerror or exc}", retryable
            ) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return f"written to folder: {relative}"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- configuration ---------------------------------------------------------------------------------

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
