"""Imaging end to end on a real server: DICOM in over C-STORE (``medserve dicom send``) and STOW-RS,
routing, the CT and X-ray pipelines through the core, SEG / SR / FHIR out to a folder and to a second
DICOM node, rejections visible in the status API, and exports that survive a destination outage and
a ``kill -9`` of the server without being sent twice."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
import yaml
from pynetdicom import AE, AllStoragePresentationContexts, evt

from medserve.demo import dicom_studies as synthetic
from tests.conftest import RunningServer, free_port, start_server, stop_server

pytestmark = pytest.mark.slow

IMAGING_MODELS = ("ct_lesion_segmentation", "chest_xray_classifier")


class ReceivingNode:
    """A second DICOM node (a stand-in PACS): a pynetdicom Storage SCP that keeps what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[pydicom.Dataset] = []
        self._lock = threading.Lock()
        self._ae = AE(ae_title="PACS")
        self._ae.supported_contexts = AllStoragePresentationContexts
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> None:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def sop_uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]


@pytest.fixture(scope="module")
def imaging_repository(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("imaging") / "repository"
    target.mkdir()
    for name in IMAGING_MODELS:
        shutil.copytree(example_repository / name, target / name)
    return target


def _config(path: Path, exports: Path, pacs_port: int) -> Path:
    config = {
        "pipelines": {
            "ct-lesions": {"kind": "segmentation_3d", "model": "ct_lesion_segmentation"},
            "chest-xray": {"kind": "classification_2d", "model": "chest_xray_classifier"},
        },
        "routes": [
            {"name": "ct", "pipeline": "ct-lesions", "modality": "CT", "min_instances": 8},
            {"name": "chest-xray", "pipeline": "chest-xray", "modality": ["CR", "DX"]},
        ],
        "destinations": [
            {"name": "folder", "type": "folder", "path": str(exports)},
            {"name": "pacs", "type": "dicom", "host": "127.0.0.1", "port": pacs_port, "called_aet": "PACS"},
        ],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start(repository: Path, folder: Path, pacs_port: int, dicom_port: int) -> RunningServer:
    env = {
        "MEDSERVE_DICOM_PORT": str(dicom_port),
        "MEDSERVE_DICOM_CALLING_AETS": '{"MEDSERVE_SCU": ["*"]}',  # medserve dicom send's AE title
        "MEDSERVE_DICOM_QUIET_TIME_S": "1",
        "MEDSERVE_IMAGING_CONFIG": str(_config(folder / "imaging.yaml", folder / "exports", pacs_port)),
    }
    return start_server(repository, folder / "server.log", env=env)


@pytest.fixture(scope="module")
def pacs() -> Iterator[ReceivingNode]:
    node = ReceivingNode(free_port())
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def imaging_server(
    imaging_repository: Path, pacs: ReceivingNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Path, int]]:
    folder = tmp_path_factory.mktemp("imaging-server")
    dicom_port = free_port()
    server = _start(imaging_repository, folder, pacs.port, dicom_port)
    yield server, folder, dicom_port
    stop_server(server)
    assert server.process.returncode == 0, server.output()


def _series(
    server: RunningServer, series_uid: str, states: tuple[str, ...], timeout: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = httpx.get(f"http://{server.http_url}/dicom/series/{series_uid}", timeout=10)
        if reply.status_code == 200:
            last = reply.json()
            if last["state"] in states:
                return last
        time.sleep(0.25)
    raise AssertionError(f"series did not reach {states}: {last}\n{server.output()[-3000:]}")


def _exports_done(server: RunningServer, series_uid: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    series: dict[str, Any] = {}
    while time.monotonic() < deadline:
        series = _series(server, series_uid, ("done",))
        states = [e["state"] for r in series["results"] for e in r["exports"]]
        if states and all(s == "sent" for s in states):
            return series
        time.sleep(0.25)
    raise AssertionError(f"exports not all sent: {series}")


def _send(paths: list[Path] | Path, port: int) -> subprocess.CompletedProcess[str]:
    targets = [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]
    return subprocess.run(
        [sys.executable, "-m", "medserve", "dicom", "send", *targets, "--to", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ct_study_sent_with_dicom_send_gives_seg_sr_and_fhir(
    imaging_server: tuple[RunningServer, Path, int], pacs: ReceivingNode, tmp_path: Path
) -> None:
    server, folder, dicom_port = imaging_server
    study_dir = tmp_path / "ct"
    paths = synthetic.write_study("CT", study_dir, seed=11)
    truth = json.loads((study_dir / synthetic.GROUND_TRUTH_FILE).read_text())
    sent = _send(study_dir, dicom_port)  # the folder: ground_truth.json beside the files is skipped
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"{len(paths)} of {len(paths)} stored" in sent.stdout

    series = _exports_done(server, truth["series_instance_uid"])
    assert series["instances"] == len(paths)
    assert series["pipeline"] == "ct-lesions" and series["rule"] == "ct"
    kinds = sorted(r["kind"] for r in series["results"])
    assert kinds == ["fhir", "seg", "sr"]
    assert all(r["model"] == "ct_lesion_segmentation" for r in series["results"])

    exported = folder / "exports" / truth["study_instance_uid"]
    files = sorted(p for p in exported.rglob("*") if p.is_file())
    segs = [p for p in files if p.suffix == ".dcm" and pydicom.dcmread(p).Modality == "SEG"]
    srs = [p for p in files if p.suffix == ".dcm" and pydicom.dcmread(p).Modality == "SR"]
    bundles = [p for p in files if p.suffix == ".json"]
    assert len(segs) == 1 and len(srs) == 1 and len(bundles) == 1, files

    seg = hd.seg.segread(segs[0])
    assert seg.StudyInstanceUID == truth["study_instance_uid"]
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    assert referenced == {truth["series_instance_uid"]}
    segment = seg.SegmentSequence[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ct_lesion_segmentation"
    assert algorithm.AlgorithmVersion == "1"
    assert "RESEARCH" in str(seg.SeriesDescription).upper()

    # The demonstration model finds the phantom's lesions: count and volumes close to the truth.
    expected = sorted(lesion["volume_ml"] for lesion in truth["lesions"])
    sr = hd.sr.srread(srs[0])
    assert sr.StudyInstanceUID == truth["study_instance_uid"]
    bundle = json.loads(bundles[0].read_text())
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    volumes = sorted(
        o["valueQuantity"]["value"]
        for o in observations
        if o.get("valueQuantity", {}).get("unit") in ("mL", "ml")
        and "volume" in json.dumps(o["code"]).lower()
    )
    assert len(volumes) == len(expected), (volumes, expected, series["reason"])
    for found, true in zip(volumes, expected):
        assert abs(found - true) <= 0.35 * true + 0.3, (volumes, expected)

    # The second DICOM node received the SEG and the SR, each once.
    deadline = time.monotonic() + 30
    wanted = {str(pydicom.dcmread(p).SOPInstanceUID) for p in segs + srs}
    while time.monotonic() < deadline and not wanted <= set(pacs.sop_uids()):
        time.sleep(0.2)
    assert wanted <= set(pacs.sop_uids())
    assert all(pacs.sop_uids().count(uid) == 1 for uid in wanted)


def _multipart(parts: list[bytes], boundary: str) -> bytes:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_xray_over_stow_rs_with_a_bad_part(
    imaging_server: tuple[RunningServer, Path, int], tmp_path: Path
) -> None:
    server, _, _ = imaging_server
    (path,) = synthetic.write_study("CR", tmp_path / "cr", seed=5, findings=["Cardiomegaly"], size=256)
    good = path.read_bytes()
    boundary = uuid.uuid4().hex
    body = _multipart([good, b"this is not DICOM", good[: len(good) // 2]], boundary)
    reply = httpx.post(
        f"http://{server.http_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    assert reply.status_code == 202, reply.text
    answer = reply.json()
    assert len(answer["00081199"]["Value"]) == 1
    assert len(answer["00081198"]["Value"]) == 2
    assert all(item["00081197"]["Value"] == [0xC000] for item in answer["00081198"]["Value"])
    warnings = reply.headers.get_list("warning")
    assert any("part 2" in w and "not a DICOM" in w for w in warnings), warnings
    assert any("part 3" in w and "truncated" in w for w in warnings), warnings

    ds = pydicom.dcmread(path)
    series = _exports_done(server, str(ds.SeriesInstanceUID))
    assert series["pipeline"] == "chest-xray"
    assert sorted(r["kind"] for r in series["results"]) == ["fhir", "sr"]

    other_study = httpx.post(
        f"http://{server.http_url}/dicomweb/studies/1.2.3.4",
        content=_multipart([good], boundary),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    assert other_study.status_code == 409, other_study.text
    (refused,) = other_study.json()["00081198"]["Value"]
    assert refused["00081197"]["Value"] == [0xC409]
    assert refused["00081155"]["Value"] == [str(pydicom.dcmread(path).SOPInstanceUID)]
    assert any("differs from the one in the URL" in w for w in other_study.headers.get_list("warning"))

    wrong_type = httpx.post(
        f"http://{server.http_url}/dicomweb/studies",
        content=b"{}",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert wrong_type.status_code == 415
    assert "multipart/related" in wrong_type.json()["error"]


def test_bad_series_are_rejected_or_unmatched_with_reasons(
    imaging_server: tuple[RunningServer, Path, int], tmp_path: Path
) -> None:
    server, _, dicom_port = imaging_server
    # Duplicate slice positions: two slices moved onto a third one's position.
    paths = synthetic.write_study("CT", tmp_path / "dup", seed=2)
    position = pydicom.dcmread(paths[3]).ImagePositionPatient
    for path in paths[4:6]:
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = position
        ds.save_as(path)
    assert _send(paths, dicom_port).returncode == 0
    rejected = _series(
        server, str(pydicom.dcmread(paths[0]).SeriesInstanceUID), ("rejected", "done", "failed")
    )
    assert rejected["state"] == "rejected"
    assert "duplicate" in rejected["reason"].lower()

    # Missing RescaleIntercept on a CT slice.
    paths = synthetic.write_study("CT", tmp_path / "norescale", seed=4)
    ds = pydicom.dcmread(paths[0])
    del ds.RescaleIntercept
    ds.save_as(paths[0])
    assert _send(paths, dicom_port).returncode == 0
    rejected = _series(server, str(ds.SeriesInstanceUID), ("rejected", "done", "failed"))
    assert rejected["state"] == "rejected" and "RescaleIntercept" in rejected["reason"]

    # An MR study has no route here: recorded as unmatched, with each rule's reason.
    mr = synthetic.write_study("MR", tmp_path / "mr", seed=1)
    assert _send(mr, dicom_port).returncode == 0
    unmatched = _series(server, str(pydicom.dcmread(mr[0]).SeriesInstanceUID), ("unmatched",))
    assert "rule 'ct'" in unmatched["reason"] and "MR" in unmatched["reason"]

    # A C-STORE the server cannot understand gets a failure status; the server keeps serving.
    from medserve.transport.dimse_scu import send_files

    broken = pydicom.dcmread(mr[0])
    broken.SOPInstanceUID = "1.2.3.not-a-uid"
    report = send_files([broken], "127.0.0.1", dicom_port)
    assert not report.ok and report.results[0].status == 0xC000
    assert httpx.get(f"http://{server.http_url}/v2/health/ready", timeout=5).status_code == 200

    studies = httpx.get(f"http://{server.http_url}/dicom/studies", timeout=10).json()["studies"]
    states = {s["series_instance_uid"]: s["state"] for study in studies for s in study["series"]}
    assert "rejected" in states.values() and "unmatched" in states.values()


def test_exports_wait_for_a_down_destination_and_survive_kill_9(
    imaging_repository: Path, tmp_path: Path
) -> None:
    pacs_port, dicom_port = free_port(), free_port()
    server = _start(imaging_repository, tmp_path, pacs_port, dicom_port)
    try:
        paths = synthetic.write_study("CR", tmp_path / "cr", seed=9, size=256)
        assert _send(paths, dicom_port).returncode == 0
        series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
        deadline = time.monotonic() + 120
        pending: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            series = _series(server, series_uid, ("done",))
            pending = [e for r in series["results"] for e in r["exports"] if e["destination"] == "pacs"]
            if pending and all(e["attempts"] >= 1 for e in pending):
                break
            time.sleep(0.25)
        assert pending and all(e["state"] == "pending" and e["last_error"] for e in pending), pending
        folder_states = [
            e["state"] for r in series["results"] for e in r["exports"] if e["destination"] == "folder"
        ]
        assert folder_states and all(s == "sent" for s in folder_states)
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()

    node = ReceivingNode(pacs_port)
    node.start()
    restarted = _start(imaging_repository, tmp_path, pacs_port, dicom_port)
    try:
        series = _exports_done(restarted, series_uid, timeout=120)
        assert sorted(r["kind"] for r in series["results"]) == ["fhir", "sr"]  # not processed twice
        sr_uids = [r["uid"] for r in series["results"] if r["kind"] == "sr"]
        time.sleep(1.0)
        assert node.sop_uids() == sr_uids  # sent once, after the restart
    finally:
        stop_server(restarted)
        node.stop()
