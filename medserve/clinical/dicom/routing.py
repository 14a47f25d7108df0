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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.uid
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom import Dataset

from medserve.values.errors import InvalidConfig

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

SERIES_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "Rows",
    "Columns",
    "SOPClassUID",
    "Manufacturer",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {value!r}: {exc}") from None
    return value


class RoutingRule(BaseModel):
    """One rule of ``routing.yaml``: a pipeline and the criteria a series must meet to go to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Names the rule in decisions and logs.")
    pipeline: str = Field(min_length=1, description="The imaging pipeline matching series go to.")
    modality: list[str] | None = Field(default=None, description="Modality codes, e.g. CT or [CR, DX].")
    body_part_examined: list[str] | None = Field(default=None, description="BodyPartExamined, any case.")
    series_description: str | None = Field(default=None, description="Regex searched, any case.")
    manufacturer: str | None = Field(default=None, description="Regex searched in Manufacturer, any case.")
    sop_class_uid: list[str] | None = Field(default=None, description="UIDs or pydicom keywords.")
    min_rows: int | None = Field(default=None, ge=1)
    max_rows: int | None = Field(default=None, ge=1)
    min_columns: int | None = Field(default=None, ge=1)
    max_columns: int | None = Field(default=None, ge=1)
    min_instances: int | None = Field(default=None, ge=1)
    max_instances: int | None = Field(default=None, ge=1)

    @field_validator("modality", "body_part_examined", "sop_class_uid", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("modality", "body_part_examined")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches nothing; leave the criterion out to match anything")
        return None if value is None else [v.strip().upper() for v in value]

    @field_validator("series_description", "manufacturer")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        return _regex(value)

    @field_validator("sop_class_uid")
    @classmethod
    def _uids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty list matches nothing; leave the criterion out to match anything")
        uids = []
        for item in value:
            uid = getattr(pydicom.uid, item, item) if not _UID.fullmatch(item) else item
            if not isinstance(uid, str) or not _UID.fullmatch(uid):
                raise ValueError(f"{item!r} is neither a UID nor a known SOP class keyword")
            uids.append(str(uid))
        return uids

    @model_validator(mode="after")
    def _ranges(self) -> RoutingRule:
        for what in ("rows", "columns", "instances"):
            low, high = getattr(self, f"min_{what}"), getattr(self, f"max_{what}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what} {low} is greater than max_{what} {high}")
        return self

    def first_failure(self, attributes: Mapping[str, Any], instance_count: int) -> str | None:
        """The first criterion the series fails, in words, or None when the rule matches."""
        for keyword, allowed in (
            ("Modality", self.modality),
            ("BodyPartExamined", self.body_part_examined),
            ("SOPClassUID", self.sop_class_uid),
        ):
            if allowed is None:
                continue
            value = _text(attributes.get(keyword))
            if not value:
                return f"{keyword} missing, wanted one of [{', '.join(allowed)}]"
            candidate = value if keyword == "SOPClassUID" else value.upper()
            if candidate not in allowed:
                return f"{keyword} {value} not in [{', '.join(allowed)}]"
        for keyword, pattern in (
            ("SeriesDescription", self.series_description),
            ("Manufacturer", self.manufacturer),
        ):
            if pattern is not None and not re.search(pattern, _text(attributes.get(keyword)), re.IGNORECASE):
                return f"{keyword} {_text(attributes.get(keyword))!r} does not match /{pattern}/"
        for keyword, low, high in (
            ("Rows", self.min_rows, self.max_rows),
            ("Columns", self.min_columns, self.max_columns),
            ("instance count", self.min_instances, self.max_instances),
        ):
            if low is None and high is None:
                continue
            number = instance_count if keyword == "instance count" else _int(attributes.get(keyword))
            if number is None:
                return f"{keyword} missing, wanted {_range(low, high)}"
            if (low is not None and number < low) or (high is not None and number > high):
                return f"{keyword} {number} not in {_range(low, high)}"
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _range(low: int | None, high: int | None) -> str:
    return f"[{'' if low is None else low}..{'' if high is None else high}]"


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


def series_attributes(ds: Dataset) -> dict[str, Any]:
    """The attributes routing looks at (``SERIES_KEYWORDS``) from one instance; None where absent.

    Rows and Columns are ints, everything else str, so the result can be logged or sent as JSON.
    """
    attributes: dict[str, Any] = {}
    for keyword in SERIES_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            attributes[keyword] = None
        elif keyword in ("Rows", "Columns"):
            attributes[keyword] = _int(value)
        else:
            attributes[keyword] = str(value).strip()
    return attributes
