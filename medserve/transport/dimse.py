"""DICOM door: a Storage SCP (C-STORE and C-ECHO) over DIMSE, on pynetdicom.

The door only translates, like the HTTP door: for every C-STORE request it hands the received
instance, as a complete DICOM Part-10 file (preamble, file meta information, data set exactly as the
peer encoded it), to an ``accept`` callable and answers the peer with the DIMSE status that callable
returns. Deciding what to keep, and why to refuse, is the ingestion core's job; :func:`ingesting`
makes that callable from the imaging workflow's ``ingest`` and answers its errors through this
door's one table, :data:`STATUS_CODES`.

pynetdicom serves every association in its own thread, so ``accept`` is called from those threads
and must be thread-safe and blocking. An asyncio core bridges with
``asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)`` inside ``accept``; for the same
reason call :meth:`StorageSCP.stop` off the event loop (``await asyncio.to_thread(scp.stop)``).

Nothing here logs protected health information: log lines name the calling AE title, the peer
address, DIMSE statuses and a short hash of the SOP Instance UID, never data set contents or
exception messages (which may quote them).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, cast

from pydicom import Dataset
from pydicom import uid as dicom_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.transport import ThreadedAssociationServer

from medserve.clinical.dicom import uid_redaction
from medserve.imaging.service import StudyMismatch
from medserve.security.dicom_peers import peer_principal
from medserve.streaming.alerts import AlertNotFound
from medserve.transport.dicom_status import StoreStatus, is_warning
from medserve.transport.dimse_scu import no_delay
from medserve.transport.status_table import StatusTable
from medserve.values.access import Caller, Principal
from medserve.values.ae_title import check_ae_title
from medserve.values.errors import (
    Conflict,
    DeadlineExceeded,
    InferenceFailed,
    InvalidConfig,
    InvalidInput,
    JobNotFound,
    MedserveError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    Unsupported,
)

log = logging.getLogger(__name__)

#: ``accept(encoded, calling_aet, peer) -> DIMSE status`` or ``(status, error comment)``; called from a
#: pynetdicom thread. The comment (why the instance was refused) goes back to the sender.
AcceptStore = Callable[[bytes, str, str], "int | tuple[int, str]"]

#: Error Comment (0000,0902) is LO: at most 64 characters.
ERROR_COMMENT_MAX = 64

#: ``ingest(encoded, caller)``: store one instance durably for ``caller``, or raise ``MedserveError``.
Ingest = Callable[[bytes, Caller], Coroutine[Any, Any, object]]


#: The DIMSE door's one table: medserve's error tree to the C-STORE status answered (the nearest
#: listed class of an error wins). The DICOMweb door answers STOW-RS Failure Reasons from it too. A
#: refusal of the instance or the caller is an error status; a server that cannot store now answers
#: Out of Resources (the sender may resend later); a server fault is a Processing Failure.
STATUS_CODES: StatusTable[StoreStatus] = StatusTable(
    "DIMSE",
    {
        MedserveError: StoreStatus.PROCESSING_FAILURE,
        Unauthenticated: StoreStatus.NOT_AUTHORISED,
        PermissionDenied: StoreStatus.NOT_AUTHORISED,
        InvalidInput: StoreStatus.CANNOT_UNDERSTAND,
        StudyMismatch: StoreStatus.STUDY_INSTANCE_UID_MISMATCH,
        PayloadTooLarge: StoreStatus.CANNOT_UNDERSTAND,
        ModelNotFound: StoreStatus.CANNOT_UNDERSTAND,
        JobNotFound: StoreStatus.CANNOT_UNDERSTAND,
        AlertNotFound: StoreStatus.CANNOT_UNDERSTAND,
        Conflict: StoreStatus.CANNOT_UNDERSTAND,
        Unsupported: StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        ModelNotReady: StoreStatus.OUT_OF_RESOURCES,
        Overloaded: StoreStatus.OUT_OF_RESOURCES,
        DeadlineExceeded: StoreStatus.OUT_OF_RESOURCES,
        StoreUnavailable: StoreStatus.OUT_OF_RESOURCES,
        InvalidConfig: StoreStatus.PROCESSING_FAILURE,
        ModelLoadError: StoreStatus.PROCESSING_FAILURE,
        InferenceFailed: StoreStatus.PROCESSING_FAILURE,
    },
)


def store_status_of(error: MedserveError) -> int:
    """The C-STORE status (or STOW-RS Failure Reason) answered for ``error``."""
    return int(STATUS_CODES.of(error))


#: Transfer syntaxes accepted for every storage SOP class: uncompressed, deflated, JPEG, JPEG-LS,
#: JPEG 2000, HTJ2K and RLE. Whether the pixel data can be decoded is found out (and reported) later.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.HTJ2KLossless,
    dicom_uid.HTJ2KLosslessRPCL,
    dicom_uid.HTJ2K,
    dicom_uid.RLELossless,
)

_UNCOMPRESSED = (dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian)
_VERIFICATION = "1.2.840.10008.1.1"


def uid_hash(uid: object) -> str:
    """A short, stable pseudonym of a UID for log lines (the first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:12]


