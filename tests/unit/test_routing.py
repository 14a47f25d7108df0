"""Routing rules: matching, first-match order, reasons for non-matches, YAML loading and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage

from medserve.clinical.dicom.routing import RoutingRule, load_rules, route, series_attributes
from medserve.values.errors import InvalidConfig

RULES_YAML = """\
rules:
  - name: ct-chest
    pipeline: ct-lung-nodules
    modality: CT
    body_part_examined: [CHEST, thorax]
    series_description: "lung|chest"
    min_instances: 50
  - name: chest-xray
    pipeline: cxr-findings
    modality: [CR, DX]
    min_rows: 1024
    min_columns: 1024
  - name: mr-brain
    pipeline: mr-brain-seg
    modality: MR
    body_part_examined: [HEAD, BRAIN]
    sop_class_uid: [MRImageStorage, 1.2.840.10008.5.1.4.1.1.4.1]
    manufacturer: "siemens|ge"
    max_instances: 400
"""


def attributes(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Modality": "CT",
        "BodyPartExamined": "CHEST",
        "SeriesDescription": "Thorax 1.0 Lung",
        "Rows": 512,
        "Columns": 512,
        "SOPClassUID": CTImageStorage,
        "Manufacturer": "SIEMENS",
    }
    base.update(values)
    return base


@pytest.fixture()
def rules(tmp_path: Path) -> list[RoutingRule]:
    path = tmp_path / "routing.yaml"
    path.write_text(RULES_YAML, encoding="utf-8")
    return load_rules(path)


def test_matching_series_goes_to_the_rules_pipeline(rules: list[RoutingRule]) -> None:
    decision = route(rules, attributes(), instance_count=120)
    assert (decision.pipeline, decision.rule) == ("ct-lung-nodules", "ct-chest")
    assert decision.reason == "matched rule 'ct-chest'"


def test_case_insensitive_body_part_and_description(rules: list[RoutingRule]) -> None:
    decision = route(rules, attributes(BodyPartExamined="thorax", SeriesDescription="CHEST W/O"), 60)
    assert decision.pipeline == "ct-lung-nodules"


def test_no_match_gives_each_rules_first_failure(rules: list[RoutingRule]) -> None:
    decision = route(rules, attributes(Modality="MR", BodyPartExamined="HEAD"), instance_count=10)
    assert decision.pipeline is None and decision.rule is None
    assert decision.reason == (
        "no rule matched: rule 'ct-chest': Modality MR not in [CT]; "
        "rule 'chest-xray': Modality MR not in [CR, DX]; "
        f"rule 'mr-brain': SOPClassUID {CTImageStorage} not in "
        "[1.2.840.10008.5.1.4.1.1.4, 1.2.840.10008.5.1.4.1.1.4.1]"
    )


@pytest.mark.parametrize(
    ("values", "count", "failure"),
    [
        ({"BodyPartExamined": None}, 100, "BodyPartExamined missing, wanted one of [CHEST, THORAX]"),
        ({"BodyPartExamined": "ABDOMEN"}, 100, "BodyPartExamined ABDOMEN not in [CHEST, THORAX]"),
        ({"SeriesDescription": "Abdomen"}, 100, "SeriesDescription 'Abdomen' does not match /lung|chest/"),
        ({}, 20, "instance count 20 not in [50..]"),
    ],
)
def test_ct_chest_failures(
    rules: list[RoutingRule], values: dict[str, Any], count: int, failure: str
) -> None:
    decision = route(rules[:1], attributes(**values), count)
    assert decision.reason == f"no rule matched: rule 'ct-chest': {failure}"


def test_size_criteria(rules: list[RoutingRule]) -> None:
    xray = attributes(Modality="DX", Rows=2048, Columns=2500)
    assert route(rules, xray, 1).pipeline == "cxr-findings"
    small = route(rules[1:2], attributes(Modality="CR", Rows=512), 1)
    assert small.reason == "no rule matched: rule 'chest-xray': Rows 512 not in [1024..]"
    missing = route(rules[1:2], attributes(Modality="CR", Rows=2048, Columns=None), 1)
    assert missing.reason == "no rule matched: rule 'chest-xray': Columns missing, wanted [1024..]"


def test_sop_class_keywords_and_manufacturer(rules: list[RoutingRule]) -> None:
    mr = attributes(Modality="MR", BodyPartExamined="Brain", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    assert route(rules, mr, 200).pipeline == "mr-brain-seg"
    philips = route(rules[2:], {**mr, "Manufacturer": "Philips"}, 200)
    assert philips.reason.endswith("Manufacturer 'Philips' does not match /siemens|ge/")
    assert route(rules[2:], mr, 401).reason.endswith("instance count 401 not in [..400]")


def test_first_matching_rule_wins() -> None:
    rules = load_rules(
        [
            {"name": "any-ct", "pipeline": "generic", "modality": "CT"},
            {"name": "ct-chest", "pipeline": "chest", "modality": "CT", "body_part_examined": "CHEST"},
        ]
    )
    assert route(rules, attributes(), 1).rule == "any-ct"
    assert route(list(reversed(rules)), attributes(), 1).rule == "ct-chest"
    assert route([], attributes(), 1).reason == "no routing rules are configured"
    catch_all = load_rules([{"name": "all", "pipeline": "p"}])
    assert route(catch_all, {}, 1).pipeline == "p"


def test_top_level_list_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("- name: a\n  pipeline: p\n  modality: ct\n", encoding="utf-8")
    [rule] = load_rules(path)
    assert rule.modality == ["CT"]
    path.write_text("", encoding="utf-8")
    assert load_rules(str(path)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - name: ct\n    pipeline: p\n    modalty: CT\n",
            r"rule 1 'ct': field 'modalty': Extra inputs",
        ),
        (
            "rules:\n  - name: ct\n    pipeline: p\n    series_description: '(lung'\n",
            r"rule 1 'ct': .*regular",
        ),
        (
            "rules:\n  - name: ct\n    pipeline: p\n    min_rows: 10\n    max_rows: 5\n",
            r"min_rows 10 is greater",
        ),
        ("rules:\n  - name: a\n    pipeline: p\n  - pipeline: q\n", r"rule 2: field 'name': Field required"),
        ("rules:\n  - name: a\n    pipeline: p\n  - name: a\n    pipeline: q\n", r"repeated: a"),
        ("rules:\n  - name: a\n    pipeline: p\n    sop_class_uid: NotAStorageClass\n", r"neither a UID"),
        ("rules:\n  - name: a\n    pipeline: p\n    modality: []\n", r"field 'modality'.*empty list"),
        ("rules:\n  - name: a\n    pipeline: p\n    min_instances: 0\n", r"field 'min_instances'"),
        ("rules: [\n", r"not valid YAML"),
        ("rules: 3\n", r"expected a list of rules"),
        ("routes: []\n", r"expected a 'rules' list"),
        ("rules:\n  - just-a-string\n", r"rule 1: expected a mapping"),
    ],
)
def test_yaml_errors_name_the_file_rule_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidConfig, match=message) as caught:
        load_rules(path)
    assert str(caught.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="cannot read routing rules"):
        load_rules(tmp_path / "absent.yaml")


def test_series_attributes_from_an_instance() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    found = series_attributes(ds)
    assert found["Modality"] == "CT" and found["Rows"] == 128 and found["Columns"] == 128
    assert found["SOPClassUID"] == CTImageStorage and found["Manufacturer"] == "GE MEDICAL SYSTEMS"
    assert found["BodyPartExamined"] is None and found["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert all(isinstance(v, str | int | float) or v is None for v in found.values())
    rules = load_rules(
        [{"name": "ge-ct", "pipeline": "ct", "modality": "CT", "sop_class_uid": "CTImageStorage"}]
    )
    assert route(rules, found, 1).pipeline == "ct"
