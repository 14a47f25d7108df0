"""Export destinations: where results (DICOM SEG/SR instances, FHIR Bundles) are sent.

Each destination has a ``name``, a ``kind`` (its type), says which items it ``accepts`` and has a
blocking :meth:`Destination.send`, called from a worker thread by the outbox, that returns a short
receipt or raises :class:`ExportFailed` saying whether a later resend may work.

This module holds what the outbox needs: the item, the failure, the interface, and the folder
destination. The network destinations are outbound doors: C-STORE in
:mod:`medserve.transport.dimse_scu`, STOW-RS and FHIR in :mod:`medserve.transport.http_destinations`,
all built from the imaging configuration by :mod:`medserve.transport.destination_config`.

Resends are expected (the outbox resends after an ambiguous failure, e.g. a timeout after the body
went out), so every destination sends stable identifiers the receiver recognises: DICOM instances
keep their SOP Instance UID (C-STORE, STOW-RS), FHIR Bundles their id (also sent as
``X-Request-ID``), and the folder destination writes to a name made of them.

Failure texts never quote response bodies (they may hold patient data): only status codes, DICOM
failure reasons and FHIR OperationOutcome issue codes.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from medserve.values.digest import sha256_file
from medserve.values.errors import InvalidInput, MedserveError
from medserve.values.files import fsync_directory

ItemKind = Literal["dicom", "fhir"]
ITEM_KINDS: tuple[str, ...] = ("dicom", "fhir")
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


def _safe(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ExportFailed(f"{what} {value!r} cannot name a file", retryable=False)
    return value


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
            source_digest = sha256_file(item.path)
            same_size = target.is_file() and target.stat().st_size == item.path.stat().st_size
            if same_size and sha256_file(target) == source_digest:
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
            fsync_directory(folder)
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
