"""Model grants hold on every door: one server, a token of each kind, every cell of the access table
in docs/SECURITY.md that grants decide (ingestion, studies, jobs and their results, metrics, the
DICOM door's calling AE titles)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts

from medserve.demo import dicom_studies as synthetic
from tests.conftest import RunningServer, free_port, start_server, stop_server
from tests.integration.test_access import make_token
from tests.integration.test_jobs import spec_text, write_table

pytestmark = pytest.mark.slow

_CHEST = "chest_xray_classifier"


@dataclass
class Granted:
    server: RunningServer
    tokens: dict[str, str]
    jobs: dict[str, str]  # model -> job id
    series_uid: str
    xray: Path
    dicom_port: int

    def get(self, path: str, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        return httpx.get(f"http://{self.server.http_url}{path}", headers=headers, timeout=30)


def _stow(granted: Granted, token: str) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + granted.xray.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "Authorization": f"Bearer {granted.tokens[token]}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    return httpx.post(
        f"http://{granted.server.http_url}/dicomweb/studies", content=body, headers=headers, timeout=60
    )


def _job(server: RunningServer, token: str, spec: str) -> str:
    reply = httpx.post(
        f"http://{server.http_url}/jobs",
        content=spec,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


@pytest.fixture(scope="module")
def granted(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Granted]:
    root = tmp_path_factory.mktemp("grants")
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "admin-simple": make_token(data_dir, "admin-simple", "admin", "simple"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "viewer-simple": make_token(data_dir, "viewer-simple", "viewer", "simple"),
        "service-simple": make_token(data_dir, "service-simple", "service", "simple"),
        "service-chest": make_token(data_dir, "service-chest", "service", _CHEST),
    }
    dicom_port = free_port()
    env = {
        "MEDSERVE_AUTH_DISABLED": "false",
        "MEDSERVE_DICOM_PORT": str(dicom_port),
        "MEDSERVE_DICOM_QUIET_TIME_S": "60",  # the series stay as received while the cells are read
        "MEDSERVE_DICOM_CALLING_AETS": f'{{"CHEST_AE": ["{_CHEST}"], "SIMPLE_AE": ["simple"]}}',
    }
    server = start_server(example_repository, root / "server.log", env=env)
    try:
        write_table(root / "table.csv", 40)
        jobs = {
            model: _job(
                server,
                tokens["admin"],
                spec_text(str(root / "table.csv"), str(root / f"{model}.csv")).replace(
                    "model: simple", f"model: {model}"
                ),
            )
            for model in ("simple", "simple_nobatch")
        }
        deadline = time.monotonic() + 120
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        while time.monotonic() < deadline:
            states = [
                httpx.get(f"http://{server.http_url}/jobs/{j}", headers=headers, timeout=10).json()["state"]
                for j in jobs.values()
            ]
            if all(s == "succeeded" for s in states):
                break
            time.sleep(0.3)
        (xray,) = synthetic.write_study("CR", root / "cr", seed=7, findings=["Cardiomegaly"], size=128)
        series_uid = str(pydicom.dcmread(xray, stop_before_pixels=True).SeriesInstanceUID)
        found = Granted(server, tokens, jobs, series_uid, xray, dicom_port)
        assert _stow(found, "service-chest").status_code == 200
        yield found
    finally:
        stop_server(server)


# -- DICOMweb STOW-RS: ingestion needs a grant for the model the routing would run --------------------
@pytest.mark.parametrize(
    ("token", "status"),
    [
        ("admin", 200),
        ("service-chest", 200),
        ("service-simple", 409),
        ("viewer", 403),
        ("viewer-simple", 403),
    ],
)
def test_stow_rs_needs_a_grant_for_the_routed_model(granted: Granted, token: str, status: int) -> None:
    reply = _stow(granted, token)
    assert reply.status_code == status, reply.text
    if status == 409:
        (failed,) = reply.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0x0124]  # Not Authorised
        assert any(_CHEST in w and "no grant" in w for w in reply.headers.get_list("warning"))


# -- studies and series: listed only for principals granted their models (or who sent them) ----------
@pytest.mark.parametrize(
    ("token", "sees"),
    [
        ("admin", True),
        ("viewer", True),
        ("service-chest", True),
        ("service-simple", False),
        ("viewer-simple", False),
    ],
)
def test_study_listing_is_filtered_by_grants(granted: Granted, token: str, sees: bool) -> None:
    listed = granted.get("/dicom/studies", token)
    assert listed.status_code == 200, listed.text
    uids = [s["series_instance_uid"] for study in listed.json()["studies"] for s in study["series"]]
    assert (granted.series_uid in uids) is sees
    one = granted.get(f"/dicom/series/{granted.series_uid}", token)
    assert one.status_code == (200 if sees else 404), one.text
    if sees:
        assert "_uploaders" not in one.json()["attributes"]
        assert "test-service-chest" in one.json()["uploaded_by"]


# -- jobs: listing, status, failures and results by the grants of the job's model ---------------------
_JOB_CELLS = [
    # token, sees the simple job, sees the simple_nobatch job, may download the simple job's results
    ("admin", True, True, True),
    ("service-simple", True, False, True),
    ("service-chest", False, False, False),
    ("viewer", True, True, False),
    ("viewer-simple", True, False, False),
]


@pytest.mark.parametrize(("token", "simple", "other", "results"), _JOB_CELLS)
def test_jobs_are_read_with_the_grants_of_their_model(
    granted: Granted, token: str, simple: bool, other: bool, results: bool
) -> None:
    listed = [j["id"] for j in granted.get("/jobs", token).json()["jobs"]]
    for model, sees in (("simple", simple), ("simple_nobatch", other)):
        job = granted.jobs[model]
        assert (job in listed) is sees
        assert granted.get(f"/jobs/{job}", token).status_code == (200 if sees else 403)
        assert granted.get(f"/jobs/{job}/failures", token).status_code == (200 if sees else 403)
    download = granted.get(f"/jobs/{granted.jobs['simple']}/results", token)
    assert download.status_code == (200 if results else 403), download.text
    if results:
        assert b'"id","OUTPUT0_0"' in download.content.split(b"\n")[0]
    else:
        assert b"OUTPUT0_0" not in download.content  # nothing of the result leaks in the refusal


@pytest.mark.parametrize(("model", "status"), [("simple", 201), ("simple_nobatch", 403)])
def test_an_admin_submits_jobs_only_on_its_granted_models(granted: Granted, model: str, status: int) -> None:
    root = granted.xray.parent.parent  # the module's folder, with the table the jobs read
    spec = spec_text(str(root / "table.csv"), str(root / f"admin-simple-{model}.csv"))
    reply = httpx.post(
        f"http://{granted.server.http_url}/jobs",
        content=spec.replace("model: simple", f"model: {model}"),
        headers={"Authorization": f"Bearer {granted.tokens['admin-simple']}"},
        timeout=60,
    )
    assert reply.status_code == status, reply.text
    if status == 403:
        assert f"no grant for model '{model}'" in reply.json()["error"]


# -- metrics: only samples of granted models ---------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "allowed"),
    [("admin", None), ("viewer", None), ("service-simple", {"simple"}), ("service-chest", {_CHEST})],
)
def test_metrics_show_only_granted_models(granted: Granted, token: str, allowed: set[str] | None) -> None:
    text = granted.get("/metrics", token).text
    models = set(re.findall(r'[{,]model="([^"]*)"', text))
    if allowed is None:
        assert {"simple", "simple_nobatch"} <= models
    else:
        assert models and models <= allowed, models


# -- DIMSE: a closed door; each allowed calling AE title is a principal with grants -------------------
def _c_store(port: int, calling: str, path: Path) -> int | None:
    """The C-STORE status, or None when the association was rejected."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = AllStoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSERVE")
    if not assoc.is_established:
        return None
    try:
        answer = assoc.send_c_store(pydicom.dcmread(path))
        return int(answer.Status) if "Status" in answer else -1
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("calling", "status"), [("CHEST_AE", 0x0000), ("SIMPLE_AE", 0x0124), ("STRANGER", None)]
)
def test_dicom_door_allows_listed_calling_aes_with_their_grants(
    granted: Granted, calling: str, status: int | None
) -> None:
    assert _c_store(granted.dicom_port, calling, granted.xray) == status
    if status is None:
        log = granted.server.output()
        assert re.search(r"association from AE 'STRANGER' at 127\.0\.0\.1:\d+ rejected", log), log[-2000:]
