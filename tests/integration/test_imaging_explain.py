"""An imaging pipeline asked for explanations, on a real server with authentication: a chest radiograph
sent over STOW-RS gets a DICOM Parametric Map beside its SR and FHIR report, exported with them to a
folder and to a PACS (C-STORE), and the console's result viewer shows the map over the image (its PNG endpoint
with and without the overlay, refusals for a bad value and for a result that is not a map)."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
import yaml

from medserve.demo import dicom_studies as synthetic
from tests.conftest import RunningServer, free_port, start_server, stop_server
from tests.integration.test_access import make_token
from tests.integration.test_console import sign_in
from tests.integration.test_imaging_e2e import ReceivingNode

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    server: RunningServer
    exports: Path
    tokens: dict[str, str]
    pacs: ReceivingNode

    def get(self, path: str, role: str = "admin") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.get(f"http://{self.server.http_url}{path}", headers=headers, timeout=60)


@pytest.fixture(scope="module")
def setup(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("explain")
    pacs = ReceivingNode(free_port())
    pacs.start()
    repository = root / "repository"
    shutil.copytree(example_repository / "chest_xray_classifier", repository / "chest_xray_classifier")
    config = {
        "pipelines": {
            "chest-xray": {
                "kind": "classification_2d",
                "model": "chest_xray_classifier",
                # the most probable finding of each image (present or not), 4 windows + the image
                "explain": {"method": "occlusion", "findings": "top", "parameters": {"window": 112}},
            }
        },
        # US too: a cine loop's frames are classified but not explained (no map of one frame of it)
        "routes": [{"name": "xray", "pipeline": "chest-xray", "modality": ["CR", "DX", "US"]}],
        "destinations": [
            {"name": "folder", "type": "folder", "path": str(root / "exports")},
            {"name": "pacs", "type": "dicom", "host": "127.0.0.1", "port": pacs.port, "called_aet": "PACS"},
        ],
    }
    (root / "imaging.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    data_dir = root / "data"
    tokens = {"admin": make_token(data_dir, "admin", "admin")}  # STOW-RS, status and console alike
    env = {
        "MEDSERVE_AUTH_DISABLED": "false",
        "MEDSERVE_DICOM_PORT": str(free_port()),
        "MEDSERVE_DICOM_QUIET_TIME_S": "1",
        "MEDSERVE_IMAGING_CONFIG": str(root / "imaging.yaml"),
    }
    server = start_server(repository, root / "server.log", env=env)
    yield Setup(server, root / "exports", tokens, pacs)
    stop_server(server)
    pacs.stop()


def _done(setup: Setup, series_uid: str, timeout: float = 300) -> dict[str, Any]:
    """The series once processed and every export sent (polled with a generous deadline)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = setup.get(f"/dicom/series/{series_uid}")
        if reply.status_code == 200:
            last = reply.json()
            exports = [e["state"] for r in last["results"] for e in r["exports"]]
            if last["state"] == "done" and exports and all(s == "sent" for s in exports):
                return last
            if last["state"] in ("failed", "rejected", "unmatched"):
                break
        time.sleep(0.5)
    raise AssertionError(f"series not done with its exports sent: {last}\n{setup.server.output()[-3000:]}")


def test_an_explained_radiograph_gets_a_parametric_map_exported_and_shown(
    setup: Setup, tmp_path: Path
) -> None:
    (path,) = synthetic.write_study("CR", tmp_path / "cr", seed=21, findings=["Effusion"], size=256)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    stored = httpx.post(
        f"http://{setup.server.http_url}/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {setup.tokens['admin']}",
        },
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    source = pydicom.dcmread(path)
    series = _done(setup, str(source.SeriesInstanceUID))
    assert sorted(r["kind"] for r in series["results"]) == ["fhir", "pm", "sr"]
    [pm_result] = [r for r in series["results"] if r["kind"] == "pm"]
    [sr_result] = [r for r in series["results"] if r["kind"] == "sr"]

    # exported with the SR to the folder and, over C-STORE, to the PACS: a Parametric Map of the source
    assert {pm_result["uid"], sr_result["uid"]} <= set(setup.pacs.sop_uids())
    [received] = [ds for ds in setup.pacs.received if ds.SOPInstanceUID == pm_result["uid"]]
    assert received.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    exported = setup.exports / str(source.StudyInstanceUID) / "dicom" / f"{pm_result['uid']}.dcm"
    assert exported.is_file()
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(exported))
    assert pm.pixel_array.shape == (256, 256) and pm.pixel_array.dtype.kind == "f"
    derivation = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    sr = pydicom.dcmread(setup.exports / str(source.StudyInstanceUID) / "dicom" / f"{sr_result['uid']}.dcm")
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert pm_result["uid"] in evidence

    with httpx.Client(base_url=f"http://{setup.server.http_url}", timeout=60) as client:
        assert sign_in(client, setup.tokens["admin"]).status_code == 303
        page = client.get(f"/console/imaging/results/{sr_result['id']}")
        assert page.status_code == 200, page.text
        assert "Explanation maps" in page.text
        assert f"/console/imaging/results/{pm_result['id']}/map.png" in page.text
        hidden = client.get(f"/console/imaging/results/{sr_result['id']}", params={"overlay": "0"})
        assert f"/console/imaging/results/{pm_result['id']}/map.png?overlay=0" in hidden.text
        assert re.search(r'id="toggle-map"[^>]*>\s*Show the explanation map', hidden.text)

        shown = client.get(f"/console/imaging/results/{pm_result['id']}/map.png")
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
        assert shown.content.startswith(b"\x89PNG\r\n\x1a\n")
        row, column = (int(v) for v in shown.headers["x-map-peak"].split(","))
        assert 0 <= row < 256 and 0 <= column < 256
        plain = client.get(f"/console/imaging/results/{pm_result['id']}/map.png", params={"overlay": "0"})
        assert plain.status_code == 200 and plain.content != shown.content

        bad = client.get(f"/console/imaging/results/{pm_result['id']}/map.png", params={"overlay": "maybe"})
        assert bad.status_code == 400 and "overlay" in bad.text
        not_a_map = client.get(f"/console/imaging/results/{sr_result['id']}/map.png")
        assert not_a_map.status_code == 404


def _stow(setup: Setup, path: Path) -> None:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    stored = httpx.post(
        f"http://{setup.server.http_url}/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {setup.tokens['admin']}",
        },
        timeout=60,
    )
    assert stored.status_code == 200, stored.text


def test_frames_of_a_cine_loop_are_reported_without_maps(setup: Setup, tmp_path: Path) -> None:
    (path,) = synthetic.write_study("US", tmp_path / "us", seed=3, frames=3, size=(96, 128))
    _stow(setup, path)
    series = _done(setup, str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID))
    assert sorted(r["kind"] for r in series["results"]) == ["fhir", "sr"]
