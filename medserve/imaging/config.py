"""The imaging configuration: pipelines, routing rules and export destinations (one YAML file).

```yaml
pipelines:
  ct-lesions:
    kind: segmentation_3d
    model: ct_lesion_segmentation
    intended_use: {modality: CT, min_slice_thickness_mm: 1.5, max_slice_thickness_mm: 3.5}
  chest-xray:
    kind: classification_2d
    model: chest_xray_classifier
    threshold: 0.5
    explain: {method: occlusion, findings: present}   # optional: saliency maps (imaging/explain.py)
routes:                       # first match wins; unmatched series are recorded with the reason
  - {name: ct, pipeline: ct-lesions, modality: CT, body_part_examined: [CHEST, ABDOMEN]}
  - {name: xray, pipeline: chest-xray, modality: [CR, DX], body_part_examined: CHEST, view_position: [PA, AP]}
fhir_subject: identifier       # the FHIR report's subject: identifier (PatientID), pseudonym or none
destinations:                 # every result goes to every destination that takes its kind
  - {name: folder, type: folder, path: /var/lib/medserve/exports}
  - {name: pacs, type: dicom, host: pacs.example, port: 104, called_aet: PACS}
```

A route's criteria and a pipeline's ``intended_use`` are ``medserve.clinical.dicom.criteria.Criteria``.
A series a route sends to a pipeline whose intended use (or its model's
``metadata.intended_use_criteria``) it does not meet is ``unmatched``, with the reason.

Without a file, the server uses :func:`default_config`: the example pipelines behind narrow routes
(:data:`DEFAULT_ROUTES`) and a folder destination ``<data_dir>/exports``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medserve.clinical.dicom.criteria import Criteria
from medserve.clinical.fhir_report import PATIENT_ID_SYSTEM
from medserve.imaging.explain import ExplainConfig
from medserve.imaging.pipelines import KINDS, PipelineSpec
from medserve.values.errors import InvalidConfig


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    model: str
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_lesion_voxels: int = Field(default=10, ge=1)
    priority_class: str = "bulk"
    intended_use: Criteria | None = None
    explain: ExplainConfig | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown pipeline kind '{value}' (one of {', '.join(KINDS)})")
        return value

    @model_validator(mode="after")
    def _explained_kind(self) -> PipelineConfig:
        if self.explain is not None and self.kind != "classification_2d":
            raise ValueError(f"explain: only classification_2d pipelines are explained, not {self.kind}")
        return self


class ImagingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    routes: list[dict[str, Any]] = Field(default_factory=list)
    destinations: list[dict[str, Any]] = Field(default_factory=list)
    fhir_subject: Literal["identifier", "pseudonym", "none"] = Field(
        default="identifier",
        description="The FHIR report's subject: the Patient by the study's PatientID "
        "(in patient_identifier_system), by medserve's pseudonym of it, or none.",
    )
    patient_identifier_system: str = Field(default=PATIENT_ID_SYSTEM, min_length=1)

    def pipeline_specs(self) -> dict[str, PipelineSpec]:
        return {
            name: PipelineSpec(
                name,
                p.kind,
                p.model,
                p.threshold,
                p.min_lesion_voxels,
                p.priority_class,
                p.intended_use,
                p.explain,
            )
            for name, p in self.pipelines.items()
        }


#: What the example models were built for: frontal chest radiographs; axial CT of chest or abdomen
#: at the slice thicknesses the lesion model was trained on (1.5-3.5 mm), original images only.
XRAY_INTENDED_USE: dict[str, Any] = {
    "modality": ["CR", "DX"],
    "body_part_examined": ["CHEST"],
    "view_position": ["PA", "AP"],
}
CT_INTENDED_USE: dict[str, Any] = {
    "modality": ["CT"],
    "body_part_examined": ["CHEST", "ABDOMEN", "CHEST_ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN"],
    "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "min_slice_thickness_mm": 1.5,
    "max_slice_thickness_mm": 3.5,
    "excluded_description": r"calcium|ca[ _-]?scor|cardiac|coronary|angio|head|brain|scout|localizer",
}

#: The default routes: as narrow as the example models' intended use, so nothing else reaches them.
DEFAULT_ROUTES: list[dict[str, Any]] = [
    {"name": "ct", "pipeline": "ct-lesions", **CT_INTENDED_USE},
    {"name": "chest-xray", "pipeline": "chest-xray", **XRAY_INTENDED_USE},
]


def default_config(data_dir: Path) -> ImagingConfig:
    return ImagingConfig(
        pipelines={
            "ct-lesions": PipelineConfig(
                kind="segmentation_3d",
                model="ct_lesion_segmentation",
                intended_use=Criteria.model_validate(CT_INTENDED_USE),
            ),
            "chest-xray": PipelineConfig(
                kind="classification_2d",
                model="chest_xray_classifier",
                intended_use=Criteria.model_validate(XRAY_INTENDED_USE),
            ),
        },
        routes=[dict(route) for route in DEFAULT_ROUTES],
        destinations=[{"name": "folder", "type": "folder", "path": str(data_dir / "exports")}],
    )


def load_config(path: Path | None, data_dir: Path) -> ImagingConfig:
    """The configuration in ``path`` (YAML), or the default when ``path`` is None."""
    if path is None:
        return default_config(data_dir)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidConfig(f"imaging configuration {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidConfig(f"imaging configuration {path}: expected a mapping at the top level")
    try:
        config = ImagingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidConfig(f"imaging configuration {path}: {problems}") from exc
    for rule in config.routes:
        pipeline = rule.get("pipeline")
        if pipeline not in config.pipelines:
            raise InvalidConfig(
                f"imaging configuration {path}: route '{rule.get('name', '?')}' names pipeline "
                f"'{pipeline}', which is not among the pipelines ({', '.join(config.pipelines) or 'none'})"
            )
    return config
