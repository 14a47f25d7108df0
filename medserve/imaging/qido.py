"""QIDO-RS (PS3.18 10.6): study, series and instance searches over the catalog, as DICOM JSON.

Query keys are attribute keywords or tags (``PatientID`` or ``00100020``) with PS3.4 C.2.2.2
matching: single value (case-sensitive; case-insensitive for PN), wildcards ``*`` and ``?`` (not for
dates, times or UIDs), UID lists (``\\`` or ``,`` separated), and ranges ``a-b``, ``-b``, ``a-`` for
DA, TM and DT. ``ModalitiesInStudy`` matches a study when any of its series does. ``limit`` and
``offset`` page the sorted matches; ``includefield`` (keywords, tags, or ``all``) adds attributes.
An unknown key, a malformed range or a bad ``limit`` / ``offset`` is a 400 naming it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from medserve.imaging.dicomweb_catalog import CatalogEntry
from medserve.values.errors import InvalidInput

LEVELS = ("study", "series", "instance")
MAX_LIMIT = 1000

_STUDY = (
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
)  # fmt: skip
_SERIES = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "SeriesDate",
    "BodyPartExamined",
)
_INSTANCE = (
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip
#: The attributes each level returns (PS3.18 Tables 10.6.3-3 to -5), before ``includefield``.
RETURNED = {"study": _STUDY, "series": _SERIES, "instance": _INSTANCE}
_NO_WILDCARDS = {"DA", "TM", "DT", "UI"}
_COMPUTED = {
    "ModalitiesInStudy": "CS", "NumberOfStudyRelatedSeries": "IS", "NumberOfStudyRelatedInstances": "IS",
    "NumberOfSeriesRelatedInstances": "IS",
}  # fmt: skip


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS query: the matching keys, the page and the extra attributes."""

    keys: tuple[tuple[str, str], ...]
    limit: int
    offset: int
    include: tuple[str, ...]
    include_all: bool


def _keyword(key: str) -> str:
    text = key.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        found = keyword_for_tag(int(text, 16))
        if found:
            return found
    elif text in _COMPUTED or tag_for_keyword(text) is not None:
        return text
    raise InvalidInput(f"unknown QIDO-RS attribute '{key[:64]}' (a DICOM keyword or 8-digit tag)")


def _count(name: str, text: str, default: int) -> int:
    if text == "":
        return default
    if not text.isdigit():
        raise InvalidInput(f"QIDO-RS '{name}' must be a non-negative integer, not '{text[:32]}'")
    return int(text)


def parse_query(params: Iterable[tuple[str, str]]) -> Query:
    keys: list[tuple[str, str]] = []
    include: list[str] = []
    include_all = False
    limit, offset = MAX_LIMIT, 0
    for name, value in params:
        if name == "limit":
            limit = min(_count("limit", value, MAX_LIMIT), MAX_LIMIT)
        elif name == "offset":
            offset = _count("offset", value, 0)
        elif name == "includefield":
            for field in filter(None, (f.strip() for f in value.split(","))):
                if field == "all":
                    include_all = True
                else:
                    include.append(_keyword(field))
        elif name == "fuzzymatching":
            continue  # not offered: matching stays exact, as PS3.18 allows
        else:
            keyword = _keyword(name)
            if value != "":
                keys.append((keyword, value))
    return Query(tuple(keys), limit, offset, tuple(include), include_all)


def _vr(keyword: str) -> str:
    if keyword in _COMPUTED:
        return _COMPUTED[keyword]
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else "UN"


def _values(record: pydicom.Dataset, keyword: str) -> list[str]:
    value = record.get(keyword)
    if value is None or value == "":
        return []
    items = value if isinstance(value, pydicom.multival.MultiValue | list) else [value]
    return [str(v) for v in items]


def _range_matches(value: str, pattern: str, keyword: str) -> bool:
    low, dash, high = pattern.partition("-")
    if not dash:
        return value == pattern
    if not low and not high:
        raise InvalidInput(f"QIDO-RS range for '{keyword}' has neither end")
    width = max(len(low), len(high))
    value = value[:width] if width else value
    return (not low or value >= low) and (not high or value <= high)


