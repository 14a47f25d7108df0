"""Explanations of a 2D imaging pipeline's findings, on request (a pipeline's ``explain`` setting).

```yaml
pipelines:
  chest-xray:
    kind: classification_2d
    model: chest_xray_classifier
    explain: {method: occlusion, findings: present, parameters: {window: 32, stride: 16}}
```

For each image, the findings chosen by ``findings`` (``present``: those at or above their threshold,
the default; ``top``: the most probable finding whether present or not; or a list of labels), at
most ``max_findings`` per image, get an attribution map computed by ``medserve.explanations``
(``occlusion`` or ``integrated_gradients`` by finite differences; the parameters are the library's,
checked when the configuration is read). The perturbed images go to the model through the same
``ModelClient`` as the pipeline's own requests (the batcher, steps of the series' one audited call),
in ``priority_class`` (default ``bulk``, the lowest of the default classes: an explanation never
delays interactive requests). The maps become DICOM Parametric Maps
(``clinical.dicom.parametric_map_writer``) referenced by the SR and the FHIR report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medserve.clinical.dicom.results import Explanation, Finding
from medserve.explanations.methods import MethodPlan, plan_method, run_perturbation
from medserve.imaging.model_client import ModelClient
from medserve.values.errors import InvalidInput

#: Methods an imaging pipeline may ask for: those that run through the model's batcher on any engine.
IMAGING_METHODS = ("occlusion", "integrated_gradients")
#: The input shape the parameters are checked against when the configuration is read (one grey image
#: at the example model's size); a model with another size is checked again when it runs.
CHECK_SHAPE = (1, 224, 224)


class ExplainConfig(BaseModel):
    """A pipeline's ``explain`` setting (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["occlusion", "integrated_gradients"] = "occlusion"
    findings: Literal["present", "top"] | list[str] = "present"
    max_findings: int = Field(default=3, ge=1, le=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    max_evaluations: int = Field(default=1000, ge=2, le=100_000)
    priority_class: str = Field(default="bulk", min_length=1)

    @field_validator("findings")
    @classmethod
    def _labels(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("findings: give 'present', 'top' or a non-empty list of labels")
        return value

    @model_validator(mode="after")
    def _plan(self) -> ExplainConfig:
        if "implementation" in self.parameters and self.parameters["implementation"] != "finite_differences":
            raise ValueError("explain.parameters.implementation: imaging runs 'finite_differences' only")
        try:
            self.plan(CHECK_SHAPE)
        except InvalidInput as exc:
            raise ValueError(f"explain: {exc}") from None
        return self

    def plan(self, shape: Sequence[int]) -> MethodPlan:
        """The method's plan on one input of ``shape``; ``InvalidInput`` names a bad parameter."""
        parameters = dict(self.parameters)
        if self.method == "integrated_gradients":
            parameters["implementation"] = "finite_differences"
        return plan_method(
            self.method, parameters, shape, gradients=False, max_evaluations=self.max_evaluations
        )


def chosen(config: ExplainConfig, findings: Sequence[Finding]) -> list[int]:
    """Indexes into ``findings`` to explain: per image (``Finding.frame``), as ``config.findings``
    says, the most probable first, at most ``config.max_findings``."""
    by_frame: dict[int, list[int]] = {}
    for index, finding in enumerate(findings):
        by_frame.setdefault(finding.frame, []).append(index)
    picked: list[int] = []
    for indexes in by_frame.values():
        ranked = sorted(indexes, key=lambda i: -findings[i].probability)
        if config.findings == "present":
            ranked = [i for i in ranked if findings[i].present]
        elif config.findings == "top":
            ranked = ranked[:1]
        else:
            wanted = {label.lower() for label in config.findings}
            ranked = [i for i in ranked if findings[i].label.lower() in wanted]
        picked += ranked[: config.max_findings]
    return sorted(picked)


def _describe(plan: MethodPlan) -> str:
    shown = {k: v for k, v in plan.parameters.items() if k != "batch_size"}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) + f"; {plan.evaluations} model evaluations"


def explain_findings(
    config: ExplainConfig,
    model: str,
    models: ModelClient,
    images: np.ndarray,
    findings: Sequence[Finding],
    labels: Sequence[str],
    single_frames: Container[int] | None = None,
) -> tuple[Explanation, ...]:
    """Attribution maps of the chosen ``findings`` (run in the pipeline's worker thread).

    ``images``: the model's inputs, ``(frame, rows, columns)``; ``labels``: the model's output labels
    (a finding's class index is its label's position); ``single_frames``: the frames that are whole
    single-frame images (only those are explained; default all). Each map is ``(rows, columns)``.
    """
    indexes = [
        i for i in chosen(config, findings) if single_frames is None or findings[i].frame in single_frames
    ]
    if not indexes:
        return ()
    plan = config.plan((1, *images.shape[1:]))
    explanations: list[Explanation] = []
    for index in indexes:
        finding = findings[index]
        if finding.label not in labels:
            continue
        target = list(labels).index(finding.label)

        async def evaluate(batch: np.ndarray, target: int = target) -> np.ndarray:
            outputs = models.infer_each(model, list(batch), config.priority_class)
            return np.asarray([np.asarray(o).reshape(-1)[target] for o in outputs], dtype=np.float64)

        x = np.asarray(images[finding.frame], dtype=np.float32)[np.newaxis]
        values = asyncio.run(run_perturbation(plan, x, evaluate))
        explanations.append(
            Explanation(index, config.method, np.asarray(values[0], dtype=np.float32), _describe(plan))
        )
    return tuple(explanations)
