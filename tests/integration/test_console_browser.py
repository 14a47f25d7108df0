"""The operator console in a real browser: Debian's chromium, headless, driven by selenium through
chromium-driver. One server with authentication on and something on every page (a CT study through
the imaging pipeline with an export that fails, a ward streaming over the WebSocket door with a
deteriorating bed, a job that succeeds with item failures and one that fails, stored profiles,
traffic); the browser signs in with the keyboard, visits every page, performs one action on each and
saves a screenshot of it
(``MEDSERVE_SCREENSHOTS_DIR``, e.g. ``docs/console``). Assertions are on content and behaviour, and
on keyboard reach and text contrast, never on pixels. On the same server, tokens granted some models
read the imaging pages over plain HTTP: they show what ``/dicom/studies`` shows those tokens.

Skipped with the reason when chromium, chromium-driver or selenium is missing (``.ci/run`` installs
them: ``apt-get install chromium chromium-driver``, ``pip install selenium``)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from medserve.demo import dicom_studies as synthetic
from medserve.demo.ecg import synthesize
from medserve.hardware.profile_store import ProfileStore
from medserve.hardware.profiler import profile_model
from medserve.security.tokens import TokenStore
from medserve.store.database import Database, default_url
from tests.conftest import RunningServer, free_port, start_server, stop_server
from tests.integration.test_console import sign_in
from tests.integration.test_jobs import spec_text, write_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None, reason="chromium and chromium-driver are not installed"
    ),
]
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MODELS = ("simple", "ecg_rhythm_classifier", "ct_lesion_segmentation")
WIDTH, HEIGHT = 1280, 800


class Refusing(http.server.BaseHTTPRequestHandler):
    """A FHIR server that refuses every bundle (HTTP 400): its exports fail for good."""

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"resourceType": "OperationOutcome"}')

    do_PUT = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Stack:
    server: RunningServer
    token: str
    base: str
    jobs: dict[str, str]
    ct_series: str
    data_dir: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _prepare_store(data_dir: Path, repository: Path) -> str:
    """An admin token and profiles of two models, straight into the server's store before it starts."""
    data_dir.mkdir(parents=True)
    database = Database(default_url(data_dir))
    database.migrate()
    try:
        token, _ = TokenStore(database).create("admin", None, "test-admin", timedelta(hours=2))
        store = ProfileStore(database)
        for model, sizes in (("ecg_rhythm_classifier", (1, 8)), ("ct_lesion_segmentation", (1, 2))):
            store.save(
                profile_model(
                    repository / model,
                    runtimes=["onnxruntime"],
                    batch_sizes=sizes,
                    seconds_per_point=0.3,
                    warmup=1,
                )
            )
    finally:
        database.dispose()
    return token


def _stow(stack_base: str, token: str, paths: list[Path]) -> None:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
            for p in paths
        )
        + f"--{boundary}--\r\n".encode()
    )
    answer = httpx.post(
        f"{stack_base}/dicomweb/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=120,
    )
    assert answer.status_code == 200, answer.text


def _ward(server: RunningServer, token: str) -> None:
    """Three beds over the WebSocket door: two stable, one deteriorating (NEWS2 high, an alert), with
    ECG so the rhythm model classifies windows."""
    from websockets.sync.client import connect

    rng = np.random.default_rng(3)
    ecg = {bed: synthesize("normal_sinus", rng) for bed in ("bed-1", "bed-2", "bed-3")}
    stable = {
        "respiration_rate": 16,
        "spo2": 97,
        "on_supplemental_oxygen": 0,
        "systolic_bp": 122,
        "pulse": 72,
        "consciousness": 0,
        "temperature": 36.8,
    }
    sick = {
        "respiration_rate": 27,
        "spo2": 90,
        "on_supplemental_oxygen": 1,
        "systolic_bp": 98,
        "pulse": 124,
        "consciousness": 0,
        "temperature": 38.6,
    }
    now = time.time() - 600
    with connect(
        f"ws://{server.http_url}/v2/monitor/stream", additional_headers={"Authorization": f"Bearer {token}"}
    ) as socket:
        for seq in range(6):
            for bed, vitals in (
                ("bed-1", stable),
                ("bed-2", stable),
                ("bed-3", sick if seq >= 2 else stable),
            ):
                chunk = ecg[bed][seq * 500 : (seq + 1) * 500]
                message = {
                    "sequence_id": bed,
                    "sample_seq": seq,
                    "timestamp": now + seq * 60,
                    "sequence_start": seq == 0,
                    "vitals": vitals,
                    "ecg": [round(float(v), 4) for v in np.resize(chunk, 500)],
                }
                socket.send(json.dumps(message))
                reply = json.loads(socket.recv(timeout=60))
                assert "error" not in reply, reply


