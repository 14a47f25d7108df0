"""The outbound DIMSE door: a C-STORE and C-ECHO SCU that sends Part-10 files or data sets to a
storage SCP.

:func:`send_files` proposes one presentation context per SOP class and transfer syntax of what it
is given (uncompressed little-endian instances also offer Explicit and Implicit VR Little Endian,
so pynetdicom may convert between them), opens as many associations as the 128-context limit
needs, and reports a :class:`FileResult` for every input, in input order. Association problems
(connection refused, rejection, abort, no response) are reported per file, never raised.

Used by ``medserve dicom send`` and by :class:`DicomStoreDestination`, the PACS export destination.
Like the storage SCP, nothing here logs data set contents; log lines name SOP Instance UIDs only as
hashes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom import Dataset, FileMetaDataset
from pydicom import uid as dicom_uid
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from medserve.imaging.destinations import Destination, ExportFailed, ExportItem
from medserve.transport.dicom_status import StoreStatus, out_of_resources, status_text

log = logging.getLogger(__name__)

#: Presentation contexts one association may propose (PS3.8: context IDs are odd numbers 1-255).
MAX_CONTEXTS = 128
_VERIFICATION = "1.2.840.10008.1.1"
_LITTLE_ENDIAN_NATIVE = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
)


class Outcome(StrEnum):
    """What happened to one instance."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, with a warning status (coercion, elements discarded...)
    FAILURE = "failure"  # the SCP answered a failure status
    UNREADABLE = "unreadable"  # not a DICOM Part-10 file / data set without SOP Class or Instance UID
    NOT_ACCEPTED = "not-accepted"  # the SCP accepted no presentation context for it
    NOT_CONNECTED = "not-connected"  # no TCP connection (refused, unreachable, TLS handshake failed)
    REJECTED = "rejected"  # the association was rejected
    ABORTED = "aborted"  # the association was aborted before or while sending
    NO_RESPONSE = "no-response"  # timed out waiting for the association or C-STORE response


#: Outcomes after which sending the same instance again later may succeed.
_TRANSIENT = frozenset({Outcome.NOT_CONNECTED, Outcome.ABORTED, Outcome.NO_RESPONSE})


@dataclass(frozen=True)
class FileResult:
    """The result of sending one input: its source, SOP Instance UID, DIMSE status and a reason."""

    source: str  # the path, or "dataset #<index>"
    sop_instance_uid: str
    outcome: Outcome
    status: int | None = None  # the DIMSE status when the SCP answered
    detail: str = ""
    transient_rejection: bool = False

    @property
    def ok(self) -> bool:
        """Stored: success or warning status."""
        return self.outcome in (Outcome.SUCCESS, Outcome.WARNING)

    @property
    def retryable(self) -> bool:
        """Whether sending it again later may work (network trouble, resources, transient rejection)."""
        if self.outcome in _TRANSIENT or (self.outcome is Outcome.REJECTED and self.transient_rejection):
            return True
        return self.outcome is Outcome.FAILURE and self.status is not None and out_of_resources(self.status)

    def describe(self) -> str:
        status = f" 0x{self.status:04X}" if self.status is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.source}: {self.outcome}{status}{detail}"


