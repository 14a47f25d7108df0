"""Safe routing: the default rules send only what the example models were built for, a pipeline checks
its (and its model's) intended use, and the new criteria read the header as a radiographer would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from medserve.clinical.dicom.criteria import Criteria, series_attributes
from medserve.clinical.dicom.routing import explain, load_rules, route
from medserve.demo import dicom_studies as synthetic
from medserve.imaging.config import default_config
from medserve.imaging.pipelines import PipelineSpec, intended_use_failure
from medserve.values.errors import InvalidConfig


def _first(modality: str, tmp_path: Path, **changes: Any) -> tuple[dict[str, Any], int]:
    paths = synthetic.write_study(modality, tmp_path / modality, seed=21)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return series_attributes(ds), len(paths)


def _default_route(tmp_path: Path, attributes: dict[str, Any], count: int) -> str | None:
    return route(load_rules(default_config(tmp_path).routes), attributes, count).pipeline


def test_the_synthetic_chest_studies_still_route_to_their_pipelines(tmp_path: Path) -> None:
    assert _default_route(tmp_path, *_first("CR", tmp_path)) == "chest-xray"
    assert _default_route(tmp_path, *_first("DX", tmp_path)) == "chest-xray"
    assert _default_route(tmp_path, *_first("CT", tmp_path)) == "ct-lesions"


@pytest.mark.parametrize("view", ["AP", "LL"])
def test_a_cervical_spine_radiograph_does_not_reach_the_chest_model(tmp_path: Path, view: str) -> None:
    attributes, count = _first("DX", tmp_path, BodyPartExamined="CSPINE", ViewPosition=view)
    decision = route(load_rules(default_config(tmp_path).routes), attributes, count)
    assert decision.pipeline is None
    assert "BodyPartExamined CSPINE not in [CHEST]" in decision.reason


def test_a_lateral_chest_radiograph_does_not_reach_the_frontal_model(tmp_path: Path) -> None:
    attributes, count = _first("CR", tmp_path, ViewPosition="LL")
    assert _default_route(tmp_path, attributes, count) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"BodyPartExamined": "HEAD", "SeriesDescription": "Head routine"},
        {"SeriesDescription": "Calcium Score 3.0", "SliceThickness": 3.0},
        {"BodyPartExamined": "HEART", "SeriesDescription": "CaScoring"},
        {"SliceThickness": 5.0},
        {"SliceThickness": 0.625},
        {"ImageType": ["DERIVED", "SECONDARY", "MPR"]},
    ],
)
def test_ct_outside_the_lesion_models_build_is_not_routed(tmp_path: Path, changes: dict[str, Any]) -> None:
    attributes, count = _first("CT", tmp_path, **changes)
    assert _default_route(tmp_path, attributes, count) is None


def test_explain_names_each_rules_first_failure(tmp_path: Path) -> None:
    attributes, count = _first("DX", tmp_path, BodyPartExamined="CSPINE")
    explained = explain(load_rules(default_config(tmp_path).routes), attributes, count)
    assert [(rule.name, failure) for rule, failure in explained] == [
        ("ct", "Modality DX not in [CT]"),
        ("chest-xray", "BodyPartExamined CSPINE not in [CHEST]"),
    ]


def test_a_pipeline_checks_its_own_and_its_models_intended_use(tmp_path: Path) -> None:
    attributes, count = _first("CR", tmp_path)
    broad = PipelineSpec("xray", "classification_2d", "chest_xray_classifier")
    assert intended_use_failure(broad, {}, attributes, count) is None
    narrow = PipelineSpec("xray", "classification_2d", "m", intended_use=Criteria(min_patient_age_years=18))
    assert "PatientAgeYears missing" in str(intended_use_failure(narrow, None, attributes, count))
    adult = {"intended_use_criteria": {"modality": "DX", "min_pixel_spacing_mm": 0.1}}
    failure = intended_use_failure(broad, adult, attributes, count)
    assert failure == "outside the intended use of model 'chest_xray_classifier': Modality CR not in [DX]"
    with pytest.raises(InvalidConfig, match="intended_use_criteria is not valid"):
        intended_use_failure(broad, {"intended_use_criteria": {"colour": "blue"}}, attributes, count)


def test_series_attributes_read_age_spacing_thickness_and_image_type(tmp_path: Path) -> None:
    attributes, _ = _first("CT", tmp_path, PatientAge="045Y")
    assert attributes["PatientAgeYears"] == 45.0 and attributes["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert attributes["SliceThicknessMm"] > 0 and attributes["PixelSpacingMm"] > 0
    born, _ = _first("CR", tmp_path, PatientBirthDate="19800101", StudyDate="20200101")
    assert born["PatientAgeYears"] == pytest.approx(40.0, abs=0.01)
    assert "PatientBirthDate" not in born
    rules = load_rules(
        [{"name": "adult", "pipeline": "p", "min_patient_age_years": 18, "max_patient_age_years": 30}]
    )
    assert route(rules, born, 1).reason == "no rule matched: rule 'adult': PatientAgeYears 40 not in [18..30]"


def test_explain_route_command_prints_the_match_and_each_other_rules_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medserve.cli.main import main

    chest = synthetic.write_study("DX", tmp_path / "chest", seed=31)[0]
    spine = pydicom.dcmread(synthetic.write_study("DX", tmp_path / "spine", seed=32)[0])
    spine.BodyPartExamined = "CSPINE"
    spine.save_as(tmp_path / "spine.dcm")
    assert main(["imaging", "explain-route", str(chest), str(tmp_path / "spine.dcm")]) == 0
    printed = capsys.readouterr().out
    chest_part, spine_part = printed.split("series of 1 instance(s)")[1:]
    assert "rule 'chest-xray' -> pipeline 'chest-xray': MATCHES" in chest_part
    assert "rule 'ct': no: Modality DX not in [CT]" in chest_part
    assert "rule 'chest-xray': no: BodyPartExamined CSPINE not in [CHEST]" in spine_part
    assert "=> unmatched: no rule matches" in spine_part