@pytest.fixture(scope="module")
def stack(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("console-browser")
    repository = root / "repository"
    for name in MODELS:
        shutil.copytree(example_repository / name, repository / name)
    token = _prepare_store(root / "data", repository)
    refusing = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Refusing)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    imaging = {
        "pipelines": {"ct-lesions": {"kind": "segmentation_3d", "model": "ct_lesion_segmentation"}},
        "routes": [{"name": "ct", "pipeline": "ct-lesions", "modality": "CT", "min_instances": 8}],
        "destinations": [
            {"name": "archive", "type": "folder", "path": str(root / "exports")},
            {"name": "ehr", "type": "fhir", "url": f"http://127.0.0.1:{refusing.server_address[1]}/fhir"},
        ],
    }
    (root / "imaging.yaml").write_text(yaml.safe_dump(imaging))
    server = start_server(
        repository,
        root / "server.log",
        env={
            "MEDSERVE_AUTH_DISABLED": "false",
            "MEDSERVE_IMAGING_CONFIG": str(root / "imaging.yaml"),
            "MEDSERVE_DICOM_QUIET_TIME_S": "1",
            "MEDSERVE_JOBS_CONCURRENCY": "1",
        },
    )
    base = f"http://{server.http_url}"
    try:
        paths = synthetic.write_study("CT", root / "ct", seed=11)
        truth = json.loads((root / "ct" / synthetic.GROUND_TRUTH_FILE).read_text())
        _stow(base, token, paths)
        _ward(server, token)
        jobs: dict[str, str] = {}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
            write_table(root / "good.csv", 600, bad={5: (1, "n/a"), 99: (20, "")})
            good = spec_text(str(root / "good.csv"), str(root / "out" / "good.csv"), chunk_size=200)
            jobs["good"] = api.post(
                "/jobs", content=good.replace("workload: table", "name: nightly sums\nworkload: table")
            ).json()["id"]
            (root / "not-a-folder").write_text("a file where the sink's folder should be")
            bad = spec_text(str(root / "bad.csv"), str(root / "not-a-folder" / "out.csv"), chunk_size=200)
            write_table(root / "bad.csv", 50)
            jobs["bad"] = api.post("/jobs", content=bad).json()["id"]

            def state(job: str, wanted: str) -> bool:
                return api.get(f"/jobs/{jobs[job]}").json()["state"] == wanted

            _wait_for("the good job to succeed", lambda: state("good", "succeeded"))
            _wait_for("the bad job to fail", lambda: state("bad", "failed"))

            def exports_settled() -> bool:
                found = api.get(f"/dicom/series/{truth['series_instance_uid']}").json()
                states = [e["state"] for r in found.get("results", []) for e in r["exports"]]
                return found.get("state") == "done" and "failed" in states and "pending" not in states

            _wait_for("the CT series to be processed and exported", exports_settled, 180)
            body = {
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
                    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16},
                ]
            }
            for _ in range(40):
                assert api.post("/v2/models/simple/infer", json=body).status_code == 200
        yield Stack(server, token, base, jobs, truth["series_instance_uid"], root / "data")
    finally:
        stop_server(server)
        refusing.shutdown()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[WebDriver]:
    options = Options()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDTH},{HEIGHT}",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(120)
    driver.get(stack.base + "/console/signin")
    driver.find_element(By.ID, "token").send_keys(stack.token, Keys.ENTER)
    WebDriverWait(driver, 60).until(lambda d: d.current_url.endswith("/console"))
    yield driver
    driver.quit()


