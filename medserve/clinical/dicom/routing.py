"""Which pipeline a series goes to: rules from ``routing.yaml``, first match wins.

A rule names a pipeline and the criteria a series must meet, all of them (criteria left out match
anything)::

    rules:
      - name: ct-chest
        pipeline: ct-lung-nodules
        modality: CT
        body_part_examined: [CHEST, THORAX]
        series_description: "lung|chest"     # regex, re.search, case-insensitive
        min_instances: 50
      - name: chest-xray
        pipeline: cxr-findings
        modality: [CR, DX]
        sop_class_uid: [DigitalXRayImageStorageForPresentation, 1.2.840.10008.5.1.4.1.1.1]

When no rule matches, the decision's reason says, for each rule, the first criterion that failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from medserve.clinical.dicom.criteria import SERIES_KEYWORDS, Criteria, series_attributes
from medserve.values.errors import InvalidConfig

__all__ = [
    "SERIES_KEYWORDS",
    "Criteria",
    "RoutingDecision",
    "RoutingRule",
    "explain",
    "load_rules",
    "route",
    "series_attributes",
]


class RoutingRule(Criteria):
    """One rule of ``routing.yaml``: a pipeline and the criteria (``Criteria``) a series must meet."""

    name: str = Field(min_length=1, description="Names the rule in decisions and logs.")
    pipeline: str = Field(min_length=1, description="The imaging pipeline matching series go to.")


@dataclass(frozen=True)
class RoutingDecision:
    """Where a series goes: ``pipeline`` and ``rule`` are None when no rule matched; ``reason`` says why."""

    pipeline: str | None
    rule: str | None
    reason: str


def route(
    rules: Sequence[RoutingRule], series_attributes: Mapping[str, Any], instance_count: int
) -> RoutingDecision:
    """The first rule the series matches, or no pipeline with each rule's first failed criterion."""
    failures = []
    for rule in rules:
        failure = rule.first_failure(series_attributes, instance_count)
        if failure is None:
            return RoutingDecision(rule.pipeline, rule.name, f"matched rule '{rule.name}'")
        failures.append(f"rule '{rule.name}': {failure}")
    if not failures:
        return RoutingDecision(None, None, "no routing rules are configured")
    return RoutingDecision(None, None, "no rule matched: " + "; ".join(failures))


def explain(
    rules: Sequence[RoutingRule], series_attributes: Mapping[str, Any], instance_count: int
) -> list[tuple[RoutingRule, str | None]]:
    """Each rule with the first criterion the series fails (None: it matches), in rule order."""
    return [(rule, rule.first_failure(series_attributes, instance_count)) for rule in rules]


def _problem(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    location = ".".join(str(part) for part in error["loc"])
    return f"field '{location}': {message}" if location else message


def _validate(raw: Any, source: str) -> list[RoutingRule]:
    if isinstance(raw, Mapping):
        if set(raw) != {"rules"}:
            raise InvalidConfig(f"{source}: expected a 'rules' list at the top level, got keys {sorted(raw)}")
        raw = raw["rules"]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidConfig(f"{source}: expected a list of rules, got {type(raw).__name__}")
    rules: list[RoutingRule] = []
    for i, item in enumerate(raw):
        label = f"rule {i + 1}" + (
            f" '{item['name']}'" if isinstance(item, Mapping) and "name" in item else ""
        )
        if not isinstance(item, Mapping):
            raise InvalidConfig(f"{source}: {label}: expected a mapping, got {type(item).__name__}")
        try:
            rules.append(RoutingRule.model_validate(dict(item)))
        except ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise InvalidConfig(f"{source}: {label}: {problems}") from None
    names = [rule.name for rule in rules]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidConfig(f"{source}: rule names must be unique; repeated: {', '.join(repeated)}")
    return rules


def load_rules(source: str | Path | Sequence[Mapping[str, Any]]) -> list[RoutingRule]:
    """Rules from a YAML file (a path) or from already-parsed rule mappings; errors name rule and field.

    The file holds either a top-level list of rules or a mapping with one key, ``rules``. Raises
    ``InvalidConfig`` naming the file, the rule (number and name) and the field.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidConfig(f"{path}: cannot read routing rules: {exc.strerror or exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidConfig(f"{path}: not valid YAML: {exc}") from None
        return _validate(raw, str(path))
    return _validate(list(source), "routing rules")
