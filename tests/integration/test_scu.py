"""The C-STORE / C-ECHO SCU against pynetdicom SCPs started in the test, on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from medserve.security.devcerts import make_dev_certificates
from medserve.transport.dimse import StorageSCP
from medserve.transport.dimse_scu import MAX_CONTEXTS, Outcome, echo, send_files

CT = Path(get_testdata_file("CT_small.dcm", download=False))
MR = Path(get_testdata_file("MR_small.dcm", download=False))
MR_RLE = Path(get_testdata_file("MR_small_RLE.dcm", download=False))

Handler = Callable[[Any], int]


class Scp:
    """A plain pynetdicom storage SCP: records SOP Instance UIDs and answers ``status_for(uid)``."""

    def __init__(
        self,
        *,
        sop_classes: Sequence[str] | None = None,
        transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        require_calling_aet: Sequence[str] = (),
    ) -> None:
        self.received: list[str] = []
        self.associations = 0
        self.status_for: Callable[[str], int] = lambda _uid: 0x0000
        ae = AE(ae_title="TESTSCP")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.require_calling_aet = list(require_calling_aet)
        ae.add_supported_context(Verification)
        classes = sop_classes or [cx.abstract_syntax for cx in AllStoragePresentationContexts]
        for sop_class in classes:
            ae.add_supported_context(sop_class, list(transfer_syntaxes))
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.ae = ae
        self.port = int(self.server.server_address[1])

    def _accepted(self, event: Any) -> None:
        self.associations += 1

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append(uid)
        return self.status_for(uid)

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture()
def scp() -> Iterator[Scp]:
    server = Scp()
    yield server
    server.stop()


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_send_files_stores_every_file_over_one_association(scp: Scp) -> None:
    report = send_files([CT, str(MR), MR_RLE], "127.0.0.1", scp.port, called_aet="TESTSCP", timeout=5)
    # MR_RLE's transfer syntax is not supported by this SCP: refused per file, the others stored
    assert [r.outcome for r in report.results] == [Outcome.SUCCESS, Outcome.SUCCESS, Outcome.NOT_ACCEPTED]
    assert [r.status for r in report.results[:2]] == [0x0000, 0x0000]
    assert [r.sop_instance_uid for r in report.results] == [_uid(CT), _uid(MR), _uid(MR_RLE)]
    assert scp.received == [_uid(CT), _uid(MR)]
    assert report.associations == 1 and scp.associations == 1
    assert (report.sent, report.failed, report.ok) == (2, 1, False)
    assert not report.results[2].retryable
    assert "2 of 3 stored" in report.summary()


def test_compressed_and_uncompressed_of_one_sop_class_use_separate_contexts() -> None:
    server = Scp(transfer_syntaxes=(ExplicitVRLittleEndian, RLELossless))
    try:
        report = send_files([MR, MR_RLE], "127.0.0.1", server.port, called_aet="TESTSCP", timeout=5)
    finally:
        server.stop()
    assert report.ok, [r.describe() for r in report.results]
    assert server.received == [_uid(MR), _uid(MR_RLE)]


def test_statuses_are_reported_per_file() -> None:
    answers = iter([0xB000, 0xA700, 0xC001])  # in sending order (MR and MR_RLE share their UID)
    server = Scp(transfer_syntaxes=(ExplicitVRLittleEndian, RLELossless))
    server.status_for = lambda _uid: next(answers)
    try:
        report = send_files([CT, MR, MR_RLE], "127.0.0.1", server.port, called_aet="TESTSCP", timeout=5)
    finally:
        server.stop()
    warning, resources, understand = report.results
    assert (warning.outcome, warning.status, warning.ok) == (Outcome.WARNING, 0xB000, True)
    assert "Coercion" in warning.detail
    assert (resources.outcome, resources.status, resources.retryable) == (Outcome.FAILURE, 0xA700, True)
    assert "Out of Resources" in resources.detail
    assert (understand.outcome, understand.status, understand.retryable) == (Outcome.FAILURE, 0xC001, False)
    assert report.warnings == 1 and report.failed == 2


def test_unreadable_inputs_are_reported_and_the_rest_is_sent(scp: Scp, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    missing = tmp_path / "missing.dcm"
    no_uids = Dataset()
    report = send_files([text, CT, missing, no_uids], "127.0.0.1", scp.port, called_aet="TESTSCP")
    outcomes = [r.outcome for r in report.results]
    assert outcomes == [Outcome.UNREADABLE, Outcome.SUCCESS, Outcome.UNREADABLE, Outcome.UNREADABLE]
    assert "cannot be read" in report.results[2].detail
    assert report.results[3].source == "dataset #3"
    assert scp.received == [_uid(CT)]


def test_in_memory_datasets_are_sent_without_changing_them(scp: Scp) -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "TEST"
    report = send_files([ds], "127.0.0.1", scp.port, called_aet="TESTSCP")
    assert report.ok and scp.received == [ds.SOPInstanceUID]
    assert not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta


def test_more_than_128_contexts_are_split_over_associations(scp: Scp) -> None:
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][: MAX_CONTEXTS + 5]
    datasets = []
    for sop_class in classes:
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        datasets.append(ds)
    report = send_files(datasets, "127.0.0.1", scp.port, called_aet="TESTSCP", timeout=10)
    assert report.ok, [r.describe() for r in report.results if not r.ok][:3]
    assert report.associations == 2 and scp.associations == 2
    assert sorted(scp.received) == sorted(str(ds.SOPInstanceUID) for ds in datasets)


def test_connection_refused_is_reported_for_every_file() -> None:
    started = time.monotonic()
    report = send_files([CT, MR], "127.0.0.1", _closed_port(), timeout=5)
    assert time.monotonic() - started < 5
    assert [r.outcome for r in report.results] == [Outcome.NOT_CONNECTED] * 2
    assert all(r.retryable and "could not connect" in r.detail for r in report.results)
    assert not report.ok


def test_association_rejection_is_reported_clearly() -> None:
    server = Scp(require_calling_aet=["FRIEND"])
    try:
        report = send_files([CT], "127.0.0.1", server.port, called_aet="TESTSCP", calling_aet="STRANGER")
        assert echo("127.0.0.1", server.port, called_aet="TESTSCP", calling_aet="FRIEND")
    finally:
        server.stop()
    result = report.results[0]
    assert result.outcome is Outcome.REJECTED and not result.retryable
    assert "Rejected Permanent" in result.detail and "Calling AE title not recognised" in result.detail


def test_no_response_in_time_is_retryable() -> None:
    release = threading.Event()
    server = Scp()
    server.status_for = lambda _uid: 0x0000 if release.wait(5) else 0x0000
    try:
        report = send_files([CT], "127.0.0.1", server.port, called_aet="TESTSCP", timeout=1)
    finally:
        release.set()
        server.stop()
    result = report.results[0]
    assert result.outcome is Outcome.NO_RESPONSE and result.retryable


def test_echo(scp: Scp) -> None:
    assert echo("127.0.0.1", scp.port, called_aet="TESTSCP")
    assert not echo("127.0.0.1", _closed_port(), called_aet="TESTSCP", timeout=2)


def test_tls_send_and_echo_to_the_storage_scp(tmp_path: Path) -> None:
    certs = make_dev_certificates(tmp_path, ["localhost"], ["scu"])
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs.server_cert, certs.server_key)
    client_context = ssl.create_default_context(cafile=str(certs.ca_cert))
    received: list[bytes] = []

    def accept(encoded: bytes, _calling: str, _peer: str) -> int:
        received.append(encoded)
        return 0x0000

    with StorageSCP("MEDSERVE", accept, host="127.0.0.1", port=0, ssl_context=server_context) as scp:
        assert echo("localhost", scp.port, tls=client_context)
        report = send_files([CT], "localhost", scp.port, tls=client_context)
        plain = send_files([CT], "127.0.0.1", scp.port, timeout=2)
    assert report.ok and len(received) == 1
    assert not plain.ok and plain.results[0].retryable