@dataclass
class SendReport:
    """Per-input results of :func:`send_files`, in input order, and how many associations were used."""

    results: list[FileResult] = field(default_factory=list)
    associations: int = 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def sent(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    @property
    def warnings(self) -> int:
        return sum(1 for r in self.results if r.outcome is Outcome.WARNING)

    def summary(self) -> str:
        return (
            f"{self.sent} of {len(self.results)} stored ({self.warnings} with warnings), "
            f"{self.failed} failed, over {self.associations} association(s)"
        )


@dataclass
class _Item:
    index: int
    source: str
    payload: str | Dataset
    sop_class: str = ""
    sop_instance: str = ""
    context: tuple[str, tuple[str, ...]] = ("", ())


def _transfer_syntaxes(ts: str) -> tuple[str, ...]:
    """The transfer syntaxes to propose for an instance encoded in ``ts``, its own first."""
    if ts in _LITTLE_ENDIAN_NATIVE:
        return tuple(dict.fromkeys((ts, dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian)))
    return (ts,)


def _prepare(index: int, entry: str | os.PathLike[str] | Dataset) -> _Item | FileResult:
    """Read what is needed to choose a presentation context, or the reason it cannot be sent."""
    if isinstance(entry, Dataset):
        source = f"dataset #{index}"
        sop_class = str(entry.get("SOPClassUID", "") or "")
        sop_instance = str(entry.get("SOPInstanceUID", "") or "")
        if not sop_class or not sop_instance:
            return FileResult(source, sop_instance, Outcome.UNREADABLE, detail="no SOP Class or Instance UID")
        meta = getattr(entry, "file_meta", None)
        ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
        payload = entry
        if not ts:  # a data set built in memory: send it as Explicit VR Little Endian
            payload = copy.copy(entry)
            payload.file_meta = copy.deepcopy(meta) if meta is not None else FileMetaDataset()
            payload.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
            ts = dicom_uid.ExplicitVRLittleEndian
        item = _Item(index, source, payload, sop_class, sop_instance)
    else:
        path = Path(entry)
        source = str(path)
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_instance = str(meta.MediaStorageSOPInstanceUID)
            ts = str(meta.TransferSyntaxUID)
        except (OSError, InvalidDicomError, AttributeError, ValueError, KeyError, EOFError) as exc:
            reason = (
                "cannot be read" if isinstance(exc, OSError) else "is not a DICOM Part-10 file with file meta"
            )
            return FileResult(source, "", Outcome.UNREADABLE, detail=f"{reason} ({type(exc).__name__})")
        item = _Item(index, source, str(path), sop_class, sop_instance)
    item.context = (sop_class, _transfer_syntaxes(ts))
    return item


def no_delay(event: evt.Event) -> None:
    """Turn off Nagle's algorithm on an association's socket (an ``EVT_CONN_OPEN`` handler).

    pynetdicom writes a DIMSE message as several small PDUs; with Nagle and delayed ACKs each
    C-STORE then waits about 40 ms for the peer's acknowledgement.
    """
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _new_ae(calling_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(
    ae: AE, host: str, port: int, called_aet: str, tls: ssl.SSLContext | None
) -> tuple[Association, str, Outcome | None, bool]:
    """Open an association: ``(assoc, problem, outcome, transient)``; ``outcome`` is None when established."""
    connected = threading.Event()

    def opened(event: evt.Event) -> None:
        connected.set()
        no_delay(event)

    handlers: list[Any] = [(evt.EVT_CONN_OPEN, opened)]
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls_args, evt_handlers=handlers)
    if assoc.is_established:
        return assoc, "", None, False
    where = f"{called_aet}@{host}:{port}"
    reply = assoc.acceptor.primitive
    if assoc.is_rejected and reply is not None:
        transient = reply.result == 0x02
        problem = (
            f"association rejected by {where} ({reply.result_str}, {reply.source_str}: {reply.reason_str})"
        )
        return assoc, problem, Outcome.REJECTED, transient
    if reply is not None and reply.result == 0x00:
        return (
            assoc,
            f"{where} accepted none of the proposed presentation contexts",
            Outcome.NOT_ACCEPTED,
            False,
        )
    if not connected.is_set():
        return assoc, f"could not connect to {where}", Outcome.NOT_CONNECTED, True
    if assoc.is_aborted and reply is None:
        return assoc, f"no answer to the association request from {where}", Outcome.NO_RESPONSE, True
    return assoc, f"association with {where} aborted during negotiation", Outcome.ABORTED, True


def _store(assoc: Association, item: _Item) -> FileResult:
    """Send one instance over an established association."""
    result = (item.source, item.sop_instance)
    if not assoc.is_established:
        return FileResult(*result, Outcome.ABORTED, detail="the association ended before it could be sent")
    try:
        reply = assoc.send_c_store(item.payload)
    except ValueError as exc:  # no accepted context, or the data set could not be encoded
        message = str(exc)
        if "presentation context" in message:
            return FileResult(*result, Outcome.NOT_ACCEPTED, detail="the SCP accepted no context for it")
        return FileResult(*result, Outcome.UNREADABLE, detail=f"cannot be encoded ({type(exc).__name__})")
    except (OSError, InvalidDicomError, AttributeError, KeyError, TypeError, EOFError) as exc:
        return FileResult(
            *result, Outcome.UNREADABLE, detail=f"cannot be read or encoded ({type(exc).__name__})"
        )
    except RuntimeError:
        return FileResult(*result, Outcome.ABORTED, detail="the association ended before it could be sent")
    if "Status" not in reply:
        detail = "no valid C-STORE response in time; the association was aborted"
        return FileResult(*result, Outcome.NO_RESPONSE, detail=detail)
    status = int(reply.Status)
    category = code_to_category(status)
    comment = str(reply.get("ErrorComment", "") or "")
    detail = status_text(status) + (f" ({comment})" if comment else "")
    if status == StoreStatus.SUCCESS:
        return FileResult(*result, Outcome.SUCCESS, status)
    if category == "Warning":
        return FileResult(*result, Outcome.WARNING, status, detail)
    return FileResult(*result, Outcome.FAILURE, status, detail)


def send_files(
    items: Iterable[str | os.PathLike[str] | Dataset],
    host: str,
    port: int,
    *,
    called_aet: str = "MEDSERVE",
    calling_aet: str = "MEDSERVE_SCU",
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> SendReport:
    """C-STORE every path or data set in ``items`` to ``called_aet`` at ``host:port``.

    ``timeout`` (seconds) bounds connecting, association negotiation and each DIMSE response.
    ``tls`` is a client-side ``ssl.SSLContext`` for DICOM TLS (``host`` is the server name checked).
    Never raises for network or peer problems: every input gets a :class:`FileResult`.
    """
    results: dict[int, FileResult] = {}
    batches: dict[tuple[str, tuple[str, ...]], list[_Item]] = {}
    count = 0
    for index, entry in enumerate(items):
        count += 1
        prepared = _prepare(index, entry)
        if isinstance(prepared, FileResult):
            results[index] = prepared
        else:
            batches.setdefault(prepared.context, []).append(prepared)

    report = SendReport()
    contexts = list(batches)
    for start in range(0, len(contexts), MAX_CONTEXTS):
        chosen = contexts[start : start + MAX_CONTEXTS]
        ae = _new_ae(calling_aet, timeout)
        for sop_class, syntaxes in chosen:
            ae.add_requested_context(sop_class, list(syntaxes))
        pending = [item for key in chosen for item in batches[key]]
        pending.sort(key=lambda item: item.index)
        assoc, problem, outcome, transient = _associate(ae, host, port, called_aet, tls)
        report.associations += 1
        if outcome is not None:
            log.warning("DICOM send of %d instance(s) failed: %s", len(pending), problem)
            for item in pending:
                results[item.index] = FileResult(
                    item.source, item.sop_instance, outcome, None, problem, transient
                )
            continue
        try:
            for item in pending:
                results[item.index] = _store(assoc, item)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
    report.results = [results[i] for i in range(count)]
    if not report.ok:
        log.info("DICOM send to %s@%s:%d: %s", called_aet, host, port, report.summary())
    return report


def echo(
    host: str,
    port: int,
    *,
    called_aet: str = "MEDSERVE",
    calling_aet: str = "MEDSERVE_SCU",
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """Whether ``called_aet`` at ``host:port`` associates and answers a C-ECHO with success."""
    ae = _new_ae(calling_aet, timeout)
    ae.add_requested_context(_VERIFICATION)
    try:
        assoc, problem, outcome, _ = _associate(ae, host, port, called_aet, tls)
        if outcome is not None:
            log.info("DICOM echo: %s", problem)
            return False
        try:
            reply = assoc.send_c_echo()
            return "Status" in reply and int(reply.Status) == StoreStatus.SUCCESS
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        ae.shutdown()


class DicomStoreDestination(Destination):
    """A PACS or other storage SCP, by C-STORE (DICOM items only). A failed send may be resent when
    :attr:`FileResult.retryable` says so: no connection, or the receiver out of resources."""

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
        if result.status == StoreStatus.DUPLICATE_SOP_INSTANCE:
            return f"C-STORE to {where}: already stored (0x0111 duplicate SOP instance)"
        detail = f"0x{result.status:04X} {result.detail}" if result.status is not None else result.detail
        raise ExportFailed(f"C-STORE to {where}: {result.outcome}: {detail}", result.retryable)
