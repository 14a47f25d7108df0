"""Writes an ``ImagingResult`` as files: a DICOM SEG (segmentations), a Parametric Map per explained
finding (kind ``pm``), a Comprehensive 3D SR (TID 1500) referencing them, and a FHIR R4 transaction
Bundle (DiagnosticReport + Observations, the maps as Media), each atomically.

Returns ``(kind, uid, path)`` for each file, for the results table and the export outbox.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid

from medserve.clinical.dicom.parametric_map_writer import write_parametric_map
from medserve.clinical.dicom.results import ImagingResult
from medserve.clinical.dicom.seg_writer import write_seg
from medserve.clinical.dicom.sr_writer import write_sr
from medserve.clinical.fhir_report import diagnostic_report

log = logging.getLogger(__name__)


def patient_id_of(result: ImagingResult) -> str:
    """The PatientID of the result's source images ("" when they carry none)."""
    sources = result.frames.sources if result.frames is not None else ()
    if not sources and result.volume is not None:
        sources = result.volume.sources
    return str(sources[0].get("PatientID", "") or "").strip() if sources else ""


def write_results(
    result: ImagingResult, folder: Path, *, patient_identifier: tuple[str, str] | None = None
) -> list[tuple[str, str, Path]]:
    """Write ``result``'s SEG (when it segments), SR and FHIR Bundle under ``folder``.

    ``patient_identifier`` (system, value) is the FHIR report's subject (see ``diagnostic_report``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str, Path]] = []
    seg = None
    if result.label_map is not None and result.volume is not None:
        seg = write_seg(result)
        path = folder / f"SEG-{seg.SOPInstanceUID}.dcm"
        _atomic(path, lambda target: seg.save_as(target, enforce_file_format=True))
        written.append(("seg", str(seg.SOPInstanceUID), path))
    maps: dict[int, Dataset] = {}
    map_series = generate_uid()
    for number, explanation in enumerate(result.explanations, start=1):
        try:
            pm = write_parametric_map(
                result, explanation, series_instance_uid=map_series, instance_number=number
            )
        except ValueError as exc:  # a map that cannot be written must not hold back the report
            log.warning("explanation map of finding %d not written: %s", explanation.finding, exc)
            continue
        path = folder / f"PM-{pm.SOPInstanceUID}.dcm"
        _atomic(path, functools.partial(_save, pm))
        written.append(("pm", str(pm.SOPInstanceUID), path))
        maps[explanation.finding] = pm
    sr = write_sr(result, seg=seg, explanation_maps=maps)
    sr_path = folder / f"SR-{sr.SOPInstanceUID}.dcm"
    _atomic(sr_path, lambda target: sr.save_as(target, enforce_file_format=True))
    written.append(("sr", str(sr.SOPInstanceUID), sr_path))
    bundle = diagnostic_report(
        result,
        sr_uid=str(sr.SOPInstanceUID),
        seg_uid=str(seg.SOPInstanceUID) if seg is not None else None,
        patient_identifier=patient_identifier,
        explanation_maps={
            e.finding: (str(maps[e.finding].SOPInstanceUID), e.method)
            for e in result.explanations
            if e.finding in maps
        },
    )
    bundle_id = str(bundle.setdefault("id", str(uuid.uuid4())))  # stable across resends
    fhir_path = folder / f"FHIR-{bundle_id}.json"
    text = json.dumps(bundle, indent=2, sort_keys=True)
    _atomic(fhir_path, lambda target: Path(target).write_text(text, encoding="utf-8"))
    written.append(("fhir", bundle_id, fhir_path))
    return written


def _save(dataset: Dataset, target: str) -> None:
    dataset.save_as(target, enforce_file_format=True)


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(str(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