class _HandshakeInThread:
    """Stands in for the SCP's ``ssl.SSLContext``: wraps an accepted socket without the handshake.

    pynetdicom wraps each accepted socket in its one accepting thread; a handshake there would let a
    peer that connects and sends nothing (or plain DICOM) hold up every other connection. Deferred,
    the handshake happens at the association thread's first read, and a peer that stalls in it is
    dropped after the network timeout.
    """

    def __init__(self, context: ssl.SSLContext, ae: AE) -> None:
        self._context = context
        self._ae = ae

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        sock.settimeout(self._ae.network_timeout)
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


class StorageSCP:
    """A DICOM Storage SCP: Verification and every storage SOP class, handing instances to ``accept``.

    ``allowed_calling_aets`` limits which calling AE titles may associate (``None``: any; empty:
    none, a closed door), or is a function giving the titles allowed now, asked at each association
    (titles added at run time take effect without a restart); other callers are rejected during
    association negotiation and logged with their AE title and address. ``ssl_context`` (a server-side
    context) turns on DICOM TLS. Timeouts are in seconds: ``acse_timeout`` for association
    messages, ``dimse_timeout`` for DIMSE messages, ``network_timeout`` for an idle connection.
    ``maximum_pdu`` is the largest P-DATA PDU this SCP receives (0: unlimited).
    """

    def __init__(
        self,
        ae_title: str,
        accept: AcceptStore,
        *,
        host: str = "0.0.0.0",
        port: int = 11112,
        allowed_calling_aets: Collection[str] | Callable[[], Collection[str]] | None = None,
        maximum_pdu: int = 65536,
        maximum_associations: int = 10,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        transfer_syntaxes: Sequence[str] = TRANSFER_SYNTAXES,
    ) -> None:
        self.ae_title = check_ae_title(ae_title, "DICOM AE title")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidConfig(f"DICOM port must be 0 to 65535, not {port!r}")
        if maximum_pdu != 0 and maximum_pdu < 4096:
            raise InvalidConfig(f"DICOM maximum PDU size must be 0 (unlimited) or >= 4096, not {maximum_pdu}")
        if maximum_associations < 1:
            raise InvalidConfig(f"DICOM maximum associations must be >= 1, not {maximum_associations}")
        for name, value in (
            ("acse_timeout", acse_timeout),
            ("dimse_timeout", dimse_timeout),
            ("network_timeout", network_timeout),
        ):
            if value <= 0:
                raise InvalidConfig(f"DICOM {name} must be a positive number of seconds, not {value}")
        if not transfer_syntaxes:
            raise InvalidConfig("DICOM transfer syntaxes must not be empty")
        if allowed_calling_aets is None or callable(allowed_calling_aets):
            self._calling_aets: Callable[[], Collection[str]] | None = allowed_calling_aets
        else:
            fixed = frozenset(check_ae_title(t, "allowed calling AE title") for t in allowed_calling_aets)
            self._calling_aets = lambda: fixed
        self.host = host
        self._port = port
        self._accept = accept
        self._ssl_context = ssl_context
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._counts = {"received": 0, "succeeded": 0, "warnings": 0, "failed": 0, "errors": 0, "rejected": 0}

        ae = (
            AE(ae_title=self.ae_title)
            if self._calling_aets is None
            else _GatedAE(self.ae_title, self._calling_aets)
        )
        ae.maximum_pdu_size = maximum_pdu
        ae.maximum_associations = maximum_associations
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = dimse_timeout
        ae.network_timeout = network_timeout
        ae.add_supported_context(_VERIFICATION, list(_UNCOMPRESSED))
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), list(transfer_syntaxes))
        self._ae = ae

    @property
    def tls(self) -> bool:
        """Whether the SCP speaks DICOM TLS (and only TLS)."""
        return self._ssl_context is not None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening in background threads; returns at once. Raises ``OSError`` if it cannot bind."""
        with self._lock:
            if self._server is not None:
                return
            handlers: list[Any] = [
                (evt.EVT_CONN_OPEN, no_delay),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_REJECTED, self._on_rejected),
            ]
            uid_redaction.install()  # pynetdicom's and pydicom's log lines too carry no UID
            tls = None if self._ssl_context is None else _HandshakeInThread(self._ssl_context, self._ae)
            self._server = self._ae.start_server(
                (self.host, self._port), block=False, ssl_context=cast(Any, tls), evt_handlers=handlers
            )
        log.info(
            "DICOM storage SCP %s listening on %s:%d%s",
            self.ae_title,
            self.host,
            self.port,
            " (TLS)" if self._ssl_context else "",
        )

    def stop(self) -> None:
        """Abort open associations, stop listening and close the socket. Safe to call twice.

        Blocks up to about half a second; call it off the event loop in asyncio code.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        self._ae.shutdown()
        log.info("DICOM storage SCP %s stopped", self.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port once started (the real one when configured with port 0), else the configured one."""
        server = self._server
        if server is None:
            return self._port
        return int(server.server_address[1])

    @property
    def counts(self) -> dict[str, int]:
        """How many C-STORE requests were received, succeeded, warned, failed or raised, and rejections."""
        with self._lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    # -- event handlers (pynetdicom threads) ------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return int(StoreStatus.SUCCESS)

    def _on_rejected(self, event: evt.Event) -> None:
        try:
            self._count("rejected")
            requestor = event.assoc.requestor
            log.warning(
                "DICOM association from AE %r at %s:%s rejected",
                requestor.ae_title,
                requestor.address,
                requestor.port,
            )
        except Exception:  # logging must never break the association machinery
            pass

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """Answer one C-STORE request; never raises: any error becomes ``0xC000`` (cannot understand).

        Every failure status carries an Error Comment saying why, for the sender's log.
        """
        instance = "?"
        calling_aet = "?"
        stage = "reading the request"
        try:
            self._count("received")
            instance = uid_hash(getattr(event.request, "AffectedSOPInstanceUID", ""))
            requestor = event.assoc.requestor
            calling_aet = str(requestor.ae_title).strip()
            peer = f"{requestor.address}:{requestor.port}"
            stage = "encoding the file"
            encoded = self._encode(event, calling_aet)
            stage = "storing"
            answer = self._accept(encoded, calling_aet, peer)
            status, comment = answer if isinstance(answer, tuple) else (answer, "")
            if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 0xFFFF:
                log.error(
                    "C-STORE of instance %s from AE %r: the store returned %s, not a DIMSE status",
                    instance,
                    calling_aet,
                    type(status).__name__,
                )
                self._count("errors")
                return _answer(int(StoreStatus.CANNOT_UNDERSTAND), "internal error: the store gave no status")
        except Exception as exc:
            log.error(
                "C-STORE of instance %s from AE %r failed while %s: %s",
                instance,
                calling_aet,
                stage,
                type(exc).__name__,
            )
            self._count("errors")
            return _answer(int(StoreStatus.CANNOT_UNDERSTAND), f"internal error while {stage}")
        status = int(status)
        if status == 0:
            self._count("succeeded")
        elif is_warning(status):
            self._count("warnings")
        else:
            self._count("failed")
            log.info("C-STORE of instance %s from AE %r answered 0x%04X", instance, calling_aet, status)
            return _answer(status, comment or f"refused with status 0x{status:04X}")
        return status

    @staticmethod
    def _encode(event: evt.Event, calling_aet: str) -> bytes:
        """The instance as a Part-10 file: the peer's data set bytes behind new file meta information."""
        meta = event.file_meta
        if calling_aet and calling_aet != "?":
            meta.SourceApplicationEntityTitle = calling_aet
        dataset = event.encoded_dataset(include_meta=False)
        return b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), dataset))


