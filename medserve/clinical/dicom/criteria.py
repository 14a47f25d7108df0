"""What a series must be for a rule or a model: criteria on its header, and the header values they read.

``Criteria`` is shared by routing rules (``routing.RoutingRule``) and by a pipeline's intended use (a
model's ``metadata.intended_use_criteria`` or the pipeline's ``intended_use``). Every criterion left
out matches anything; a criterion given fails a series that lacks the attribute. Text lists compare
without case; ``series_description`` / ``protocol_name`` / ``manufacturer`` are regular expressions
searched without case; ranges are inclusive.

``series_attributes`` reads one instance's header into the plain values criteria look at (JSON-safe:
they are stored with the series and shown by the status API). The patient's age is kept in years
only (from PatientAge, else from PatientBirthDate and StudyDate); no birth date is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import pydicom.uid
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom import Dataset

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}

#: Header attributes read for routing (``folder_scan`` reads only these and PatientID).
SERIES_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "Rows",
    "Columns",
    "SOPClassUID",
    "Manufacturer",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImageType",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _range(low: float | None, high: float | None) -> str:
    return f"[{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}]"


class Criteria(BaseModel):
    """Conditions on a series' header; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: list[str] | None = Field(default=None, description="Modality codes, e.g. CT or [CR, DX].")
    body_part_examined: list[str] | None = Field(default=None, description="BodyPartExamined, any case.")
    sop_class_uid: list[str] | None = Field(default=None, description="UIDs or pydicom keywords.")
    image_type: list[str] | None = Field(default=None, description="Values ImageType must all hold.")
    view_position: list[str] | None = Field(default=None, description="ViewPosition, e.g. [PA, AP].")
    laterality: list[str] | None = Field(default=None, description="ImageLaterality (else Laterality).")
    series_description: str | None = Field(default=None, description="Regex searched, any case.")
    protocol_name: str | None = Field(default=None, description="Regex searched in ProtocolName.")
    manufacturer: str | None = Field(default=None, description="Regex searched in Manufacturer, any case.")
    excluded_description: str | None = Field(
        default=None, description="Regex that must NOT be found in SeriesDescription or ProtocolName."
    )
    min_rows: int | None = Field(default=None, ge=1)
    max_rows: int | None = Field(default=None, ge=1)
    min_columns: int | None = Field(default=None, ge=1)
    max_columns: int | None = Field(default=None, ge=1)
    min_instances: int | None = Field(default=None, ge=1)
    max_instances: int | None = Field(default=None, ge=1)
    min_patient_age_years: float | None = Field(default=None, ge=0)
    max_patient_age_years: float | None = Field(default=None, ge=0)
    min_pixel_spacing_mm: float | None = Field(default=None, gt=0)
    max_pixel_spacing_mm: float | None = Field(default=None, gt=0)
    min_slice_thickness_mm: float | None = Field(default=None, gt=0)
    max_slice_thickness_mm: float | None = Field(default=None, gt=0)

    @field_validator(
        "modality", "body_part_examined", "sop_class_uid", "image_type", "view_position", "laterality",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("modality", "body_part_examined", "image_type", "view_position", "laterality")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches nothing; leave the criterion out to match anything")
        return None if value is None else [v.strip().upper() for v in value]

    @field_validator("series_description", "protocol_name", "manufacturer", "excluded_description")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression {value!r}: {exc}") from None
        return value

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
    def _ranges(self) -> Criteria:
        for what in (
            "rows", "columns", "instances", "patient_age_years", "pixel_spacing_mm", "slice_thickness_mm",
        ):  # fmt: skip
            low, high = getattr(self, f"min_{what}"), getattr(self, f"max_{what}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what} {low} is greater than max_{what} {high}")
        return self

    def first_failure(self, attributes: Mapping[str, Any], instance_count: int) -> str | None:
        """The first criterion the series fails, in words, or None when it meets them all."""
        for keyword, allowed in (
            ("Modality", self.modality),
            ("BodyPartExamined", self.body_part_examined),
            ("SOPClassUID", self.sop_class_uid),
            ("ViewPosition", self.view_position),
            ("Laterality", self.laterality),
        ):
            if allowed is None:
                continue
            value = _text(attributes.get(keyword))
            if not value:
                return f"{keyword} missing, wanted one of [{', '.join(allowed)}]"
            candidate = value if keyword == "SOPClassUID" else value.upper()
            if candidate not in allowed:
                return f"{keyword} {value} not in [{', '.join(allowed)}]"
        if self.image_type is not None:
            held = [v.strip().upper() for v in _text(attributes.get("ImageType")).split("\\")]
            missing = [v for v in self.image_type if v not in held]
            if missing:
                return f"ImageType {_text(attributes.get('ImageType'))!r} lacks {', '.join(missing)}"
        for keyword, pattern in (
            ("SeriesDescription", self.series_description),
            ("ProtocolName", self.protocol_name),
            ("Manufacturer", self.manufacturer),
        ):
            if pattern is not None and not re.search(pattern, _text(attributes.get(keyword)), re.IGNORECASE):
                return f"{keyword} {_text(attributes.get(keyword))!r} does not match /{pattern}/"
        if self.excluded_description is not None:
            for keyword in ("SeriesDescription", "ProtocolName"):
                text = _text(attributes.get(keyword))
                if re.search(self.excluded_description, text, re.IGNORECASE):
                    return f"{keyword} {text!r} matches the excluded /{self.excluded_description}/"
        for keyword, low, high in (
            ("Rows", self.min_rows, self.max_rows),
            ("Columns", self.min_columns, self.max_columns),
            ("instance count", self.min_instances, self.max_instances),
            ("PatientAgeYears", self.min_patient_age_years, self.max_patient_age_years),
            ("PixelSpacingMm", self.min_pixel_spacing_mm, self.max_pixel_spacing_mm),
            ("SliceThicknessMm", self.min_slice_thickness_mm, self.max_slice_thickness_mm),
        ):
            if low is None and high is None:
                continue
            number = instance_count if keyword == "instance count" else _number(attributes.get(keyword))
            if number is None:
                return f"{keyword} missing, wanted {_range(low, high)}"
            if (low is not None and number < low) or (high is not None and number > high):
                return f"{keyword} {number:g} not in {_range(low, high)}"
        return None


def _age_years(ds: Dataset) -> float | None:
    match = _AGE.match(_text(ds.get("PatientAge")))
    if match:
        return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)], 2)
    born, seen = _text(ds.get("PatientBirthDate")), _text(ds.get("StudyDate"))
    try:
        birth = date(int(born[:4]), int(born[4:6]), int(born[6:8]))
        study = date(int(seen[:4]), int(seen[4:6]), int(seen[6:8]))
    except ValueError:
        return None
    return round((study - birth).days / 365.25, 2) if study >= birth else None


