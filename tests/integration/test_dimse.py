"""The DICOM Storage SCP door against a real pynetdicom SCU on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from medserve.transport.dicom_status import StoreStatus
from medserve.transport.dimse import StorageSCP, uid_hash
from medserve.values.errors import InvalidConfig

CT = Path(get_testdata_file("CT_small.dcm", download=False))
MR = Path(get_testdata_file("MR_small.dcm", download=False))


class Recorder:
    """An ``accept`` callable that records what it gets and answers a configurable status."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str, str]] = []
        self.answer: Callable[[bytes], int] = lambda _encoded: 0x0000
        self.lock = threading.Lock()

    def __call__(self, encoded: bytes, calling_aet: str, peer: str) -> int:
        with self.lock:
            self.received.append((encoded, calling_aet, peer))
        return self.answer(encoded)


@pytest.fixture()
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture()
def scp(recorder: Recorder) -> Iterator[StorageSCP]:
    server = StorageSCP(
        "MEDSERVE",
        recorder,
        host="127.0.0.1",
        port=0,
        allowed_calling_aets=["MODALITY", "OTHER"],
        acse_timeout=5,
        dimse_timeout=5,
        network_timeout=5,
    )
    server.start()
    yield server
    server.stop()


def _associate(scp: StorageSCP, calling: str = "MODALITY", called: str = "MEDSERVE") -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    return ae.associate("127.0.0.1", scp.port, ae_title=called)


def test_port_zero_binds_a_real_port_and_echo_succeeds(scp: StorageSCP) -> None:
    assert scp.running and scp.port > 0
    assoc = _associate(scp)
    assert assoc.is_established  # type: ignore[attr-defined]
    status = assoc.send_c_echo()  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0x0000


def test_c_store_hands_over_a_parseable_part10_file(scp: StorageSCP, recorder: Recorder) -> None:
    assoc = _associate(scp)
    statuses = [assoc.send_c_store(path).Status for path in (CT, MR)]  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert statuses == [0x0000, 0x0000]
    assert len(recorder.received) == 2
    for (encoded, calling, peer), path in zip(recorder.received, (CT, MR)):
        assert encoded[128:132] == b"DICM"
        assert calling == "MODALITY"
        assert peer.startswith("127.0.0.1:")
        got = pydicom.dcmread(io.BytesIO(encoded))
        original = pydicom.dcmread(path)
        assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert got.file_meta.SourceApplicationEntityTitle == "MODALITY"
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.PatientName == original.PatientName
        assert got.pixel_array.tobytes() == original.pixel_array.tobytes()
        assert [e.tag for e in got] == [e.tag for e in original]
    assert scp.counts["succeeded"] == 2


@pytest.mark.parametrize(
    "status", [StoreStatus.OUT_OF_RESOURCES, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS]
)
def test_failure_status_from_the_store_reaches_the_peer(
    scp: StorageSCP, recorder: Recorder, status: StoreStatus
) -> None:
    recorder.answer = lambda _encoded: int(status)
    assoc = _associate(scp)
    reply = assoc.send_c_store(CT)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert reply.Status == status
    assert scp.counts["failed"] == 1


def test_a_store_that_raises_gives_cannot_understand_without_phi_in_the_log(
    scp: StorageSCP, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    patient = str(pydicom.dcmread(CT).PatientName)

    def explode(_encoded: bytes) -> int:
        raise RuntimeError(f"cannot store data of {patient}")

    recorder.answer = explode
    with caplog.at_level(logging.INFO, logger="medserve.transport.dimse"):
        assoc = _associate(scp)
        first = assoc.send_c_store(CT)  # type: ignore[attr-defined]
        recorder.answer = lambda _encoded: 0x0000
        second = assoc.send_c_store(MR)  # the association survives the error
        assoc.release()  # type: ignore[attr-defined]
    assert (first.Status, second.Status) == (0xC000, 0x0000)
    text = caplog.text
    assert "RuntimeError" in text and uid_hash(pydicom.dcmread(CT).SOPInstanceUID) in text
    assert patient not in text and str(pydicom.dcmread(CT).SOPInstanceUID) not in text
    assert scp.counts["errors"] == 1


def test_a_store_returning_no_status_gives_cannot_understand(scp: StorageSCP, recorder: Recorder) -> None:
    recorder.answer = lambda _encoded: None  # type: ignore[assignment,return-value]
    assoc = _associate(scp)
    reply = assoc.send_c_store(CT)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert reply.Status == 0xC000


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_garbage_data_set_is_reported_and_the_server_keeps_running(
    scp: StorageSCP, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A valid file meta header followed by bytes that are no data set, sent as-is (chunked sending
    # does not decode the file); the store parses it, as the ingestion core does.
    original = CT.read_bytes()
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(original[: _file_meta_end(original)] + b"\xff\xfe\x00\x13garbage" * 64)

    def parse(encoded: bytes) -> int:
        pydicom.dcmread(io.BytesIO(encoded)).SOPInstanceUID  # noqa: B018 - raises on garbage
        return 0x0000

    recorder.answer = parse
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = _associate(scp)
    reply = assoc.send_c_store(garbage)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert reply.Status == 0xC000
    assert len(recorder.received) == 1 and recorder.received[0][0].endswith(b"garbage")
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    assoc = _associate(scp)
    assert assoc.send_c_store(CT).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]


def _file_meta_end(data: bytes) -> int:
    """The offset of the data set in a Part-10 file: after the (0002,0000) group length's group."""
    assert data[128:132] == b"DICM"
    length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR: value at 140
    return 144 + length


def test_calling_ae_title_not_allowed_is_rejected(scp: StorageSCP, recorder: Recorder) -> None:
    assoc = _associate(scp, calling="STRANGER")
    assert not assoc.is_established and assoc.is_rejected  # type: ignore[attr-defined]
    reply = assoc.acceptor.primitive  # type: ignore[attr-defined]
    assert reply.result == 0x01 and reply.diagnostic == 0x03  # permanent, calling AE not recognised
    assert recorder.received == []
    assert scp.counts["rejected"] == 1
    ok = _associate(scp, calling="OTHER")
    assert ok.is_established  # type: ignore[attr-defined]
    ok.release()  # type: ignore[attr-defined]


def test_any_calling_ae_title_when_none_configured(recorder: Recorder) -> None:
    with StorageSCP("MEDSERVE", recorder, host="127.0.0.1", port=0) as server:
        assoc = _associate(server, calling="ANYONE")
        assert assoc.is_established  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    assert not server.running


def test_stop_is_idempotent_and_frees_the_port(recorder: Recorder) -> None:
    server = StorageSCP("MEDSERVE", recorder, host="127.0.0.1", port=0)
    server.start()
    port = server.port
    server.stop()
    server.stop()
    again = StorageSCP("MEDSERVE", recorder, host="127.0.0.1", port=port)
    again.start()
    assert again.port == port
    again.stop()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ae_title": ""}, "AE title"),
        ({"ae_title": "A" * 17}, "AE title"),
        ({"ae_title": "BAD\\AE"}, "backslash"),
        ({"port": 70000}, "port"),
        ({"maximum_pdu": 100}, "PDU"),
        ({"dimse_timeout": 0}, "dimse_timeout"),
        ({"allowed_calling_aets": ["OK", "X" * 20]}, "allowed calling AE title"),
    ],
)
def test_bad_settings_are_refused(recorder: Recorder, kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"ae_title": "MEDSERVE", **kwargs}
    title = arguments.pop("ae_title")
    with pytest.raises(InvalidConfig, match=field):
        StorageSCP(title, recorder, **arguments)  # type: ignore[arg-type]
