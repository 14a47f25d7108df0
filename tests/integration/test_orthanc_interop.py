"""Interoperability with a real PACS: Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``), started
on loopback with remote access off.

- medserve → Orthanc over DIMSE (C-STORE) and over DICOMweb STOW-RS: a CT study sent to medserve gives
  a DICOM SEG and a Comprehensive 3D SR that each Orthanc stores, parses and indexes under the source
  study;
- Orthanc → medserve: an instance uploaded to Orthanc is pushed to medserve by Orthanc's own C-STORE
  SCU (``/modalities/.../store``); medserve stores it as sent by the principal ``aet:ORTHANC``.

Skipped, with the reason, where Orthanc is not installed (``scripts/system_packages.sh`` installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from medserve.demo import dicom_studies as synthetic
from tests.conftest import RunningServer, free_port, start_server, stop_server

pytestmark = pytest.mark.slow

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
    pytest.skip(
        "Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb)",
        allow_module_level=True,
    )

IMAGING_MODELS = ("ct_lesion_segmentation", "chest_xray_classifier")


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        reply = httpx.get(self.url + path, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def instances_by_modality(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for instance in self.get("/instances"):
            tags = self.get(f"/instances/{instance}/simplified-tags")
            found.setdefault(str(tags.get("Modality", "")), []).append(tags)
        return found


def _start_orthanc(folder: Path, medserve_dicom_port: int) -> Orthanc:
    folder.mkdir(parents=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": f"orthanc-{folder.name}",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "HttpBindAddress": "127.0.0.1",
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"medserve": ["MEDSERVE", "127.0.0.1", medserve_dicom_port]},
    }
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=out, stderr=out)
    orthanc = Orthanc(process, http_port, dicom_port, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(orthanc.url + "/system", timeout=2).status_code == 200:
                return orthanc
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"Orthanc did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop_orthanc(orthanc: Orthanc) -> None:
    orthanc.process.terminate()
    try:
        orthanc.process.wait(30)
    except subprocess.TimeoutExpired:
        orthanc.process.kill()


@dataclass
class Site:
    server: RunningServer
    dicom_port: int
    over_dimse: Orthanc
    over_stow: Orthanc


@pytest.fixture(scope="module")
def site(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("orthanc-site")
    repository = folder / "repository"
    repository.mkdir()
    for name in IMAGING_MODELS:
        shutil.copytree(example_repository / name, repository / name)
    dicom_port = free_port()
    over_dimse = _start_orthanc(folder / "pacs-dimse", dicom_port)
    over_stow = _start_orthanc(folder / "pacs-web", dicom_port)
    config = {
        "pipelines": {"ct-lesions": {"kind": "segmentation_3d", "model": "ct_lesion_segmentation"}},
        "routes": [{"name": "ct", "pipeline": "ct-lesions", "modality": "CT", "min_instances": 8}],
        "destinations": [
            {
                "name": "pacs",
                "type": "dicom",
                "host": "127.0.0.1",
                "port": over_dimse.dicom_port,
                "called_aet": "ORTHANC",
            },
            {"name": "dicomweb", "type": "stow-rs", "url": f"{over_stow.url}/dicom-web"},
        ],
    }
    (folder / "imaging.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {
        "MEDSERVE_DICOM_PORT": str(dicom_port),
        # medserve dicom send's AE title, and Orthanc's own when it pushes to medserve
        "MEDSERVE_DICOM_CALLING_AETS": json.dumps({"MEDSERVE_SCU": ["*"], "ORTHANC": ["*"]}),
        "MEDSERVE_DICOM_QUIET_TIME_S": "1",
        "MEDSERVE_IMAGING_CONFIG": str(folder / "imaging.yaml"),
    }
    server = start_server(repository, folder / "server.log", env=env)
    try:
        yield Site(server, dicom_port, over_dimse, over_stow)
    finally:
        stop_server(server)
        _stop_orthanc(over_dimse)
        _stop_orthanc(over_stow)


def _series(server: RunningServer, series_uid: str, timeout: float = 240) -> dict[str, Any]:
    """The series once it is done and every export is sent."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = httpx.get(f"http://{server.http_url}/dicom/series/{series_uid}", timeout=10)
        if reply.status_code == 200:
            last = reply.json()
            states = [e["state"] for r in last.get("results", []) for e in r["exports"]]
            if last["state"] == "done" and states and all(s == "sent" for s in states):
                return last
            if last["state"] in ("failed", "unmatched") or "failed" in states:
                break
        time.sleep(0.5)
    raise AssertionError(f"series {series_uid} not done and exported: {last}\n{server.output()[-3000:]}")