def _answer(status: int, comment: str) -> Dataset:
    """A C-STORE response status with its Error Comment (printable ASCII, at most 64 characters)."""
    text = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch != "\\" else "?" for ch in comment)
    if len(text) > ERROR_COMMENT_MAX:
        text = text[: ERROR_COMMENT_MAX - 3] + "..."
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = text
    return answer


class _GatedAE(AE):
    """An AE whose allowed calling AE titles are asked for at each association negotiation.

    pynetdicom checks calling titles only when its list is not empty: with no title allowed the
    list holds one of 17 characters, which no A-ASSOCIATE-RQ can carry (the field has 16 bytes), so
    every association is rejected. A failure to read the titles rejects the association too.
    """

    def __init__(self, ae_title: str, titles: Callable[[], Collection[str]]) -> None:
        super().__init__(ae_title=ae_title)
        self._titles = titles

    @property
    def require_calling_aet(self) -> list[str]:
        try:
            allowed = sorted(self._titles())
        except MedserveError as exc:
            log.error("DICOM association refused: the allowed calling AE titles cannot be read: %s", exc)
            allowed = []
        return allowed or ["-" * 17]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise InvalidConfig("the allowed calling AE titles are given when the SCP is made")


def calling_ae_principals(grants: Mapping[str, Collection[str]]) -> dict[str, Principal]:
    """The principal of each allowed calling AE title: ``aet:<title>``, role service, its grants.

    ``grants`` maps a title to the models it may have inferred on; ``"*"`` among them: every model.
    """
    return {
        check_ae_title(title, "allowed calling AE title"): peer_principal(title.strip(), models)
        for title, models in grants.items()
    }


