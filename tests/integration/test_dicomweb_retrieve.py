"""QIDO-RS and WADO-RS against a real server with authentication on, through ``dicomweb-client``:
a radiograph stored over STOW-RS, its SR written by the X-ray pipeline, both found by study, series
and instance searches, retrieved as instances, metadata, frames and rendered images, and hidden from
a principal without a grant for the model."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from requests import HTTPError

from medserve.demo import dicom_studies as synthetic
from tests.conftest import RunningServer, free_port, start_server, stop_server
from tests.integration.test_access import make_token

pytestmark = pytest.mark.slow

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (medserve's TID 1500 report)


@dataclass
class Archive:
    server: RunningServer
    tokens: dict[str, str]
    radiograph: pydicom.Dataset

    def client(self, who: str) -> DICOMwebClient:
        return DICOMwebClient(
            f"http://{self.server.http_url}/dicomweb",
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
        )

    def get(self, who: str, path: str, **headers: str) -> httpx.Response:
        headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.get(f"http://{self.server.http_url}{path}", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def archive(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("dicomweb-retrieve")
    repository = root / "repository"
    repository.mkdir()
    shutil.copytree(example_repository / "chest_xray_classifier", repository / "chest_xray_classifier")
    config = {
        "pipelines": {"chest-xray": {"kind": "classification_2d", "model": "chest_xray_classifier"}},
        "routes": [{"name": "chest-xray", "pipeline": "chest-xray", "modality": ["CR", "DX"]}],
        "destinations": [{"name": "folder", "type": "folder", "path": str(root / "exports")}],
    }
    (root / "imaging.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "granted": make_token(data_dir, "granted", "service", "chest_xray_classifier"),
        "other": make_token(data_dir, "other", "service", "simple"),
    }
    env = {
        "MEDSERVE_AUTH_DISABLED": "false",
        "MEDSERVE_DICOM_PORT": str(free_port()),
        "MEDSERVE_DICOM_QUIET_TIME_S": "1",
        "MEDSERVE_IMAGING_CONFIG": str(root / "imaging.yaml"),
    }
    server = start_server(repository, root / "server.log", env=env)
    try:
        (path,) = synthetic.write_study("CR", root / "cr", seed=7, findings=["Cardiomegaly"], size=128)
        radiograph = pydicom.dcmread(path)
        archive = Archive(server, tokens, radiograph)
        archive.client("admin").store_instances([radiograph])
        _wait_done(archive, str(radiograph.SeriesInstanceUID))
        yield archive
    finally:
        stop_server(server)


def _wait_done(archive: Archive, series_uid: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        reply = archive.get("admin", f"/dicom/series/{series_uid}")
        if reply.status_code == 200:
            state = reply.json()["state"]
            if state == "done":
                return
        time.sleep(0.25)
    raise AssertionError(f"series not done (state {state!r}):\n{archive.server.output()[-3000:]}")


def _value(item: dict[str, object], tag: str) -> object:
    element = item[tag]
    assert isinstance(element, dict)
    return element["Value"]


def test_qido_rs_finds_the_study_its_series_and_the_sr(archive: Archive) -> None:
    client, ds = archive.client("admin"), archive.radiograph
    study_uid = str(ds.StudyInstanceUID)
    (study,) = client.search_for_studies(search_filters={"PatientID": str(ds.PatientID)})
    assert _value(study, "0020000D") == [study_uid]
    assert sorted(_value(study, "00080061")) == ["CR", "SR"]  # ModalitiesInStudy
    assert _value(study, "00201206") == [2] and _value(study, "00201208") == [2]
    (url,) = _value(study, "00081190")  # type: ignore[misc]
    assert str(url).endswith(f"/dicomweb/studies/{study_uid}")
    assert client.search_for_studies(search_filters={"ModalitiesInStudy": "SR"}) == [study]
    assert client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}) == []
    assert client.search_for_studies(search_filters={"StudyInstanceUID": f"1.2.3,{study_uid}"}) == [study]
    date = str(ds.get("StudyDate", ""))
    if date:
        assert client.search_for_studies(search_filters={"StudyDate": f"{date}-"}) == [study]
        assert client.search_for_studies(search_filters={"StudyDate": f"-{int(date) - 1}"}) == []
    assert client.search_for_studies(search_filters={"PatientID": "no-such-*"}) == []
    assert len(client.search_for_studies(search_filters={"PatientID": str(ds.PatientID)[:2] + "*"})) == 1

    series = client.search_for_series(study_uid)
    assert sorted(_value(s, "00080060")[0] for s in series) == ["CR", "SR"]  # type: ignore[index]
    assert len(client.search_for_series(study_uid, limit=1)) == 1
    assert len(client.search_for_series(study_uid, offset=1)) == 1
    assert client.search_for_series(study_uid, offset=2) == []
    (sr,) = client.search_for_instances(study_uid, search_filters={"SOPClassUID": SR_STORAGE})
    assert _value(sr, "00080016") == [SR_STORAGE]
    (image,) = client.search_for_instances(
        study_uid, str(ds.SeriesInstanceUID), fields=["PhotometricInterpretation"]
    )
    assert _value(image, "00280004") == [str(ds.PhotometricInterpretation)]
    assert _value(image, "00280010") == [int(ds.Rows)]


def test_wado_rs_instances_metadata_frames_and_rendered(archive: Archive) -> None:
    client, ds = archive.client("admin"), archive.radiograph
    study_uid, series_uid, sop_uid = (
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
    )
    instances = client.retrieve_study(study_uid)
    assert sorted(str(i.Modality) for i in instances) == ["CR", "SR"]
    (report,) = [i for i in instances if i.Modality == "SR"]
    assert report.SOPClassUID == SR_STORAGE and "ContentSequence" in report
    assert str(report.StudyInstanceUID) == study_uid

    same = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert np.array_equal(same.pixel_array, ds.pixel_array)

    (metadata,) = client.retrieve_series_metadata(study_uid, series_uid)
    assert _value(metadata, "00080018") == [sop_uid]
    assert "7FE00010" not in metadata
    assert len(client.retrieve_study_metadata(study_uid)) == 2

    (frame,) = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, [1])
    expected = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<"))
    assert frame == expected.tobytes()

    png = client.retrieve_instance_rendered(study_uid, series_uid, sop_uid, media_types=("image/png",))
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.size == (int(ds.Columns), int(ds.Rows))
    assert np.asarray(picture).std() > 5  # an image, not a blank
    jpeg = client.retrieve_instance_frames_rendered(
        study_uid, series_uid, sop_uid, [1], media_types=("image/jpeg",)
    )
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_bad_requests_are_named(archive: Archive) -> None:
    ds = archive.radiograph
    base = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    unknown = archive.get("admin", "/dicomweb/studies?NoSuchAttribute=1")
    assert unknown.status_code == 400 and "NoSuchAttribute" in unknown.json()["error"]
    limit = archive.get("admin", "/dicomweb/studies?limit=-1")
    assert limit.status_code == 400 and "limit" in limit.json()["error"]
    frame = archive.get("admin", f"{base}/frames/9")
    assert frame.status_code == 400 and "frame 9" in frame.json()["error"]
    gif = archive.get("admin", f"{base}/rendered", Accept="image/gif")
    assert gif.status_code == 400 and "image/png" in gif.json()["error"]
    missing = archive.get("admin", "/dicomweb/studies/1.2.3.4/metadata")
    assert missing.status_code == 404


def test_grants_decide_what_a_principal_sees(archive: Archive) -> None:
    ds = archive.radiograph
    study_uid = str(ds.StudyInstanceUID)
    for who in ("viewer", "granted"):
        assert len(archive.client(who).search_for_instances(study_uid)) == 2, who
    other = archive.client("other")
    assert other.search_for_studies() == []
    assert other.search_for_instances(study_uid) == []
    with pytest.raises(HTTPError) as refused:
        other.retrieve_study(study_uid)
    assert refused.value.response.status_code == 404
    nobody = httpx.get(f"http://{archive.server.http_url}/dicomweb/studies", timeout=10)
    assert nobody.status_code == 401
