"""Model monitoring for the fleet (SQLite and PostgreSQL): two replicas each see half of the traffic,
share their state through the store, and either one's monitoring report equals the report of one
process that saw all of it: exactly for counts, fixed-bin histograms and categories, to rounding for
the running moments, and within the KLL sketch's error bound for real-valued histograms."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import start_server, stop_server
from sqlalchemy import update

from medserve.monitoring import ModelMonitor
from medserve.monitoring.fleet import FleetMonitor
from medserve.monitoring.histograms import real_counts
from medserve.monitoring.statistics import KLL_PMF_ERROR
from medserve.store.database import Database
from medserve.store.tables import MonitoringStateRow

WINDOW = 60.0


def _traffic(seed: int = 5) -> list[tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Two windows of requests; the second drifts (inputs shifted, probabilities pushed up)."""
    rng = np.random.default_rng(seed)
    requests = []
    for window, shift in ((0, 0.0), (1, 0.7)):
        for i in range(400):
            image = rng.normal(shift, 1.0, size=(1, 64)).astype(np.float32)
            probs = rng.beta(2.0, 5.0 - 3 * shift, size=(1, 8)).astype(np.float32)
            score = rng.normal(10 * shift, 3.0, size=(1, 16))
            label = rng.integers(0, 5, size=(1, 4))
            requests.append(
                (
                    window * WINDOW + i * (WINDOW - 1) / 400,
                    {"image": image},
                    {"probs": probs, "score": score, "label": label},
                )
            )
    return requests


