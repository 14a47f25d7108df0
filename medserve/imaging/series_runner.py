"""Run one DICOM series through its imaging pipeline under one audit record: the imaging service
(series received over DIMSE or STOW-RS) and the ``dicom_studies`` job (series read from a folder) both
run their series here, through ``InferenceService`` only.

In order: the caller must be allowed to infer with the pipeline's model (checked before anything is
loaded for it); a model that is not loaded is loaded as the repository API would load it (``manage``
on the model, a ``model.load`` record); then one ``InferenceService.call`` (an ``inference`` record
with the serving version, the artifact digest, the patient and study pseudonyms, digests of the
instance file names and of the summary) wraps reading the instances and running the pipeline in a
worker thread, whose model requests go through the batchers as steps of that call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medserve.clinical.dicom.criteria import series_attributes
from medserve.clinical.dicom.results import ImagingResult
from medserve.clinical.dicom.series_to_volume import SeriesRejected
from medserve.core.service import InferenceService
from medserve.imaging.model_client import ModelClient
from medserve.imaging.pipelines import OutsideIntendedUse, PipelineSpec, intended_use_failure, run_pipeline
from medserve.values.access import Action, Caller


def digest(parts: Sequence[str]) -> str:
    """The SHA-256 of a list of strings (file names, a summary), for audit records."""
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()


async def run_series(
    service: InferenceService,
    caller: Caller,
    spec: PipelineSpec,
    paths: Sequence[Path],
    *,
    patient: str,
    study: str,
    request_id: str = "",
    name_of: Callable[[Path], str] = lambda path: path.name,
    timeout_s: float = 600.0,
) -> ImagingResult:
    """The pipeline's result for the series stored in ``paths``, audited as one inference.

    ``request_id``: the audit record's (default the caller's); ``name_of``: how an instance that
    cannot be read is named in the ``SeriesRejected`` it raises; ``timeout_s``: the longest a single
    batch of model requests may take. Raises ``PermissionDenied`` (not audited, as at every door),
    ``SeriesRejected`` for a series the pipeline cannot use (``OutsideIntendedUse`` for one outside the
    pipeline's or its model's intended use), any other ``MedserveError`` for a model
    that cannot be loaded or run.
    """
    caller.principal.require(Action.INFER, spec.model)
    await service.ensure_loaded(spec.model, caller)
    models = ModelClient(service, caller, asyncio.get_running_loop(), timeout_s=timeout_s)
    facts = {"request_id": request_id} if request_id else {}

    async def work() -> ImagingResult:
        result = await asyncio.to_thread(_read_and_run, spec, paths, models, name_of)
        used = models.used.get(spec.model)
        if used is not None:
            facts.update(model_version=used.version, model_digest=used.digest, device=used.device)
        return result

    return await service.call(
        caller,
        spec.model,
        work,
        input_digest=digest(sorted(p.name for p in paths)),
        output_digest=lambda result: digest([result.summary]),
        patient=patient,
        study=study,
        facts=facts,
    )


def _read_and_run(
    spec: PipelineSpec, paths: Sequence[Path], models: ModelClient, name_of: Callable[[Path], str]
) -> ImagingResult:
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise SeriesRejected(f"instance {name_of(path)} cannot be read: {exc}") from exc
    if not datasets:
        raise SeriesRejected("the series has no instances")
    metadata = dict(models.info(spec.model).metadata)
    failure = intended_use_failure(spec, metadata, series_attributes(datasets[0]), len(datasets))
    if failure is not None:
        raise OutsideIntendedUse(failure)
    return run_pipeline(spec, datasets, models)
