"""No DICOM UID in a log line: medserve's own and third-party libraries' (highdicom, pydicom)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest

from medserve.clinical.dicom.results import Algorithm, Finding, ImagingResult
from medserve.clinical.dicom.series_to_volume import series_to_frames
from medserve.clinical.dicom.sr_writer import write_sr
from medserve.clinical.dicom.uid_redaction import install, redact, uid_ref
from medserve.demo import dicom_studies as synthetic


def test_redact_hides_instance_uids_but_keeps_the_standards_and_addresses() -> None:
    text = "study 1.2.826.0.1.3680043.8.498.123456789 in 1.2.840.10008.1.2.4.70 from 10.0.0.12"
    assert redact(text) == (
        f"study {uid_ref('1.2.826.0.1.3680043.8.498.123456789')} in 1.2.840.10008.1.2.4.70 from 10.0.0.12"
    )


def test_highdicom_and_pydicom_log_lines_carry_no_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="highdicom")  # its INFO lines name the source instance
    install()
    datasets = [pydicom.dcmread(p) for p in synthetic.write_study("CR", tmp_path, seed=11)]
    study, instance = str(datasets[0].StudyInstanceUID), str(datasets[0].SOPInstanceUID)
    result = ImagingResult(
        "xray",
        Algorithm("m", "1", "cd" * 32),
        study,
        str(datasets[0].SeriesInstanceUID),
        frames=series_to_frames(datasets),
        findings=(Finding("Effusion", 0.7, 0.5),),
    )
    write_sr(result)
    logging.getLogger("pydicom").warning("Invalid value for VR UI: '%s'", instance)
    highdicom_lines = [r for r in caplog.records if r.name.startswith("highdicom")]
    assert highdicom_lines, "highdicom logged nothing: the test would prove nothing"
    assert uid_ref(instance) in caplog.text
    assert study not in caplog.text and instance not in caplog.text
