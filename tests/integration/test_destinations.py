"""Export destinations against real receivers on 127.0.0.1: a storage SCP and a small HTTP server."""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medserve.imaging.destinations import ExportFailed, ExportItem, FolderDestination
from medserve.transport.destination_config import destination_from_config
from medserve.transport.dimse import StorageSCP
from medserve.transport.dimse_scu import DicomStoreDestination
from medserve.transport.http_destinations import FhirDestination, StowRsDestination
from medserve.values.errors import InvalidConfig, InvalidInput

CT = Path(get_testdata_file("CT_small.dcm", download=False))
CT_UID = str(pydicom.dcmread(CT, stop_before_pixels=True).SOPInstanceUID)
STUDY = str(pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID)
BUNDLE_ID = "b7e1c2d4-0001"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dicom_item(path: Path = CT, uid: str = CT_UID) -> ExportItem:
    return ExportItem(kind="dicom", path=path, uid=uid, study_instance_uid=STUDY)


@pytest.fixture()
def bundle(tmp_path: Path) -> ExportItem:
    path = tmp_path / "bundle.json"
    entry = {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST"}}
    payload = {"resourceType": "Bundle", "id": BUNDLE_ID, "type": "transaction", "entry": [entry]}
    path.write_text(json.dumps(payload))
    return ExportItem(kind="fhir", path=path, uid=BUNDLE_ID, study_instance_uid=STUDY)


# --- a recording HTTP server -------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    replies: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, headers, content = state.replies.pop(0) if state.replies else (200, {}, b"")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dicomweb"
    yield state
    server.shutdown()
    server.server_close()


def _dicom_json(reasons: list[int]) -> bytes:
    failed = [
        {"00081155": {"vr": "UI", "Value": [CT_UID]}, "00081197": {"vr": "US", "Value": [r]}} for r in reasons
    ]
    return json.dumps({"00081198": {"vr": "SQ", "Value": failed}}).encode()


# --- C-STORE -----------------------------------------------------------------------------------


@pytest.fixture()
def pacs() -> Iterator[tuple[StorageSCP, list[int]]]:
    answers: list[int] = []
    received: list[bytes] = []

    def accept(encoded: bytes, _calling: str, _peer: str) -> int:
        received.append(encoded)
        return answers.pop(0) if answers else 0x0000

    scp = StorageSCP("PACS", accept, host="127.0.0.1", port=0, allowed_calling_aets=["MEDSERVE"])
    scp.start()
    scp.received = received  # type: ignore[attr-defined]
    yield scp, answers
    scp.stop()


def test_dicom_store_destination_sends_by_c_store(
    pacs: tuple[StorageSCP, list[int]], bundle: ExportItem
) -> None:
    scp, _ = pacs
    destination = DicomStoreDestination("127.0.0.1", scp.port, "PACS", "MEDSERVE", 5, name="pacs")
    assert destination.accepts("dicom") and not destination.accepts("fhir")
    receipt = destination.send(dicom_item())
    assert "0x0000" in receipt and "PACS@127.0.0.1" in receipt
    received = scp.received  # type: ignore[attr-defined]
    assert len(received) == 1 and pydicom.dcmread(CT).SOPInstanceUID in received[0].decode("latin-1")
    assert destination.send(bundle).startswith("skipped")


@pytest.mark.parametrize(
    ("status", "retryable"), [(0xA700, True), (0xC000, False), (0xA900, False), (0x0122, False)]
)
def test_dicom_store_failure_statuses(
    pacs: tuple[StorageSCP, list[int]], status: int, retryable: bool
) -> None:
    scp, answers = pacs
    answers.append(status)
    destination = DicomStoreDestination("127.0.0.1", scp.port, "PACS", "MEDSERVE", 5)
    with pytest.raises(ExportFailed, match=f"0x{status:04X}") as caught:
        destination.send(dicom_item())
    assert caught.value.retryable is retryable


def test_dicom_store_duplicate_is_a_success(pacs: tuple[StorageSCP, list[int]]) -> None:
    scp, answers = pacs
    answers.append(0x0111)
    destination = DicomStoreDestination("127.0.0.1", scp.port, "PACS", "MEDSERVE", 5)
    assert "already stored" in destination.send(dicom_item())


def test_dicom_store_unreachable_or_rejected(pacs: tuple[StorageSCP, list[int]]) -> None:
    scp, _ = pacs
    with pytest.raises(ExportFailed, match="not-connected") as refused:
        DicomStoreDestination("127.0.0.1", _closed_port(), "PACS", "MEDSERVE", 5).send(dicom_item())
    assert refused.value.retryable
    with pytest.raises(ExportFailed, match="rejected") as rejected:
        DicomStoreDestination("127.0.0.1", scp.port, "PACS", "STRANGER", 5).send(dicom_item())
    assert not rejected.value.retryable


def test_dicom_store_refuses_a_file_with_another_instance(pacs: tuple[StorageSCP, list[int]]) -> None:
    scp, _ = pacs
    destination = DicomStoreDestination("127.0.0.1", scp.port, "PACS", "MEDSERVE", 5)
    with pytest.raises(ExportFailed, match="another SOP instance") as caught:
        destination.send(dicom_item(uid="1.2.3.4"))
    assert not caught.value.retryable


# --- STOW-RS -----------------------------------------------------------------------------------


def test_stow_rs_posts_a_multipart_related_body(receiver: Receiver) -> None:
    destination = StowRsDestination(
        receiver.url + "/", token="s3cret", headers={"X-Site": "ward-7"}, timeout=5
    )
    assert destination.accepts("dicom") and not destination.accepts("fhir")
    assert "HTTP 200" in destination.send(dicom_item())
    request = receiver.requests[0]
    assert request.path == "/dicomweb/studies"
    assert request.headers["authorization"] == "Bearer s3cret" and request.headers["x-site"] == "ward-7"
    assert request.headers["accept"] == "application/dicom+json"
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/related;") and 'type="application/dicom"' in content_type
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert len(parts) == 1 and parts[0].get_content_type() == "application/dicom"
    assert parts[0].get_payload(decode=True) == CT.read_bytes()
    destination.close()


@pytest.mark.parametrize(
    ("status", "body", "retryable", "message"),
    [
        (202, _dicom_json([0xC000]), False, "0xC000"),
        (202, _dicom_json([0xA700]), True, "0xA700"),
        (409, _dicom_json([0xA900]), False, "0xA900"),
        (409, b"", False, "HTTP 409"),
        (400, b"", False, "HTTP 400"),
        (401, b"", False, "HTTP 401"),
        (429, b"", True, "HTTP 429"),
        (503, b"", True, "HTTP 503"),
    ],
)
def test_stow_rs_status_mapping(
    receiver: Receiver, status: int, body: bytes, retryable: bool, message: str
) -> None:
    receiver.replies.append((status, {"Content-Type": "application/dicom+json", "Retry-After": "7"}, body))
    with pytest.raises(ExportFailed, match=message) as caught:
        StowRsDestination(receiver.url, timeout=5).send(dicom_item())
    assert caught.value.retryable is retryable
    if status in (429, 503):
        assert caught.value.retry_after == 7.0


def test_stow_rs_accepts_202_warnings_and_duplicates(receiver: Receiver) -> None:
    destination = StowRsDestination(receiver.url, timeout=5)
    receiver.replies.append((202, {"Content-Type": "application/dicom+json"}, b"{}"))
    assert "with warnings" in destination.send(dicom_item())
    receiver.replies.append((409, {"Content-Type": "application/dicom+json"}, _dicom_json([0x0111])))
    assert "already stored" in destination.send(dicom_item())


def test_stow_rs_connection_refused_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(ExportFailed, match="STOW-RS") as caught:
        StowRsDestination(f"http://127.0.0.1:{_closed_port()}/dicomweb", timeout=5).send(dicom_item())
    assert caught.value.retryable


def test_stow_rs_refuses_a_non_dicom_file(receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "not.dcm"
    path.write_bytes(b"x" * 300)
    with pytest.raises(ExportFailed, match="not a DICOM Part-10 file") as caught:
        StowRsDestination(receiver.url).send(dicom_item(path))
    assert not caught.value.retryable and receiver.requests == []


# --- FHIR --------------------------------------------------------------------------------------


def test_fhir_posts_the_bundle(receiver: Receiver, bundle: ExportItem) -> None:
    reply = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "201"}}],
    }
    receiver.replies.append((200, {"Content-Type": "application/fhir+json"}, json.dumps(reply).encode()))
    destination = FhirDestination(receiver.url.replace("dicomweb", "fhir"), token="t0ken", timeout=5)
    assert destination.accepts("fhir") and not destination.accepts("dicom")
    receipt = destination.send(bundle)
    assert "HTTP 200" in receipt and BUNDLE_ID in receipt
    request = receiver.requests[0]
    assert request.path == "/fhir"
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["x-request-id"] == BUNDLE_ID
    assert request.body == bundle.path.read_bytes()
    assert destination.send(dicom_item()).startswith("skipped")


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (404, False), (422, False), (408, True), (429, True), (500, True), (503, True)],
)
def test_fhir_status_mapping(receiver: Receiver, bundle: ExportItem, status: int, retryable: bool) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Patient Jane Doe: bad birthDate"}],
    }
    receiver.replies.append((status, {"Content-Type": "application/fhir+json"}, json.dumps(outcome).encode()))
    with pytest.raises(ExportFailed, match=f"HTTP {status}") as caught:
        FhirDestination(receiver.url, timeout=5).send(bundle)
    assert caught.value.retryable is retryable
    assert "error/invalid" in str(caught.value) and "Jane" not in str(caught.value)