def _matches_one(value: str, pattern: str, vr: str, keyword: str) -> bool:
    if vr == "UI":
        return value in {p.strip() for p in pattern.replace(",", "\\").split("\\")}
    if vr in {"DA", "TM", "DT"}:
        return _range_matches(value.replace(":", ""), pattern.replace(":", ""), keyword)
    if vr == "PN":
        value, pattern = value.upper(), pattern.upper()
    if vr not in _NO_WILDCARDS and ("*" in pattern or "?" in pattern):
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


def matches(record: pydicom.Dataset, query: Query) -> bool:
    for keyword, pattern in query.keys:
        vr = _vr(keyword)
        values = _values(record, keyword)
        if not any(_matches_one(v, pattern, vr, keyword) for v in values):
            return False
    return True


def _study_record(entries: Sequence[CatalogEntry]) -> pydicom.Dataset:
    record = _copy(entries[0].header, _STUDY)
    modalities = sorted({str(e.header.get("Modality", "")) for e in entries} - {""})
    record.ModalitiesInStudy = modalities
    record.NumberOfStudyRelatedSeries = len({e.series_uid for e in entries})
    record.NumberOfStudyRelatedInstances = len(entries)
    return record


def _copy(header: pydicom.Dataset, keywords: Iterable[str]) -> pydicom.Dataset:
    record = pydicom.Dataset()
    for keyword in keywords:
        if keyword in header:
            record[keyword] = header[keyword]
    return record


def records(entries: Sequence[CatalogEntry], level: str) -> list[tuple[pydicom.Dataset, pydicom.Dataset]]:
    """(record, first header) per study, series or instance: a record holds the matching attributes."""
    if level == "instance":
        return [(_copy(e.header, _STUDY + _SERIES + _INSTANCE), e.header) for e in entries]
    groups: dict[str, list[CatalogEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.study_uid if level == "study" else entry.series_uid, []).append(entry)
    out = []
    for group in groups.values():
        study = _study_record([e for e in entries if e.study_uid == group[0].study_uid])
        if level == "study":
            out.append((study, group[0].header))
            continue
        record = _copy(group[0].header, _SERIES)
        record.NumberOfSeriesRelatedInstances = len(group)
        for element in study:
            if element.keyword not in record:
                record.add(element)
        out.append((record, group[0].header))
    return out


def search(entries: Sequence[CatalogEntry], level: str, query: Query, base: str) -> list[dict[str, Any]]:
    """The DICOM JSON answer to ``query`` at ``level`` over ``entries``, sorted and paged."""
    found = [(r, h) for r, h in records(entries, level) if matches(r, query)]
    found.sort(key=lambda pair: tuple(str(pair[0].get(k, "")) for k in _SORT[level]))
    page = found[query.offset : query.offset + query.limit]
    return [_json(record, header, level, query, base) for record, header in page]


_SORT = {
    "study": ("StudyDate", "StudyTime", "StudyInstanceUID"),
    "series": ("StudyInstanceUID", "SeriesNumber", "SeriesInstanceUID"),
    "instance": ("SeriesInstanceUID", "InstanceNumber", "SOPInstanceUID"),
}


def _json(
    record: pydicom.Dataset, header: pydicom.Dataset, level: str, query: Query, base: str
) -> dict[str, Any]:
    out = pydicom.Dataset()
    if query.include_all:
        for element in header:
            if element.tag.group > 0x0002 and element.VR not in {"OB", "OW", "OF", "OD", "OL", "UN"}:
                out.add(element)
    wanted = set(RETURNED[level]) | set(query.include) | {k for k, _ in query.keys}
    if level != "study":
        wanted |= {"StudyInstanceUID"} | (set(_SERIES) if level == "instance" else set())
    if level == "study":
        wanted |= {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
    if level == "series":
        wanted |= {"NumberOfSeriesRelatedInstances"}
    for keyword in wanted:
        source = record if keyword in record else header
        if keyword in source and keyword not in out:
            out[keyword] = source[keyword]
    url = f"{base}/studies/{record.StudyInstanceUID}"
    if level != "study":
        url += f"/series/{record.SeriesInstanceUID}"
    if level == "instance":
        url += f"/instances/{record.SOPInstanceUID}"
    out.add_new(0x00081190, "UR", url)  # RetrieveURL
    return out.to_json_dict(bulk_data_threshold=1 << 20)