def _spacing(ds: Dataset) -> float | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and value != "":
            values = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
            numbers = [n for n in (_number(v) for v in values) if n is not None and n > 0]
            if numbers:
                return min(numbers)
    return None


def series_attributes(ds: Dataset) -> dict[str, Any]:
    """The values criteria look at, from one instance's header; None where absent.

    Rows and Columns are ints; PatientAgeYears, PixelSpacingMm (the finer of PixelSpacing, else of
    ImagerPixelSpacing) and SliceThicknessMm floats; ImageType its values joined by a backslash;
    Laterality is ImageLaterality, else Laterality; everything else str.
    """
    attributes: dict[str, Any] = {}
    for keyword in (
        "Modality", "BodyPartExamined", "SeriesDescription", "ProtocolName", "SOPClassUID",
        "Manufacturer", "StudyInstanceUID", "SeriesInstanceUID", "ViewPosition",
    ):  # fmt: skip
        value = _text(ds.get(keyword))
        attributes[keyword] = value or None
    for keyword in ("Rows", "Columns"):
        number = _number(ds.get(keyword))
        attributes[keyword] = None if number is None else int(number)
    image_type = ds.get("ImageType")
    if image_type is not None and not isinstance(image_type, str):
        image_type = "\\".join(str(v) for v in image_type)
    attributes["ImageType"] = _text(image_type) or None
    attributes["Laterality"] = _text(ds.get("ImageLaterality")) or _text(ds.get("Laterality")) or None
    attributes["PatientAgeYears"] = _age_years(ds)
    attributes["PixelSpacingMm"] = _spacing(ds)
    attributes["SliceThicknessMm"] = _number(ds.get("SliceThickness"))
    return attributes