def test_fhir_batch_entry_failures(receiver: Receiver, bundle: ExportItem) -> None:
    entries = [{"response": {"status": "201 Created"}}, {"response": {"status": "503"}}]
    reply = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
    receiver.replies.append((200, {}, json.dumps(reply).encode()))
    with pytest.raises(ExportFailed, match="1 of 2 entries failed") as caught:
        FhirDestination(receiver.url).send(bundle)
    assert caught.value.retryable


def test_fhir_connection_refused_and_bad_bundles(bundle: ExportItem, tmp_path: Path) -> None:
    with pytest.raises(ExportFailed) as refused:
        FhirDestination(f"http://127.0.0.1:{_closed_port()}/fhir", timeout=5).send(bundle)
    assert refused.value.retryable
    for content, message in (
        (b"{not json", "not JSON"),
        (b'{"resourceType": "Patient"}', "not a FHIR Bundle"),
    ):
        path = tmp_path / "bad.json"
        path.write_bytes(content)
        item = ExportItem(kind="fhir", path=path, uid=BUNDLE_ID, study_instance_uid=STUDY)
        with pytest.raises(ExportFailed, match=message) as caught:
            FhirDestination("http://127.0.0.1:1/fhir").send(item)
        assert not caught.value.retryable


# --- folder ------------------------------------------------------------------------------------


