"""The operator console over HTTP on a real server with authentication on: sign-in and its cookie,
CSRF and origin checks on every action, roles and grants as on the API, audited actions, sign-out,
revoked tokens, the idle timeout and the live event stream. (The pages in a real browser:
``test_console_browser.py``.)"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, start_server, stop_server
from tests.integration.test_access import make_token, medserve
from tests.integration.test_jobs import spec_text, write_table

pytestmark = pytest.mark.slow

MODELS = ("simple", "ecg_rhythm_classifier")


@dataclass
class Console:
    server: RunningServer
    data_dir: Path
    tokens: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://{self.server.http_url}", follow_redirects=False, timeout=60)


def sign_in(client: httpx.Client, token: str) -> httpx.Response:
    form = client.get("/console/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return client.post("/console/signin", data={"csrf": csrf.group(1), "token": token})


def csrf_of(client: httpx.Client, page: str = "/console") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


def audit_rows(client: httpx.Client, **query: str) -> list[list[str]]:
    page = client.get("/console/audit", params=query)
    assert page.status_code == 200, page.text
    body = page.text.split('<table id="records">', 1)[1].split("</table>", 1)[0]
    rows = [
        re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]
    return [row for row in rows if len(row) > 1]  # the header row has no cells, "no record" one


def _start(root: Path, repository: Path, **env: str) -> Console:
    data_dir = root / "data"
    tokens = {
        "admin": make_token(data_dir, "admin", "admin"),
        "viewer": make_token(data_dir, "viewer", "viewer"),
        "service": make_token(data_dir, "service", "service", "simple"),
    }
    server = start_server(repository, root / "server.log", env={"MEDSERVE_AUTH_DISABLED": "false", **env})
    return Console(server, data_dir, tokens)


@pytest.fixture(scope="module")
def small_repository(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("console-repo") / "repository"
    for name in MODELS:
        shutil.copytree(example_repository / name, target / name)
    return target


@pytest.fixture(scope="module")
def console(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    # jobs stay queued here (no job runner), so a job can be cancelled before it starts
    running = _start(tmp_path_factory.mktemp("console"), small_repository, MEDSERVE_JOBS_CONCURRENCY="0")
    yield running
    stop_server(running.server)


def test_pages_need_a_session_and_sign_in_sets_a_strict_httponly_cookie(console: Console) -> None:
    with console.client() as client:
        for page in ("/console", "/console/models", "/console/audit", "/console/events"):
            answer = client.get(page)
            assert answer.status_code == 303 and answer.headers["location"] == "/console/signin", page
        signin = client.get("/console/signin")
        assert signin.headers["content-security-policy"].startswith("default-src 'self'")
        assert signin.headers["x-frame-options"] == "DENY"
        answer = sign_in(client, console.tokens["viewer"])
        assert answer.status_code == 303 and answer.headers["location"] == "/console"
        cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("medserve_console="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/console", "samesite=strict"} <= flags
        assert "secure" not in flags  # plain HTTP here; under TLS the cookie is Secure
        assert console.tokens["viewer"] not in cookie
        page = client.get("/console")
        assert page.status_code == 200 and "Sign out test-viewer (viewer)" in page.text


def test_a_wrong_token_is_refused_and_the_failure_audited(console: Console) -> None:
    with console.client() as client:
        answer = sign_in(client, "msv_nottoken_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        assert answer.status_code == 401 and "Sign-in refused" in answer.text
        assert not any(v.startswith("medserve_console=") for v in answer.headers.get_list("set-cookie"))
        # a forged sign-in (no form cookie) is refused before the token is even tried
        forged = httpx.post(
            f"http://{console.server.http_url}/console/signin",
            data={"csrf": "x", "token": console.tokens["admin"]},
            follow_redirects=False,
        )
        assert forged.status_code == 403 and "expired" in forged.text
    with console.client() as admin:
        sign_in(admin, console.tokens["admin"])
        rows = audit_rows(admin, event="auth.failure", door="console")
        assert rows and rows[0][6] == "Unauthenticated", rows


def test_every_action_needs_the_session_csrf_token_and_this_origin(console: Console) -> None:
    with console.client() as client:
        sign_in(client, console.tokens["admin"])
        csrf = csrf_of(client)
        for data, headers in (
            ({}, {}),
            ({"csrf": "wrong"}, {}),
            ({"csrf": csrf}, {"Origin": "http://elsewhere.example"}),
        ):
            answer = client.post("/console/models/simple/unload", data=data, headers=headers)
            assert answer.status_code == 403 and "security token" in answer.text
        page = client.get("/console/models")
        assert re.search(r'id="model-simple">.*?READY', page.text, re.S)


def test_roles_and_grants_apply_as_on_the_api(console: Console) -> None:
    with console.client() as viewer:
        sign_in(viewer, console.tokens["viewer"])
        answer = viewer.post("/console/models/simple/unload", data={"csrf": csrf_of(viewer)})
        assert answer.status_code == 403 and "may not manage" in answer.text
        assert viewer.get("/console/audit").status_code == 403
        models = viewer.get("/console/models").text
        assert "ecg_rhythm_classifier" in models and "Unload" not in models
    with console.client() as service:
        sign_in(service, console.tokens["service"])
        models = service.get("/console/models").text
        assert "simple" in models and "ecg_rhythm_classifier" not in models
        assert service.get("/console/models/ecg_rhythm_classifier").status_code == 403
        assert service.get("/console/models/simple").status_code == 200


def test_admin_actions_work_and_are_audited_under_the_console_door(console: Console) -> None:
    with console.client() as client:
        sign_in(client, console.tokens["admin"])
        answer = client.post("/console/models/simple/unload", data={"csrf": csrf_of(client)})
        assert answer.status_code == 303
        assert "simple unloaded" in client.get(answer.headers["location"]).text
        assert httpx.get(f"http://{console.server.http_url}/v2/models/simple/ready").status_code in (401, 503)
        answer = client.post("/console/models/simple/load", data={"csrf": csrf_of(client)})
        assert answer.status_code == 303 and "simple loaded" in client.get(answer.headers["location"]).text
        events = [row[2] for row in audit_rows(client, principal="test-admin", door="console")]
        assert {"model.unload", "model.load", "console.signin"} <= set(events)
        verified = client.post("/console/audit/verify", data={"csrf": csrf_of(client)})
        assert verified.status_code == 303
        assert "Chain verified" in client.get("/console/audit").text


def test_jobs_are_cancelled_from_the_console_and_an_ended_one_refuses_to_resume(
    console: Console, tmp_path: Path
) -> None:
    write_table(tmp_path / "table.csv", 20)
    spec = spec_text(str(tmp_path / "table.csv"), str(tmp_path / "out.csv"))
    headers = {"Authorization": f"Bearer {console.tokens['admin']}"}
    created = httpx.post(f"http://{console.server.http_url}/jobs", content=spec, headers=headers)
    assert created.status_code == 201, created.text
    job = created.json()["id"]
    with console.client() as client:
        sign_in(client, console.tokens["admin"])
        page = client.get("/console/jobs")
        assert f'id="job-{job}"' in page.text and "queued" in page.text
        answer = client.post(f"/console/jobs/{job}/cancel", data={"csrf": csrf_of(client)})
        assert answer.status_code == 303
        assert f"job {job}: cancel asked; now cancelled" in client.get("/console/jobs").text
        again = client.post(f"/console/jobs/{job}/resume", data={"csrf": csrf_of(client)})
        assert again.status_code == 409 and "has ended: cancelled" in again.text
        events = [(row[2], row[4]) for row in audit_rows(client, event="job.cancel")]
        assert ("job.cancel", "console") in events
    with console.client() as viewer:
        sign_in(viewer, console.tokens["viewer"])
        refused = viewer.post(f"/console/jobs/{job}/resume", data={"csrf": csrf_of(viewer)})
        assert refused.status_code == 403


def test_sign_out_and_revocation_end_the_session(console: Console) -> None:
    token = make_token(console.data_dir, "short-lived", "viewer")
    with console.client() as client:
        sign_in(client, token)
        assert client.get("/console").status_code == 200
        done = medserve(console.data_dir, "tokens", "revoke", token.split("_")[1])
        assert done.returncode == 0, done.stderr
        # a revocation by another process reaches the server's token cache within its TTL (5 s)
        deadline = time.monotonic() + 15
        while (answer := client.get("/console")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/signin"
    with console.client() as client:
        sign_in(client, console.tokens["viewer"])
        cookie = client.cookies["medserve_console"]
        assert client.post("/console/signout", data={"csrf": csrf_of(client)}).status_code == 303
        stale = httpx.get(
            f"http://{console.server.http_url}/console",
            cookies={"medserve_console": cookie},
            follow_redirects=False,
        )
        assert stale.status_code == 303


def test_the_planner_answers_a_bad_plan_with_what_is_wrong(console: Console) -> None:
    with console.client() as client:
        sign_in(client, console.tokens["viewer"])
        page = client.get("/console/planner")
        assert "workload:" in page.text and "ecg_rhythm_classifier" in page.text
        bad = client.post("/console/planner", data={"csrf": csrf_of(client), "plan": "workload: [1"})
        assert bad.status_code == 400 and "not valid YAML" in bad.text
        plan = (
            "workload:\n  - model: simple\n    requests_per_second: 5\n    slo_p99_ms: 100\n"
            "servers:\n  - name: here\n    capex: 1\n"
        )
        answer = client.post("/console/planner", data={"csrf": csrf_of(client), "plan": plan})
        assert answer.status_code == 200
        assert "simple: no stored profile" in answer.text  # nothing was profiled on this server


@pytest.fixture()
def impatient(small_repository: Path, tmp_path: Path) -> Iterator[Console]:
    running = _start(tmp_path, small_repository, MEDSERVE_CONSOLE_IDLE_TIMEOUT_S="3")
    yield running
    stop_server(running.server)


def test_idle_sessions_end_and_the_event_stream_does_not_keep_them_alive(impatient: Console) -> None:
    with impatient.client() as client:
        sign_in(client, impatient.tokens["admin"])
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": list(range(16))}]}
        body["inputs"].append(
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": list(range(16))}
        )
        headers = {"Authorization": f"Bearer {impatient.tokens['admin']}"}
        assert client.post("/v2/models/simple/infer", json=body, headers=headers).status_code == 200
        live = None
        with client.stream("GET", "/console/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "live":
                    live = json.loads(line[6:])
                    break
        assert live is not None and "simple" in live["models"]
        assert set(live["models"]["simple"]) >= {"p50_ms", "p99_ms", "requests_per_s", "queue_depth"}
        time.sleep(4)
        answer = client.get("/console")
        assert answer.status_code == 303 and answer.headers["location"] == "/console/signin"
