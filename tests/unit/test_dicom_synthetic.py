"""Synthetic studies: valid, decodable DICOM with consistent geometry; phantoms that match their
ground truth; radiograph findings; multi-frame ultrasound; the ``medserve examples dicom`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from medserve.cli import main
from medserve.demo import dicom_studies as synthetic
from medserve.demo.dicom_studies import (
    XRAY_FINDINGS,
    chest_radiograph,
    ct_phantom,
    ct_phantom_case,
    read_ground_truth,
    study_phantom,
    write_study,
)

SHAPE, SPACING, LESIONS = (24, 96, 96), (2.5, 2.0, 2.0), (2, 3)


def _small_ct(folder: Path, seed: int) -> list[Path]:
    return write_study("CT", folder, seed=seed, shape=SHAPE, spacing=SPACING, lesions=LESIONS)


def _read(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def _common_checks(datasets: list[pydicom.Dataset], modality: str) -> None:
    for ds in datasets:
        assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == modality and str(ds.PatientName) == "SYNTHETIC^PHANTOM"
        assert ds.PatientID.startswith("SYNTH")
        assert pydicom.uid.UID(ds.StudyInstanceUID).is_valid and pydicom.uid.UID(ds.SOPInstanceUID).is_valid
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_ct_study_is_valid_with_consistent_geometry(tmp_path: Path) -> None:
    paths = _small_ct(tmp_path, 5)
    assert [p.name for p in paths] == [f"CT_{k:04d}.dcm" for k in range(1, 25)]
    datasets = _read(paths)
    _common_checks(datasets, "CT")
    assert {ds.SOPClassUID for ds in datasets} == {pydicom.uid.CTImageStorage}
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 25))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    assert np.allclose(np.diff(positions[:, 2]), 2.5) and np.allclose(positions[:, :2], positions[0, :2])
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [2.0, 2.0] and float(ds.SliceThickness) == 2.5
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    volume = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    assert datasets[0].pixel_array.dtype == np.int16 and volume.shape == (24, 96, 96)
    phantom = study_phantom("CT", seed=5, shape=SHAPE, spacing=SPACING, lesions=LESIONS)
    assert np.max(np.abs(volume - phantom.array)) <= 0.5 + 1e-3
    assert volume.min() >= -1200 and volume.max() > 400  # air and bone


def test_ct_ground_truth_matches_the_mask(tmp_path: Path) -> None:
    _small_ct(tmp_path, 11)
    truth = read_ground_truth(tmp_path)
    phantom = study_phantom("CT", seed=11, shape=SHAPE, spacing=SPACING, lesions=LESIONS)
    first = pydicom.dcmread(tmp_path / "CT_0001.dcm")
    assert truth["study_instance_uid"] == first.StudyInstanceUID
    assert truth["series_instance_uid"] == first.SeriesInstanceUID
    assert truth["lesion_count"] == len(phantom.lesions) == len(truth["lesions"])
    assert 2 <= truth["lesion_count"] <= 3
    voxel_ml = 2.5 * 2.0 * 2.0 / 1000
    assert truth["lesion_volume_ml"] == pytest.approx(phantom.mask.sum() * voxel_ml, abs=1e-3)
    assert sum(lesion["voxels"] for lesion in truth["lesions"]) == int(phantom.mask.sum())
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    assert truth["origin_patient_mm"] == pytest.approx(origin.tolist())
    for lesion in truth["lesions"]:
        k, row, col = lesion["centre_voxel"]
        # Voxel (k, row, col) -> patient LPS through the written geometry.
        expected = origin + np.array([col * 2.0, row * 2.0, k * 2.5])
        assert lesion["centre_patient_mm"] == pytest.approx(expected.tolist(), abs=1e-2)
        assert phantom.mask[round(k), round(row), round(col)] == 1
        assert 5.0 <= lesion["radius_mm"] <= 10.0
        assert lesion["volume_ml"] == pytest.approx(lesion["voxels"] * voxel_ml, abs=1e-3)
        assert lesion["volume_ml"] == pytest.approx(lesion["sphere_volume_ml"], rel=0.35)


def test_ct_phantom_lesions_are_brighter_than_tissue_but_not_than_bone() -> None:
    rng = np.random.default_rng(3)
    hu, mask = ct_phantom((40, 128, 128), (2.0, 2.0, 2.0), rng, lesions=(3, 3))
    assert hu.dtype == np.float32 and mask.dtype == np.uint8 and hu.shape == mask.shape
    assert set(np.unique(mask)) == {0, 1}
    lesion = hu[mask == 1]
    assert 100 < float(np.median(lesion)) < 230
    assert float(hu.max()) > float(lesion.max()) + 200  # bone is brighter than any lesion
    soft = hu[(hu > 0) & (hu < 80) & (mask == 0)]
    assert float(np.median(lesion)) - float(np.median(soft)) > 60
    assert float(np.percentile(hu, 5)) < -900  # air around the body
    again, again_mask = ct_phantom((40, 128, 128), (2.0, 2.0, 2.0), np.random.default_rng(3), lesions=(3, 3))
    np.testing.assert_array_equal(hu, again)
    np.testing.assert_array_equal(mask, again_mask)
    empty = ct_phantom_case((16, 64, 64), (2.0, 2.0, 2.0), np.random.default_rng(0), lesions=(0, 0))
    assert empty.lesions == () and not empty.mask.any()
    with pytest.raises(ValueError):
        ct_phantom((16, 64, 64), (2.0, 2.0, 2.0), rng, lesions=(3, 1))


def test_mr_study(tmp_path: Path) -> None:
    paths = write_study("MR", tmp_path, seed=2, shape=(12, 96, 96))
    datasets = _read(paths)
    _common_checks(datasets, "MR")
    assert {ds.SOPClassUID for ds in datasets} == {pydicom.uid.MRImageStorage}
    assert all("RescaleIntercept" not in ds for ds in datasets)
    volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    assert datasets[0].pixel_array.dtype == np.uint16 and volume.max() <= 4095
    phantom = study_phantom("MR", seed=2, shape=(12, 96, 96))
    truth = read_ground_truth(tmp_path)
    assert truth["lesion_count"] == len(phantom.lesions) >= 1
    assert float(volume[phantom.mask == 1].mean()) > float(volume[volume > 100].mean())


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_radiographs_in_both_photometric_interpretations(tmp_path: Path, modality: str) -> None:
    (plain,) = write_study(modality, tmp_path / "m2", seed=4, size=256, findings=["Cardiomegaly"])
    (inverted,) = write_study(modality, tmp_path / "m1", seed=4, size=256, photometric="MONOCHROME1")
    m2, m1 = pydicom.dcmread(plain), pydicom.dcmread(inverted)
    _common_checks([m2], modality)
    assert m2.PhotometricInterpretation == "MONOCHROME2" and m1.PhotometricInterpretation == "MONOCHROME1"
    assert m2.pixel_array.shape == (256, 256) and m2.pixel_array.dtype == np.uint16
    assert int(m2.BitsStored) == 12 and m2.pixel_array.max() <= 4095
    assert float(m2.ImagerPixelSpacing[0]) == pytest.approx(synthetic.XRAY_FIELD_MM / 256)
    if modality == "DX":
        assert m2.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
        assert m2.PresentationIntentType == "FOR PRESENTATION"
        assert (m2.PresentationLUTShape, m1.PresentationLUTShape) == ("IDENTITY", "INVERSE")
    else:
        assert m2.SOPClassUID == pydicom.uid.ComputedRadiographyImageStorage
    assert read_ground_truth(tmp_path / "m2")["findings"] == ["Cardiomegaly"]
    # Same seed without the finding: MONOCHROME1 stores the inverse, so re-inverting it gives an
    # image that differs from the cardiomegaly one only around the heart.
    normal = 4095 - m1.pixel_array.astype(np.int32)
    enlarged = m2.pixel_array.astype(np.int32)
    heart_band = (slice(150, 210), slice(60, 220))
    assert enlarged[heart_band].mean() > normal[heart_band].mean() + 20
    assert abs(enlarged[:60].mean() - normal[:60].mean()) < 10


def test_chest_radiograph_findings_change_the_image() -> None:
    normal = chest_radiograph(224, np.random.default_rng(9))
    assert normal.dtype == np.float32 and normal.shape == (224, 224)
    assert normal.min() >= 0.0 and normal.max() <= 1.0
    np.testing.assert_array_equal(normal, chest_radiograph(224, np.random.default_rng(9)))
    for finding in XRAY_FINDINGS:
        image = chest_radiograph(224, np.random.default_rng(9), [finding])
        assert np.abs(image - normal).mean() > 0.002, finding
    with pytest.raises(ValueError, match="Hernia"):
        chest_radiograph(224, np.random.default_rng(0), ["Hernia"])


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB"])
def test_ultrasound_is_multiframe(tmp_path: Path, photometric: str) -> None:
    (path,) = write_study("US", tmp_path, seed=1, frames=6, size=(96, 128), photometric=photometric)
    ds = pydicom.dcmread(path)
    _common_checks([ds], "US")
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert int(ds.NumberOfFrames) == 6 and ds.PhotometricInterpretation == photometric
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) > 0
    expected = (6, 96, 128, 3) if photometric == "RGB" else (6, 96, 128)
    pixels = ds.pixel_array
    assert pixels.shape == expected and pixels.dtype == np.uint8
    if photometric == "RGB":
        assert int(ds.PlanarConfiguration) == 0
    grey = pixels if pixels.ndim == 3 else pixels[..., 1]
    assert not np.array_equal(grey[0], grey[3])  # the loop moves
    assert ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection == 3


def test_uids_are_fresh_unless_deterministic(tmp_path: Path) -> None:
    (a,) = write_study("CR", tmp_path / "a", seed=1, size=64)
    (b,) = write_study("CR", tmp_path / "b", seed=1, size=64)
    (c,) = write_study("CR", tmp_path / "c", seed=1, size=64, deterministic_uids=True)
    (d,) = write_study("CR", tmp_path / "d", seed=1, size=64, deterministic_uids=True)
    first, second, third, fourth = (pydicom.dcmread(p) for p in (a, b, c, d))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert (third.StudyInstanceUID, third.SOPInstanceUID) == (fourth.StudyInstanceUID, fourth.SOPInstanceUID)
    np.testing.assert_array_equal(first.pixel_array, second.pixel_array)


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        write_study("PET", tmp_path)
    with pytest.raises(ValueError, match="photometric"):
        write_study("DX", tmp_path, photometric="RGB")
    with pytest.raises(ValueError, match="findings"):
        write_study("CT", tmp_path, findings=["Nodule"])
    with pytest.raises(ValueError):
        write_study("US", tmp_path, frames=1)


def test_cli_writes_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cr"
    assert (
        main(["examples", "dicom", "--modality", "CR", "--out", str(out), "--studies", "2", "--seed", "7"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 2 synthetic CR studies, 2 DICOM file(s)" in printed and str(out) in printed
    for index, seed in ((1, 7), (2, 8)):
        folder = out / f"study_{index:03d}"
        (path,) = sorted(folder.glob("*.dcm"))
        assert pydicom.dcmread(path).Modality == "CR"
        assert read_ground_truth(folder)["seed"] == seed
    ct = tmp_path / "ct"
    assert main(["examples", "dicom", "--modality", "CT", "--out", str(ct)]) == 0
    assert len(list(ct.glob("CT_*.dcm"))) == synthetic.CT_SHAPE[0]
    assert f"{synthetic.CT_SHAPE[0]} DICOM file(s)" in capsys.readouterr().out
    assert main(["examples", "dicom", "--modality", "CT", "--out", str(ct), "--photometric", "RGB"]) == 2
    assert "do not apply" in capsys.readouterr().err