def test_results_reach_orthanc_over_dimse_and_stow_rs(site: Site, tmp_path: Path) -> None:
    study = tmp_path / "ct"
    paths = synthetic.write_study("CT", study, seed=21)
    truth = json.loads((study / synthetic.GROUND_TRUTH_FILE).read_text())
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "medserve",
            "dicom",
            "send",
            str(study),
            "--to",
            f"127.0.0.1:{site.dicom_port}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert sent.returncode == 0 and f"{len(paths)} of {len(paths)} stored" in sent.stdout, sent.stderr

    series = _series(site.server, truth["series_instance_uid"])
    results = {r["kind"]: r for r in series["results"]}
    assert {"seg", "sr"} <= set(results)
    for result in (results["seg"], results["sr"]):
        assert {e["destination"] for e in result["exports"]} >= {"pacs", "dicomweb"}

    for orthanc in (site.over_dimse, site.over_stow):
        stored = orthanc.instances_by_modality()
        assert set(stored) == {"SEG", "SR"}, (orthanc.log, stored.keys())
        seg, sr = stored["SEG"][0], stored["SR"][0]
        # Orthanc files both under the source study, as their own series
        assert seg["StudyInstanceUID"] == sr["StudyInstanceUID"] == truth["study_instance_uid"]
        assert seg["SeriesInstanceUID"] != truth["series_instance_uid"]
        assert seg["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
        assert sr["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
        studies = orthanc.get("/studies")
        assert len(studies) == 1
        assert (
            orthanc.get(f"/studies/{studies[0]}")["MainDicomTags"]["StudyInstanceUID"]
            == truth["study_instance_uid"]
        )
    # the DICOMweb side answers QIDO-RS for what medserve stored there
    found = httpx.get(
        f"{site.over_stow.url}/dicom-web/studies/{truth['study_instance_uid']}/series", timeout=30
    ).json()
    modalities = sorted(item["00080060"]["Value"][0] for item in found)
    assert modalities == ["SEG", "SR"]


def test_orthanc_pushes_to_medserve_over_dimse(site: Site, tmp_path: Path) -> None:
    paths = synthetic.write_study("DX", tmp_path / "dx", seed=5)
    dataset = pydicom.dcmread(paths[0])
    uploaded = httpx.post(f"{site.over_dimse.url}/instances", content=paths[0].read_bytes(), timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    instance_id = uploaded.json()["ID"]

    pushed = httpx.post(
        f"{site.over_dimse.url}/modalities/medserve/store",
        json={"Resources": [instance_id], "Synchronous": True},
        timeout=120,
    )
    assert pushed.status_code == 200, pushed.text
    reply = pushed.json()
    assert reply["InstancesCount"] == 1 and reply["FailedInstancesCount"] == 0, reply

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = httpx.get(f"http://{site.server.http_url}/dicom/series/{dataset.SeriesInstanceUID}", timeout=10)
        if got.status_code == 200 and got.json()["instances"] == 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"medserve did not record the pushed instance:\n{site.server.output()[-3000:]}")
    series = got.json()
    assert series["modality"] == "DX"
    assert series["uploaded_by"] == ["aet:ORTHANC"], series
