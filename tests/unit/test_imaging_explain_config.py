"""A pipeline's ``explain`` setting: checked when the imaging configuration is read (the method's
parameters by the explanation library, the kind of pipeline), and which findings it explains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medserve.clinical.dicom.results import Finding
from medserve.imaging.config import load_config
from medserve.imaging.explain import ExplainConfig, chosen
from medserve.values.errors import InvalidConfig


def _load(tmp_path: Path, pipeline: dict[str, object]) -> object:
    config = {"pipelines": {"p": pipeline}, "routes": [{"name": "r", "pipeline": "p", "modality": "CR"}]}
    path = tmp_path / "imaging.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return load_config(path, tmp_path)


def test_an_explained_pipeline_carries_its_setting_to_the_spec(tmp_path: Path) -> None:
    explain = {"method": "occlusion", "findings": "top", "parameters": {"window": 32, "stride": 16}}
    config = _load(tmp_path, {"kind": "classification_2d", "model": "m", "explain": explain})
    spec = config.pipeline_specs()["p"]  # type: ignore[attr-defined]
    assert spec.explain is not None and spec.explain.findings == "top"
    assert spec.explain.plan((1, 224, 224)).evaluations == 13 * 13 + 1
    plain = _load(tmp_path, {"kind": "classification_2d", "model": "m"})
    assert plain.pipeline_specs()["p"].explain is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("explain", "kind", "named"),
    [
        ({"method": "occlusion"}, "segmentation_3d", "only classification_2d pipelines are explained"),
        ({"method": "grad_cam"}, "classification_2d", "method"),
        ({"parameters": {"window": 0}}, "classification_2d", "parameter 'window' must be >= 1"),
        ({"parameters": {"steps": 3}}, "classification_2d", "do not apply to method 'occlusion'"),
        ({"parameters": {"window": 1}}, "classification_2d", "the limit is 1000"),
        (
            {"method": "integrated_gradients", "parameters": {"implementation": "captum"}},
            "classification_2d",
            "finite_differences",
        ),
        ({"findings": []}, "classification_2d", "non-empty list of labels"),
        ({"colour": "red"}, "classification_2d", "colour"),
    ],
)
def test_a_bad_explain_setting_is_refused_naming_the_fault(
    tmp_path: Path, explain: dict[str, object], kind: str, named: str
) -> None:
    with pytest.raises(InvalidConfig) as refused:
        _load(tmp_path, {"kind": kind, "model": "m", "explain": explain})
    assert named in str(refused.value)
    assert "explain" in str(refused.value)


def test_the_findings_explained_per_image() -> None:
    findings = [
        Finding("Mass", 0.7, 0.5, 0),
        Finding("Nodule", 0.2, 0.5, 0),
        Finding("Effusion", 0.9, 0.5, 0),
        Finding("Mass", 0.3, 0.5, 1),
        Finding("Nodule", 0.4, 0.5, 1),
    ]
    assert chosen(ExplainConfig(), findings) == [0, 2]  # present ones, none on image 1
    assert chosen(ExplainConfig(max_findings=1), findings) == [2]  # the most probable first
    assert chosen(ExplainConfig(findings="top"), findings) == [2, 4]  # one per image, present or not
    assert chosen(ExplainConfig(findings=["mass"]), findings) == [0, 3]


def test_a_dicom_studies_job_keeps_the_explanation_maps_it_is_given() -> None:
    from medserve.jobs.workloads.dicom import _write_option

    assert "pm" in _write_option(None)  # by default, with the SR that references them
    assert _write_option(["sr", "pm"]) == ("pm", "sr")
