"""Every object medserve writes passes dicom3tools' ``dciodvfy``: the synthetic examples of each
modality, and the SEG and SR written for a CT segmentation and a chest X-ray classification."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult, Segment
from medserve.clinical.dicom.seg_writer import write_seg
from medserve.clinical.dicom.series_to_volume import series_to_frames, series_to_volume
from medserve.clinical.dicom.sr_writer import write_sr
from medserve.demo import dicom_studies as synthetic

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy is not installed (Debian package dicom3tools)"
)

ALGORITHM = Algorithm("example_model", "1", "ab" * 32, True, "for tests")


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines dciodvfy prints for ``path`` (warnings are allowed)."""
    assert DCIODVFY is not None
    done = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX", "US"])
def test_synthetic_examples_pass_dciodvfy(modality: str, tmp_path: Path) -> None:
    paths = synthetic.write_study(modality, tmp_path, seed=3)
    assert dciodvfy_errors(paths[0]) == []


def _ct_result(tmp_path: Path) -> ImagingResult:
    paths = synthetic.write_study("CT", tmp_path / "ct", seed=5)
    datasets = [pydicom.dcmread(p) for p in paths]
    volume = series_to_volume(datasets)
    label_map = (volume.array > 60).astype(np.uint8)  # the phantom's lesions are +80..150 HU
    lesions = prep.connected_components(label_map, volume.spacing, volume.origin, volume.direction, 10)
    assert lesions, "the phantom has lesions to segment"
    return ImagingResult(
        "ct",
        ALGORITHM,
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].SeriesInstanceUID),
        volume=volume,
        segments=(Segment(1, "lesion"),),
        label_map=label_map,
        lesions=tuple(lesions),
    )


def test_seg_and_sr_of_a_ct_segmentation_pass_dciodvfy(tmp_path: Path) -> None:
    result = _ct_result(tmp_path)
    seg = write_seg(result)
    sr = write_sr(result, seg=seg)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_sr_of_a_chest_xray_classification_passes_dciodvfy(modality: str, tmp_path: Path) -> None:
    paths = synthetic.write_study(modality, tmp_path / "xray", seed=6)
    datasets = [pydicom.dcmread(p) for p in paths]
    frames = series_to_frames(datasets)
    findings = tuple(
        Finding(label, probability, 0.5, 0)
        for label, probability in (("Effusion", 0.8), ("Cardiomegaly", 0.2), ("Pleural_Thickening", 0.1))
    )
    result = ImagingResult(
        "xray",
        ALGORITHM,
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].SeriesInstanceUID),
        frames=frames,
        findings=findings,
    )
    sr = write_sr(result)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_written_results_report_the_patient_and_code_every_finding(tmp_path: Path) -> None:
    import json

    from fhir.resources.R4B.bundle import Bundle

    from medserve.clinical.fhir_report import PATIENT_ID_SYSTEM
    from medserve.imaging.results_writer import patient_id_of, write_results

    paths = synthetic.write_study("CR", tmp_path / "cr", seed=8)
    datasets = [pydicom.dcmread(p) for p in paths]
    result = ImagingResult(
        "xray",
        ALGORITHM,
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].SeriesInstanceUID),
        frames=series_to_frames(datasets),
        findings=(Finding("Cardiomegaly", 0.7, 0.5), Finding("Hernia", 0.1, 0.5)),
    )
    written = write_results(
        result, tmp_path / "out", patient_identifier=(PATIENT_ID_SYSTEM, patient_id_of(result))
    )
    [fhir] = [path for kind, _uid, path in written if kind == "fhir"]
    bundle = json.loads(fhir.read_text())
    Bundle.model_validate(bundle)
    resources = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Device"]
    assert all(r["subject"]["identifier"]["value"] == datasets[0].PatientID for r in resources)
    assert all(r["code"].get("coding") for r in resources)
    for kind, _uid, path in written:
        if kind != "fhir":
            assert dciodvfy_errors(path) == []
