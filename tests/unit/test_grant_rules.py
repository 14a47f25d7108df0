"""Grant rules without a server: uploaders of a series, study visibility, metrics by model, roles."""

from __future__ import annotations

from prometheus_client import Counter

from medserve.core.metrics import ServingMetrics
from medserve.imaging import uploaders
from medserve.values.access import Action, Caller, Principal, Role

_CHEST = Principal("chest", Role.SERVICE, frozenset({"chest_xray_classifier"}))
_SIMPLE = Principal("simple", Role.SERVICE, frozenset({"simple"}))


def _attributes(*principals: Principal) -> dict[str, object]:
    attributes: dict[str, object] = {"Modality": "CR"}
    for principal in principals:
        attributes = uploaders.with_uploader(attributes, uploaders.record_of(Caller(principal, "dicomweb")))
    return attributes


def test_every_uploader_needs_the_grant_and_the_pipeline_runs_as_the_last() -> None:
    alone = _attributes(_CHEST)
    assert uploaders.grant_failure(alone, "chest_xray_classifier", "chest-xray") is None
    mixed = _attributes(_CHEST, _SIMPLE)
    failure = uploaders.grant_failure(mixed, "chest_xray_classifier", "chest-xray")
    assert failure is not None and "'simple' has no grant for model 'chest_xray_classifier'" in failure
    caller = uploaders.uploader_caller(mixed, "r1")
    assert caller is not None and caller.principal == Principal(
        "simple", Role.SERVICE, frozenset({"simple"}), "upload:dicomweb"
    )
    assert uploaders.uploader_caller({"Modality": "CR"}, "r1") is None
    assert uploaders.without_uploaders(mixed) == {"Modality": "CR"}
    assert uploaders.uploader_names(_attributes(_CHEST, _SIMPLE, _CHEST)) == ["simple", "chest"]


def test_a_stored_unknown_role_runs_nothing() -> None:
    attributes = {uploaders.UPLOADERS_KEY: [{"name": "x", "role": "root", "models": None, "door": "dimse"}]}
    assert uploaders.grant_failure(attributes, "simple", "p") is not None


def test_studies_are_cut_to_the_series_a_principal_may_see() -> None:
    def series(uid: str, pipeline: str, result_models: list[str], by: list[str]) -> dict[str, object]:
        results = [{"model": m} for m in result_models]
        return {"series_instance_uid": uid, "pipeline": pipeline, "results": results, "uploaded_by": by}

    studies = [
        {"study_instance_uid": "1", "series": [series("a", "chest-xray", [], []), series("b", "", [], [])]},
        {"study_instance_uid": "2", "series": [series("c", "", ["simple"], ["chest"])]},
    ]
    pipelines = {"chest-xray": "chest_xray_classifier"}.get

    def seen(principal: Principal) -> list[str]:
        kept = uploaders.visible_studies(studies, principal, pipelines)
        return [s["series_instance_uid"] for study in kept for s in study["series"]]

    assert seen(Principal("v", Role.VIEWER)) == ["a", "b", "c"]
    assert seen(_CHEST) == ["a", "c"]  # c: it sent it
    assert seen(_SIMPLE) == ["c"]


def test_metrics_exposition_keeps_only_granted_models() -> None:
    metrics = ServingMetrics()
    counter = Counter("t_requests", "requests", ["model"], registry=metrics.registry)
    for model in ("simple", "chest_xray_classifier"):
        counter.labels(model).inc()
    assert b'model="chest_xray_classifier"' in metrics.exposition()
    only = metrics.exposition(frozenset({"simple"})).decode()
    assert 't_requests_total{model="simple"} 1.0' in only
    assert "chest_xray_classifier" not in only
    assert "# HELP t_requests_total requests" in only


def test_viewers_have_no_results_action_and_services_only_on_granted_models() -> None:
    assert not Principal("v", Role.VIEWER).may(Action.RESULTS, "simple")
    assert _SIMPLE.may(Action.RESULTS, "simple")
    assert not _SIMPLE.may(Action.RESULTS, "chest_xray_classifier")
    assert _SIMPLE.may_all(Action.READ, ["simple"])
    assert not _SIMPLE.may_all(Action.READ, ["simple", "chest_xray_classifier"])