def test_folder_writes_atomically_and_idempotently(tmp_path: Path, bundle: ExportItem) -> None:
    root = tmp_path / "exports"
    destination = FolderDestination(root)
    assert destination.accepts("dicom") and destination.accepts("fhir")
    assert destination.send(dicom_item()).startswith("written")
    target = root / STUDY / "dicom" / f"{CT_UID}.dcm"
    assert target.read_bytes() == CT.read_bytes()
    assert destination.send(dicom_item()).startswith("already in folder")
    destination.send(bundle)
    assert (root / STUDY / "fhir" / f"{BUNDLE_ID}.json").read_bytes() == bundle.path.read_bytes()
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(CT.read_bytes()[:-1] + b"\x01")
    assert destination.send(dicom_item(changed)).startswith("written")
    assert target.read_bytes() == changed.read_bytes()
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_folder_failure_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = FolderDestination(tmp_path)
    destination.send(dicom_item())
    target = tmp_path / STUDY / "dicom" / f"{CT_UID}.dcm"
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(b"new content")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ExportFailed, match="No space left") as caught:
        destination.send(dicom_item(changed))
    assert caught.value.retryable
    assert target.read_bytes() == CT.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_folder_refuses_identifiers_that_are_not_file_names(tmp_path: Path) -> None:
    destination = FolderDestination(tmp_path / "exports")
    for study, uid in (("../../etc", CT_UID), (STUDY, "../x"), (STUDY, "a/b")):
        item = ExportItem(kind="dicom", path=CT, uid=uid, study_instance_uid=study)
        with pytest.raises(ExportFailed, match="cannot name a file") as caught:
            destination.send(item)
        assert not caught.value.retryable
    assert not (tmp_path / "exports").exists()


