"""The Grafana dashboard and the Prometheus alert rules under deploy/: the JSON and YAML load, and
every query names only metrics a real server exports at /metrics (as Prometheus stores them: a
counter with ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RunningServer

DASHBOARD = ROOT / "deploy" / "grafana" / "medserve-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "medserve-alerts.yml"
#: series Prometheus makes itself, not the server
PROMETHEUS_OWN = {"up"}
_METRIC = re.compile(r"\b(medserve_[a-z0-9_]+|up)\b(?!\s*\()")


def exported(server: RunningServer) -> set[str]:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16},
        ]
    }
    assert httpx.post(f"http://{server.http_url}/v2/models/simple/infer", json=body).status_code == 200
    text = httpx.get(f"http://{server.http_url}/metrics").text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",)
        )
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [(panel["title"], target["expr"]) for panel in doc["panels"] for target in panel["targets"]]
    queries += [
        (variable["name"], variable["query"])
        for variable in doc["templating"]["list"]
        if variable["type"] == "query"
    ]
    return queries


def rule_queries() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert doc["title"] == "medserve" and doc["schemaVersion"] >= 36
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in doc["panels"]:
        assert panel["type"] in ("timeseries", "stat", "heatmap", "table") and panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
    assert any(v["type"] == "datasource" and v["name"] == "datasource" for v in doc["templating"]["list"])


def test_the_alert_rules_are_prometheus_rules() -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert re.fullmatch(r"Medserve[A-Za-z0-9]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")")
    assert len({rule["alert"] for rule in rules}) == len(rules)


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_names_a_metric_the_server_exports(server: RunningServer, source: str) -> None:
    names = exported(server)
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    for where, expr in queries:
        used = set(_METRIC.findall(expr))
        assert used - PROMETHEUS_OWN or used == {"up"}, f"{where}: names no medserve metric: {expr}"
        missing = used - names - PROMETHEUS_OWN
        assert not missing, f"{where}: {sorted(missing)} not exported by the server"
