"""QIDO-RS query parsing and PS3.4 attribute matching (imaging/qido.py)."""

from __future__ import annotations

import pydicom
import pytest

from medserve.imaging import qido
from medserve.values.errors import InvalidInput


def _record() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientID = "MRN-0042"
    ds.PatientName = "Doe^Jane"
    ds.StudyDate = "20240315"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.ModalitiesInStudy = ["CT", "SEG", "SR"]
    return ds


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("PatientID", "MRN-0042")], True),
        ([("00100020", "MRN-0042")], True),
        ([("PatientID", "MRN-*")], True),
        ([("PatientID", "MRN-004?")], True),
        ([("PatientID", "mrn-0042")], False),
        ([("PatientName", "doe^*")], True),
        ([("StudyDate", "20240101-20241231")], True),
        ([("StudyDate", "20240316-")], False),
        ([("StudyDate", "-20240315")], True),
        ([("StudyInstanceUID", "9.9,1.2.3.4")], True),
        ([("StudyInstanceUID", "1.2.3.*")], False),
        ([("ModalitiesInStudy", "SEG")], True),
        ([("ModalitiesInStudy", "MR")], False),
        ([("AccessionNumber", "A1")], False),
        ([("PatientID", "")], True),
    ],
)
def test_matching(params: list[tuple[str, str]], expected: bool) -> None:
    assert qido.matches(_record(), qido.parse_query(params)) is expected


def test_paging_and_include_fields() -> None:
    query = qido.parse_query(
        [
            ("limit", "5000"),
            ("offset", "3"),
            ("includefield", "00280010,SeriesDescription"),
            ("fuzzymatching", "true"),
        ]
    )
    assert (query.limit, query.offset) == (qido.MAX_LIMIT, 3)
    assert query.include == ("Rows", "SeriesDescription") and not query.include_all
    assert qido.parse_query([("includefield", "all")]).include_all


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ([("NoSuchKeyword", "1")], "NoSuchKeyword"),
        ([("limit", "-1")], "limit"),
        ([("offset", "x")], "offset"),
        ([("includefield", "Nope")], "Nope"),
        ([("StudyDate", "-")], "StudyDate"),
    ],
)
def test_bad_queries_name_what_is_wrong(params: list[tuple[str, str]], named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        qido.matches(_record(), qido.parse_query(params))