def ingesting(
    ingest: Ingest,
    loop: asyncio.AbstractEventLoop,
    timeout_s: float = 120.0,
    principals: Mapping[str, Principal] | Callable[[str], Principal | None] | None = None,
) -> AcceptStore:
    """The ``accept`` of a storage SCP that stores each instance through ``ingest``, run on ``loop``.

    The calling AE title names the principal: ``principals`` maps each allowed title to its own
    (:func:`calling_ae_principals`), or is a function giving a title's principal now; a title without
    one is refused Not Authorised (the association let it in, then it was removed); ``None``: every
    title is a service principal granted every model. The peer hears Success once the instance is
    stored, else the status :data:`STATUS_CODES` gives the error, or Out of Resources when the store
    has not answered within ``timeout_s``.
    """

    def accept(encoded: bytes, calling_aet: str, peer: str) -> int | tuple[int, str]:
        principal: Principal | None
        if principals is None:
            principal = peer_principal(calling_aet, None)
        elif callable(principals):
            try:
                principal = principals(calling_aet)
            except MedserveError as exc:
                return store_status_of(exc), str(exc)
        else:
            principal = principals.get(calling_aet)
        if principal is None:
            log.warning("C-STORE from AE %r at %s refused: the AE is not allowed", calling_aet, peer)
            return int(StoreStatus.NOT_AUTHORISED), f"calling AE title '{calling_aet}' is not allowed"
        future = asyncio.run_coroutine_threadsafe(ingest(encoded, Caller(principal, "dimse", "", peer)), loop)
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:  # the store is stalled: the sender should try again later
            future.cancel()
            return int(
                StoreStatus.OUT_OF_RESOURCES
            ), f"not stored within {timeout_s:g} s; send it again later"
        except MedserveError as exc:
            return store_status_of(exc), str(exc)
        return int(StoreStatus.SUCCESS)

    return accept