def test_missing_file_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(ExportFailed, match="does not exist") as caught:
        FolderDestination(tmp_path).send(dicom_item(tmp_path / "gone.dcm"))
    assert not caught.value.retryable


def test_export_item_validation() -> None:
    with pytest.raises(InvalidInput, match="kind"):
        ExportItem(kind="pdf", path=CT, uid="1", study_instance_uid=STUDY)
    with pytest.raises(InvalidInput, match="identifier"):
        ExportItem(kind="dicom", path=CT, uid="", study_instance_uid=STUDY)
    item = ExportItem(kind="dicom", path=str(CT), uid=CT_UID, study_instance_uid=STUDY)  # type: ignore[arg-type]
    assert item.path == CT and item.sop_instance_uid == CT_UID and item.bundle_id == ""


# --- configuration -----------------------------------------------------------------------------


def test_destinations_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pacs = destination_from_config(
        {"name": "pacs", "type": "dicom", "host": "pacs.example", "port": 104, "called_aet": "PACS"}
    )
    assert isinstance(pacs, DicomStoreDestination)
    assert (pacs.name, pacs.kind, pacs.port, pacs.called_aet, pacs.calling_aet) == (
        "pacs",
        "dicom",
        104,
        "PACS",
        "MEDSERVE",
    )
    monkeypatch.setenv("STOW_TOKEN", "from-env")
    stow = destination_from_config(
        {"type": "stow-rs", "url": "https://dicomweb.example/rs", "token_env": "STOW_TOKEN"}
    )
    assert (
        isinstance(stow, StowRsDestination)
        and stow.name == "stow-rs"
        and stow.url == "https://dicomweb.example/rs"
    )
    assert "from-env" not in repr(stow)
    fhir = destination_from_config(
        {"name": "ehr", "type": "fhir", "url": "http://fhir.example/R4", "timeout": 5}
    )
    assert isinstance(fhir, FhirDestination) and fhir.kind == "fhir"
    folder = destination_from_config({"type": "folder", "path": str(tmp_path)})
    assert isinstance(folder, FolderDestination) and folder.path == tmp_path


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"name": "pacs", "type": "dicom", "host": "h", "port": "x", "called_aet": "P"},
            "'pacs': field 'port'",
        ),
        ({"type": "dicom", "host": "h", "port": 70000, "called_aet": "P"}, "field 'port'"),
        (
            {"type": "dicom", "host": "h", "port": 104, "called_aet": "WAY_TOO_LONG_AE_TITLE"},
            "field 'called_aet'",
        ),
        ({"type": "dicom", "host": "h", "port": 104}, "field 'called_aet'"),
        ({"type": "dicom", "hots": "h", "port": 104, "called_aet": "P"}, "field 'hots'"),
        ({"type": "stow-rs", "url": "ftp://x"}, "field 'url'"),
        ({"type": "fhir"}, "field 'url'"),
        (
            {"type": "fhir", "url": "http://x", "token_env": "MEDSERVE_TEST_UNSET_VARIABLE"},
            "field 'token_env'",
        ),
        ({"type": "folder", "path": "/x", "timeout": 3}, "field 'timeout'"),
        ({"type": "email"}, "field 'type'"),
        ({"name": "nameless"}, "'nameless': field 'type'"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        destination_from_config(config)
