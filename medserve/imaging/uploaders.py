"""Who sent a series, and what they may see: model grants on the imaging doors.

STOW-RS and DIMSE ingestion run pipelines as the uploader. Each series keeps the principals that
sent its instances (name, role, grants, door) under :data:`UPLOADERS_KEY` of its ``attributes``;
routing checks that every one of them is granted the model of the pipeline the series is routed
to (otherwise the series is left unmatched, with the reason), and the pipeline then runs as the
last of them, so the audit names the uploader, not the server.

A principal with grants sees a series in the status listings only when it is granted the models
of the series' pipeline and of all its results, or when it sent the series itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medserve.values.access import Action, Caller, Principal, Role

#: The key of ``DicomSeriesRow.attributes`` holding the uploaders (not a DICOM keyword).
UPLOADERS_KEY = "_uploaders"
_KEPT = 8


def record_of(caller: Caller) -> dict[str, Any]:
    """The stored form of ``caller`` as an uploader."""
    principal = caller.principal
    models = None if principal.models is None else sorted(principal.models)
    return {"name": principal.name, "role": str(principal.role), "models": models, "door": caller.door}


def with_uploader(attributes: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``attributes`` with ``record`` as the latest uploader (one entry per name)."""
    kept = [u for u in attributes.get(UPLOADERS_KEY, []) if u.get("name") != record["name"]]
    return {**attributes, UPLOADERS_KEY: [*kept, dict(record)][-_KEPT:]}


def without_uploaders(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The routing attributes alone (what the status API shows as ``attributes``)."""
    return {k: v for k, v in attributes.items() if k != UPLOADERS_KEY}


def uploader_names(attributes: Mapping[str, Any]) -> list[str]:
    return [str(u.get("name", "")) for u in attributes.get(UPLOADERS_KEY, [])]


def _principal(record: Mapping[str, Any]) -> Principal:
    models = record.get("models")
    try:
        role = Role(record.get("role", Role.VIEWER))
    except ValueError:
        role = Role.VIEWER  # a record from an unknown role runs nothing
    return Principal(
        str(record.get("name", "")),
        role,
        None if models is None else frozenset(str(m) for m in models),
        f"upload:{record.get('door', '')}",
    )


def grant_failure(attributes: Mapping[str, Any], model: str, pipeline: str) -> str | None:
    """Why the series may not run ``pipeline`` on ``model`` for its uploaders, or None when it may."""
    for record in attributes.get(UPLOADERS_KEY, []):
        principal = _principal(record)
        if not principal.may(Action.INFER, model):
            return (
                f"routed to pipeline '{pipeline}', but its uploader '{principal.name}' has no grant "
                f"for model '{model}'"
            )
    return None


def uploader_caller(attributes: Mapping[str, Any], request_id: str) -> Caller | None:
    """The caller a series' pipeline runs as: its latest uploader; None for a series with none."""
    records = attributes.get(UPLOADERS_KEY, [])
    if not records:
        return None
    record = records[-1]
    return Caller(_principal(record), str(record.get("door", "")), request_id)


def visible_studies(
    studies: list[dict[str, Any]], principal: Principal, model_of: Callable[[str], str | None]
) -> list[dict[str, Any]]:
    """``studies`` (the status API's documents) cut to the series ``principal`` may see.

    ``model_of(pipeline)``: the model a pipeline runs (None for a pipeline not configured).
    """
    if principal.models is None:
        return studies
    kept: list[dict[str, Any]] = []
    for study in studies:
        series = [s for s in study["series"] if _series_visible(s, principal, model_of)]
        if series:
            kept.append({**study, "series": series})
    return kept


def _series_visible(
    series: Mapping[str, Any], principal: Principal, model_of: Callable[[str], str | None]
) -> bool:
    if principal.name in series.get("uploaded_by", []):
        return True
    models = [str(r.get("model", "")) for r in series.get("results", [])]
    if series.get("pipeline"):
        models.append(model_of(str(series["pipeline"])) or "")
    return bool(models) and principal.may_all(Action.READ, models)
