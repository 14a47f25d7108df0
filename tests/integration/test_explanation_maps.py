"""Explanation maps written with the results: the DICOM Parametric Map passes dicom3tools' ``dciodvfy``
and reads back with highdicom (float values, real-world value mapping, source reference, frame of
reference), the SR references it from the explained finding's group and as evidence, and the FHIR
report lists it as a Media entry. No model is needed: the map's values are made here."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medserve.clinical.dicom.parametric_map_writer import write_parametric_map
from medserve.clinical.dicom.results import Algorithm, Explanation, Finding, ImagingResult
from medserve.clinical.dicom.series_to_volume import series_to_frames
from medserve.demo import dicom_studies as synthetic
from medserve.imaging.results_writer import write_results

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (dicom3tools)")
ALGORITHM = Algorithm("example_model", "1", "cd" * 32, True, "for tests")


def dciodvfy_errors(path: Path) -> list[str]:
    assert DCIODVFY is not None
    done = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _bump(rows: int, columns: int, row: float, column: float) -> np.ndarray:
    """A map with one positive bump at (row, column) and a shallow negative one elsewhere."""
    r, c = np.mgrid[0:rows, 0:columns].astype(np.float32)
    peak = np.exp(-((r - row) ** 2 + (c - column) ** 2) / (2 * 6.0**2))
    dip = 0.3 * np.exp(-((r - rows + 30) ** 2 + (c - 30) ** 2) / (2 * 10.0**2))
    return np.asarray(0.4 * peak - dip, dtype=np.float32)


def _result(folder: Path, modality: str, *, geometry: bool = False) -> ImagingResult:
    paths = synthetic.write_study(modality, folder, seed=11, findings=["Mass", "Effusion"])
    datasets = [pydicom.dcmread(p) for p in paths]
    if geometry:  # a projection image that carries a frame of reference and plane geometry
        ds = datasets[0]
        ds.FrameOfReferenceUID = generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-200, -200, 0]
    findings = (Finding("Mass", 0.81, 0.5), Finding("Effusion", 0.65, 0.5), Finding("Nodule", 0.1, 0.5))
    return ImagingResult(
        "xray",
        ALGORITHM,
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].SeriesInstanceUID),
        frames=series_to_frames(datasets),
        findings=findings,
        explanations=(
            Explanation(0, "occlusion", _bump(224, 224, 60.0, 150.0), "window [1, 32, 32]"),
            Explanation(1, "integrated_gradients", _bump(224, 224, 180.0, 40.0), "steps 16"),
        ),
    )


@needs_dciodvfy
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_maps_sr_and_report_of_an_explained_radiograph(modality: str, tmp_path: Path) -> None:
    result = _result(tmp_path / "study", modality)
    source = result.frames.sources[0] if result.frames is not None else None
    assert source is not None
    written = write_results(result, tmp_path / "out")
    kinds = [kind for kind, _, _ in written]
    assert kinds == ["pm", "pm", "sr", "fhir"]
    maps = {uid: path for kind, uid, path in written if kind == "pm"}
    for path in maps.values():
        assert dciodvfy_errors(path) == []
    [sr_path] = [path for kind, _, path in written if kind == "sr"]
    assert dciodvfy_errors(sr_path) == []

    first = pydicom.dcmread(next(iter(maps.values())))
    pm = hd.pm.ParametricMap.from_dataset(first)
    values = pm.pixel_array
    assert values.dtype == np.float32 and values.shape == (int(source.Rows), int(source.Columns))
    # the peak of the 224-pixel map lands at the same place of the 512-pixel source (bilinear resize)
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    scale = int(source.Rows) / 224
    assert abs(peak[0] - 60.5 * scale) <= 3 and abs(peak[1] - 150.5 * scale) <= 3
    assert values.min() < 0 < values.max()
    mapping = first.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "OCCLUSION"
    assert mapping.LUTExplanation == "drop in p(Mass) when hidden (occlusion)"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130404"  # Saliency
    first_mapped = float(mapping.DoubleFloatRealWorldValueFirstValueMapped)
    assert first_mapped == pytest.approx(float(values.min()), rel=1e-5)
    derivation = first.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.PatientID == source.PatientID
    # the synthetic radiograph has no frame of reference: the map's own, derived from the source
    assert "FrameOfReferenceUID" not in source
    assert (
        first.FrameOfReferenceUID == write_parametric_map(result, result.explanations[0]).FrameOfReferenceUID
    )
    assert first.ContentQualification == "RESEARCH"
    assert first.SeriesDescription.startswith("RESEARCH USE ONLY AI MAP")
    assert "not show why" in first.ImageComments

    sr = pydicom.dcmread(sr_path)
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert set(maps) <= evidence
    groups = _finding_groups(sr)
    assert _referenced(groups["Mass"]) == {str(source.SOPInstanceUID), _uid_of(maps, "OCCLUSION")}
    assert _referenced(groups["Effusion"]) == {str(source.SOPInstanceUID), _uid_of(maps, "IG")}
    assert _referenced(groups["Nodule"]) == {str(source.SOPInstanceUID)}  # not explained

    [fhir_path] = [path for kind, _, path in written if kind == "fhir"]
    bundle = json.loads(fhir_path.read_text())
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    by_url = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    [report] = [r for r in by_url.values() if r["resourceType"] == "DiagnosticReport"]
    media = [by_url[item["link"]["reference"]] for item in report["media"]]
    assert {m["identifier"][0]["value"] for m in media} == {f"urn:oid:{uid}" for uid in maps}
    assert all(m["content"]["contentType"] == "application/dicom" for m in media)
    assert {item["comment"] for item in report["media"]} == {
        "occlusion explanation map of Mass",
        "integrated_gradients explanation map of Effusion",
    }


@needs_dciodvfy
def test_a_map_keeps_the_frame_of_reference_of_a_source_that_has_one(tmp_path: Path) -> None:
    result = _result(tmp_path / "study", "DX", geometry=True)
    assert result.frames is not None
    pm = write_parametric_map(result, result.explanations[0])
    pm.save_as(tmp_path / "pm.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "pm.dcm") == []
    assert pm.FrameOfReferenceUID == result.frames.sources[0].FrameOfReferenceUID


def test_maps_that_cannot_be_written_are_refused_with_the_reason(tmp_path: Path) -> None:
    result = _result(tmp_path / "study", "CR")
    with pytest.raises(ValueError, match="finding 7"):
        write_parametric_map(result, Explanation(7, "occlusion", np.zeros((4, 4), np.float32)))
    with pytest.raises(ValueError, match="finite 2D array"):
        write_parametric_map(result, Explanation(0, "occlusion", np.full((4, 4), np.nan, np.float32)))
    with pytest.raises(ValueError, match="finite 2D array"):
        write_parametric_map(result, Explanation(0, "occlusion", np.zeros((2, 4, 4), np.float32)))


def _finding_groups(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """Finding label -> its measurement group (TID 1501) in the SR's content."""
    groups: dict[str, pydicom.Dataset] = {}
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            for child in group.get("ContentSequence", []):
                if child.ConceptNameCodeSequence[0].CodeValue == "112039":  # Tracking Identifier
                    groups[str(child.TextValue)] = group
    return groups


def _referenced(group: pydicom.Dataset) -> set[str]:
    return {
        str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for child in group.ContentSequence
        if child.ValueType == "IMAGE"
    }


def _uid_of(maps: dict[str, Path], lut_label: str) -> str:
    for uid, path in maps.items():
        mapping = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        if mapping.LUTLabel == lut_label:
            return uid
    raise AssertionError(f"no map labelled {lut_label}")


def test_a_map_that_cannot_be_written_leaves_the_report_without_it(tmp_path: Path) -> None:
    result = _result(tmp_path / "study", "CR")
    broken = Explanation(0, "occlusion", np.full((8, 8), np.nan, np.float32))
    kept = result.explanations[1]
    written = write_results(replace(result, explanations=(broken, kept)), tmp_path / "out")
    assert [kind for kind, _, _ in written] == ["pm", "sr", "fhir"]
    [pm_uid] = [uid for kind, uid, _ in written if kind == "pm"]
    [sr_path] = [path for kind, _, path in written if kind == "sr"]
    groups = _finding_groups(pydicom.dcmread(sr_path))
    assert len(_referenced(groups["Mass"])) == 1 and pm_uid in _referenced(groups["Effusion"])