_SHOTS: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``MEDSERVE_SCREENSHOTS_DIR`` (``docs/console`` makes the documentation's pictures), else a
    temporary folder."""
    _SHOTS[:] = [Path(os.environ.get("MEDSERVE_SCREENSHOTS_DIR", "") or tmp_path_factory.mktemp("shots"))]


def screenshot(driver: WebDriver, name: str) -> None:
    folder = _SHOTS[0]
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    data = driver.get_screenshot_as_png()
    assert data.startswith(b"\x89PNG")
    (folder / f"{name}.png").write_bytes(data)


def visit(driver: WebDriver, stack: Stack, path: str) -> None:
    driver.get(stack.base + path)
    assert "/console/signin" not in driver.current_url, f"{path}: the session ended"


def text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def flash(driver: WebDriver, begins: str) -> str:
    """The message that begins with ``begins`` on the page a form's redirect leads to. A click does
    not always wait for that page, and the page before may show an older message: wait for this one,
    and on time-out give back whatever message shows, for the assertion to name."""

    def shown(d: WebDriver) -> str | None:
        try:
            found = [str(e.text) for e in d.find_elements(By.CSS_SELECTOR, "p.flash")]
        except StaleElementReferenceException:
            return None
        return next((t for t in found if t.startswith(begins)), None)

    try:
        return str(WebDriverWait(driver, 20).until(shown))
    except TimeoutException:
        return " | ".join(str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "p.flash"))


def accept_confirmation(driver: WebDriver) -> None:
    WebDriverWait(driver, 10).until(lambda d: d.switch_to.alert).accept()


def rows(driver: WebDriver, table: str) -> list[list[str]]:
    found = []
    for row in driver.find_elements(By.CSS_SELECTOR, f"{table} tbody tr"):
        cells = [str(c.text) for c in row.find_elements(By.TAG_NAME, "td")]
        if len(cells) > 1:
            found.append(cells)
    return found


# -- the tests, in the order an operator would go --------------------------------------------------


def test_sign_out_then_in_and_move_around_with_the_keyboard_alone(browser: WebDriver, stack: Stack) -> None:
    browser.get(stack.base + "/console")
    browser.find_element(By.ID, "signout").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/console/signin"))
    browser.get(stack.base + "/console")
    assert browser.current_url.endswith("/console/signin")
    active = browser.switch_to.active_element
    assert active.get_attribute("id") == "token"  # the field has the focus: type and press Enter
    active.send_keys(stack.token, Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/console"))
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    skip = browser.switch_to.active_element
    assert skip.text == "Skip to content"
    skip.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    browser.get(stack.base + "/console")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    for _ in range(6):  # skip link, then the pages in order: Overview, Models
        current = browser.switch_to.active_element
        if current.text == "Models":
            break
        current.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Models"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/console/models"))


def test_overview_shows_replicas_devices_alerts_and_errors(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console")
    WebDriverWait(browser, 30).until(lambda d: text(d, "#live-state").startswith("live"))
    assert "ready" in text(browser, ".cards")
    assert int(text(browser, "[data-live='alerts_open']")) >= 1
    replicas = {row[0]: row for row in rows(browser, "#replicas")}
    assert set(MODELS) <= set(replicas) and replicas["simple"][1] == "1 on cpu"
    assert any(row[0].startswith("cpu") for row in rows(browser, "#devices"))
    servers = rows(browser, "#servers")
    assert (
        len(servers) == 1
        and servers[0][1:3] == ["up", "yes"]
        and set(MODELS) <= set(servers[0][6].split(", "))
    )
    screenshot(browser, "overview")
    browser.find_element(By.LINK_TEXT, "ct_lesion_segmentation").click()  # the action: into a model
    assert text(browser, "h1") == "Model ct_lesion_segmentation"


def test_models_unload_and_load_and_a_model_page_with_live_figures(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/models")
    screenshot(browser, "models")
    row = browser.find_element(By.ID, "model-simple")
    row.find_element(By.XPATH, ".//button[text()='Unload']").click()
    accept_confirmation(browser)
    assert flash(browser, "simple unloaded") == "simple unloaded"
    assert "UNAVAILABLE" in browser.find_element(By.ID, "model-simple").text
    browser.find_element(By.ID, "model-simple").find_element(By.XPATH, ".//button[text()='Load']").click()
    assert flash(browser, "simple loaded")
    window = np.resize(synthesize("normal_sinus", np.random.default_rng(1)), 2500).astype(float).round(4)
    body = {"inputs": [{"name": "ecg", "datatype": "FP32", "shape": [1, 1, 2500], "data": window.tolist()}]}
    with stack.api() as api:  # traffic inside the page's one-minute window
        for _ in range(30):
            assert api.post("/v2/models/ecg_rhythm_classifier/infer", json=body).status_code == 200
    visit(browser, stack, "/console/models/ecg_rhythm_classifier")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and "request latency" in charts[0].find_element(
        By.TAG_NAME, "title"
    ).get_attribute("textContent")
    assert text(browser, "[data-live='models.ecg_rhythm_classifier.p99_ms']") != "–"
    classes = {row[0]: row for row in rows(browser, "#classes")}
    assert set(classes) == {"stat", "urgent", "routine", "bulk"}
    assert int(classes["routine"][1]) >= 30 and classes["routine"][5].endswith("100 %")
    screenshot(browser, "model")


def test_jobs_show_progress_and_failures_and_resume_a_failed_job(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/jobs")
    good = browser.find_element(By.ID, f"job-{stack.jobs['good']}")
    assert "succeeded" in good.text
    bar = good.find_element(By.TAG_NAME, "progress")
    assert float(bar.get_attribute("value")) == 598 and float(bar.get_attribute("max")) == 600
    link = good.find_element(By.LINK_TEXT, "failures.csv").get_attribute("href")
    csv_text = browser.execute_async_script(
        "fetch(arguments[0]).then(r => r.text()).then(arguments[1])", link
    )
    assert csv_text.splitlines()[0] == "index,locator,reason" and len(csv_text.splitlines()) == 3
    assert "is not a number" in csv_text
    assert "not-a-folder" in browser.find_element(By.ID, f"job-{stack.jobs['bad']}").text
    screenshot(browser, "jobs")
    browser.find_element(By.ID, f"job-{stack.jobs['bad']}").find_element(
        By.XPATH, ".//button[text()='Resume']"
    ).click()
    expected = f"job {stack.jobs['bad']}: resume asked; now queued"
    assert flash(browser, expected) == expected


def test_imaging_shows_studies_exports_and_retries_a_failed_export(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/imaging")
    assert stack.ct_series in browser.page_source
    exports = [e for e in browser.find_elements(By.CSS_SELECTOR, "[id^='export-']")]
    assert any("archive" in e.text and "sent" in e.text for e in exports)
    failed = next(e for e in exports if "ehr" in e.text and "failed" in e.text)
    screenshot(browser, "imaging")
    failed.find_element(By.XPATH, ".//button[text()='Retry']").click()
    assert flash(browser, "export ").endswith("queued to be sent again")


def test_the_result_viewer_shows_the_seg_overlay_and_the_sr_findings(
    browser: WebDriver, stack: Stack
) -> None:
    visit(browser, stack, "/console/imaging")
    browser.find_element(By.LINK_TEXT, "SEG").click()
    image = browser.find_element(By.ID, "slice")
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
    )
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    findings = rows(browser, "#findings")
    assert findings and any("ml" in " ".join(r).lower() or "volume" in " ".join(r).lower() for r in findings)
    screenshot(browser, "result")
    field = browser.find_element(By.ID, "index")
    field.send_keys("0", Keys.ENTER)  # the action: another slice, from the keyboard
    WebDriverWait(browser, 30).until(lambda d: "index=0" in d.current_url)
    image = browser.find_element(By.ID, "slice")
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
    )


def test_imaging_pages_show_a_token_what_its_grants_show_on_the_api(stack: Stack) -> None:
    """A token granted only another model sees neither the CT series, its results nor their exports
    on the Imaging page, as on ``/dicom/studies``, and the viewer answers its results as not found; a
    token granted the CT model sees them all."""
    database = Database(default_url(stack.data_dir))
    try:
        store = TokenStore(database)
        other, _ = store.create("viewer", ["simple"], "test-simple-only", timedelta(hours=1))
        reader, _ = store.create("viewer", ["ct_lesion_segmentation"], "test-ct-reader", timedelta(hours=1))
    finally:
        database.dispose()
    with stack.api() as admin:
        results = admin.get(f"/dicom/series/{stack.ct_series}").json()["results"]
    kinds = {r["kind"]: r["id"] for r in results}
    exports = [e["id"] for r in results for e in r["exports"]]
    assert {"seg", "sr"} <= set(kinds) and exports
    for token, granted in ((other, False), (reader, True)):
        listed = httpx.get(f"{stack.base}/dicom/studies", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200 and (stack.ct_series in listed.text) == granted
        with httpx.Client(base_url=stack.base, follow_redirects=False, timeout=60) as client:
            assert sign_in(client, token).status_code == 303
            page = client.get("/console/imaging")
            assert page.status_code == 200
            assert (stack.ct_series in page.text) == granted, page.text
            assert all((f"/console/imaging/results/{i}" in page.text) == granted for i in kinds.values())
            assert all((f'id="export-{e}"' in page.text) == granted for e in exports)
            for kind in ("seg", "sr"):
                viewer = client.get(f"/console/imaging/results/{kinds[kind]}")
                if granted:
                    assert viewer.status_code == 200 and stack.ct_series in viewer.text
                else:
                    assert viewer.status_code == 404 and stack.ct_series not in viewer.text, viewer.text
            picture = client.get(f"/console/imaging/results/{kinds['seg']}/slice.png")
            if granted:
                assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
            else:
                assert picture.status_code == 404 and not picture.content.startswith(b"\x89PNG")


def test_ward_shows_beds_trends_and_acknowledges_an_alert(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/ward")
    beds = {row[0]: row for row in rows(browser, "#beds")}
    assert {"bed-1", "bed-2", "bed-3"} <= set(beds)
    assert int(beds["bed-3"][1]) >= 7 and beds["bed-3"][2] == "high"
    assert int(beds["bed-1"][1]) <= 1 and beds["bed-1"][4] not in ("", "–")  # a rhythm was classified
    alerts = rows(browser, "#alerts")
    assert alerts and alerts[0][0] == "bed-3"
    screenshot(browser, "ward")
    before = len(alerts)
    browser.find_element(By.CSS_SELECTOR, "#alerts tbody tr button").click()
    assert flash(browser, "alert on bed bed-3 acknowledged by test-admin")
    assert len(rows(browser, "#alerts")) == before - 1


def test_audit_search_and_chain_verification(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/audit")
    browser.find_element(By.NAME, "door").send_keys("console")
    browser.find_element(By.NAME, "principal").send_keys("test-admin", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: "principal=test-admin" in d.current_url)
    found = rows(browser, "#records")
    events = {row[2] for row in found}
    assert found and all(row[3] == "test-admin" and row[4] == "console" for row in found)
    assert {
        "console.signin",
        "model.unload",
        "model.load",
        "job.resume",
        "export.retry",
        "alert.acknowledge",
    } <= events
    screenshot(browser, "audit")
    browser.find_element(By.XPATH, "//button[text()='Verify the chain']").click()
    assert flash(browser, "Chain verified:")


def test_profiles_plot_latency_throughput_and_energy(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/profiles")
    section = browser.find_element(By.ID, "profile-ecg_rhythm_classifier")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    titles = [c.find_element(By.TAG_NAME, "title").get_attribute("textContent") for c in charts]
    assert "ecg_rhythm_classifier: p99 latency" in titles and "ct_lesion_segmentation: energy" in titles
    assert section.text == "ecg_rhythm_classifier"
    assert "Not profiled yet" in browser.page_source  # simple was not profiled
    screenshot(browser, "profiles")
    browser.find_element(By.LINK_TEXT, "planner").click()  # the action: on to the planner
    assert text(browser, "h1") == "Fleet planner"


def test_the_planner_sizes_the_fleet_from_the_profiles(browser: WebDriver, stack: Stack) -> None:
    visit(browser, stack, "/console/planner")
    plan = browser.find_element(By.ID, "plan-text").get_attribute("value")
    assert "ecg_rhythm_classifier" in plan and "ct_lesion_segmentation" in plan
    browser.find_element(By.ID, "run-plan").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.ID, "plan"))
    table = {
        row.find_element(By.TAG_NAME, "th").text: [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#plan tbody tr")
    }
    measured, spec = table["servers needed"]
    assert int(measured) >= 1 and int(spec) >= 1
    assert table["figures from"] == ["measured", "spec sheet"]
    assert any(label.startswith("cost per year") for label in table)
    screenshot(browser, "planner")


_CONTRAST = (Path(__file__).parent / "console_checks.js").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "path",
    [
        "/console",
        "/console/models",
        "/console/jobs",
        "/console/imaging",
        "/console/ward",
        "/console/audit",
        "/console/profiles",
        "/console/planner",
    ],
)
def test_every_page_has_readable_contrast_and_named_focusable_controls(
    browser: WebDriver, stack: Stack, path: str
) -> None:
    visit(browser, stack, path)
    worst, where, unnamed = browser.execute_script(_CONTRAST)
    assert worst >= 4.5, f"{path}: contrast {worst:.2f}:1 at {where}"
    assert not unnamed, f"{path}: controls without a name or out of the tab order: {unnamed}"