def _without(doc: object, *keys: str) -> object:
    if isinstance(doc, dict):
        return {k: _without(v, *keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [_without(v, *keys) for v in doc]
    return doc


def _close(a: object, b: object, path: str = "") -> None:
    """Equal structure; numbers equal to floating-point rounding (integers exactly)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif a is None or isinstance(a, (bool, int, str)):
        assert a == b, f"{path}: {a!r} != {b!r}"
    else:
        assert b == pytest.approx(a, rel=1e-9, abs=1e-9), path


def test_two_replicas_halves_merge_into_the_one_process_report(migrated_database: Database) -> None:
    single = ModelMonitor(window_s=WINDOW)
    replica_a = FleetMonitor(ModelMonitor(window_s=WINDOW), migrated_database, "replica-a", share_every_s=0)
    replica_b = FleetMonitor(ModelMonitor(window_s=WINDOW), migrated_database, "replica-b", share_every_s=0)
    traffic = _traffic()
    for index, (t, inputs, outputs) in enumerate(traffic):
        single.observe("cxr", "1", inputs, outputs, now=t)
        (replica_a if index % 2 else replica_b).observe("cxr", "1", inputs, outputs, now=t)
    now = 2 * WINDOW + 1

    # before sharing, each replica answers for its own half
    assert replica_a.snapshot("cxr", now=now)["replicas"] == ["replica-a"]
    assert replica_a.publish() == 1 and replica_b.publish() == 1

    whole = single.snapshot("cxr", now=now)
    for replica in (replica_a, replica_b):
        fleet = replica.snapshot("cxr", now=now)
        assert fleet["replicas"] == ["replica-a", "replica-b"]
        # everything but the real-valued histograms (a sketch's estimate) and the drift scores derived
        # from them is what the one process recorded
        _close(_without(whole, "histogram", "drift"), _without(fleet, "histogram", "drift", "replicas"))
        versions, merged_versions = whole["versions"][0], fleet["versions"][0]
        for got, want in zip(merged_versions["windows"], versions["windows"]):
            assert got["observations"] == want["observations"] == 400
            # fixed bins on [0, 1]: merged exactly
            assert got["outputs"]["probs"]["histogram"] == want["outputs"]["probs"]["histogram"]
            assert got["outputs"]["label"]["counts"] == want["outputs"]["label"]["counts"]
        # the reference's probability histogram too
        reference, merged_reference = versions["reference"], merged_versions["reference"]
        assert merged_reference["outputs"]["probs"]["histogram"] == reference["outputs"]["probs"]["histogram"]
        # drift on exactly merged statistics is the same drift
        drift = {d["tensor"]: d for d in versions["drift"]}
        merged_drift = {d["tensor"]: d for d in merged_versions["drift"]}
        assert drift.keys() == merged_drift.keys() == {"image", "probs", "score", "label"}
        for tensor in ("image", "probs", "label"):
            assert merged_drift[tensor]["value"] == pytest.approx(drift[tensor]["value"], rel=1e-9)
            assert merged_drift[tensor]["level"] == drift[tensor]["level"]
        # PSI of sketched histograms (a log of ratios of small bins: no tight bound on the value): the
        # same grade
        assert merged_drift["score"]["level"] == drift["score"]["level"] == "significant"

        # real-valued histograms: each bin within the KLL bound of the exact count of all the values
        edges = np.asarray(merged_reference["outputs"]["score"]["histogram"]["edges"])
        for w, window in enumerate(merged_versions["windows"]):
            values = np.concatenate(
                [o["score"].ravel() for t, _, o in traffic if w * WINDOW <= t < (w + 1) * WINDOW]
            )
            exact = real_counts(values, edges)
            histogram = window["outputs"]["score"]["histogram"]
            estimate = np.array([histogram["below"], *histogram["counts"], histogram["above"]])
            assert histogram["estimated_from_values"] == values.size == 6400
            assert np.abs(estimate - exact).max() <= KLL_PMF_ERROR * values.size
            assert estimate.sum() == pytest.approx(values.size)


def test_a_replica_with_other_windows_is_left_out_and_old_rows_expire(migrated_database: Database) -> None:
    replica_a = FleetMonitor(ModelMonitor(window_s=WINDOW), migrated_database, "replica-a", share_every_s=0)
    replica_b = FleetMonitor(ModelMonitor(window_s=WINDOW), migrated_database, "replica-b", share_every_s=0)
    other_length = FleetMonitor(ModelMonitor(window_s=2 * WINDOW), migrated_database, "replica-c")
    for t, inputs, outputs in _traffic()[:10]:
        for replica in (replica_a, replica_b, other_length):
            replica.observe("cxr", "1", inputs, outputs, now=t)
    replica_b.publish()
    other_length.publish()
    fleet = replica_a.snapshot("cxr", now=WINDOW)
    # replica-c's windows cannot be added to these; replica-b's can
    assert fleet["replicas"] == ["replica-a", "replica-b"]
    assert fleet["versions"][0]["windows"][0]["observations"] == 20
    # a row older than the kept windows' span (keep_windows x window_s) holds nothing still kept
    with migrated_database.engine.begin() as connection:
        connection.execute(
            update(MonitoringStateRow)
            .where(MonitoringStateRow.replica == "replica-b")
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=replica_a.horizon_s + 1))
        )
    fleet = replica_a.snapshot("cxr", now=WINDOW)
    assert fleet["replicas"] == ["replica-a"]
    assert fleet["versions"][0]["windows"][0]["observations"] == 10


def test_the_monitoring_endpoint_of_either_server_counts_both_servers_requests(
    example_repository: Path, tmp_path: Path, database_url: str
) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copytree(example_repository / "simple", repository / "simple")
    env = {"MEDSERVE_DATABASE_URL": database_url, "MEDSERVE_MONITORING_SHARE_S": "0.2"}
    servers = []
    for name in ("replica-a", "replica-b"):
        (tmp_path / name).mkdir()
        log = tmp_path / name / "server.log"
        servers.append(start_server(repository, log, env={**env, "MEDSERVE_REPLICA_ID": name}))
    try:
        body = {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [1, 16], "data": list(range(16))}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        for server, requests in zip(servers, (3, 5)):
            for _ in range(requests):
                answer = httpx.post(f"http://{server.http_url}/v2/models/simple/infer", json=body, timeout=30)
                assert answer.status_code == 200, answer.text
        time.sleep(1.0)  # a few sharing periods
        for server in servers:
            doc = httpx.get(f"http://{server.http_url}/v2/models/simple/monitoring", timeout=30).json()
            assert doc["replicas"] == ["replica-a", "replica-b"], doc
            observations = sum(w["observations"] for v in doc["versions"] for w in v["windows"])
            assert observations == 8
    finally:
        for server in servers:
            stop_server(server)
