"""DICOM series to Volume / Frames: ordering, geometry, rescale, colour, and every rejection reason."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLossless, generate_uid

from medserve.clinical.dicom.series_to_volume import (
    SeriesRejected,
    header_without_pixels,
    series_to_frames,
    series_to_volume,
)
from medserve.values.errors import InvalidInput


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)  # never the network
    assert path is not None, f"pydicom test file {name} is missing"
    return pydicom.dcmread(path)


CT = _testdata("CT_small.dcm")  # 128x128 int16, RescaleIntercept -1024, PixelSpacing 0.661468
MR = _testdata("MR_small.dcm")  # 64x64, no rescale


def _rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    rotation: np.ndarray = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    return rotation


def make_series(
    base: Dataset = CT,
    count: int = 4,
    spacing: float = 2.5,
    rotation: np.ndarray | None = None,
    start: Sequence[float] = (-80.0, -90.0, 10.0),
) -> list[Dataset]:
    """``count`` slices of ``base`` stacked along the normal; slice k's pixels are base + 10 k."""
    frame = np.eye(3) if rotation is None else rotation
    row, column, normal = frame[:, 0], frame[:, 1], frame[:, 2]
    pixels = base.pixel_array
    series_uid = generate_uid()
    slices = []
    for k in range(count):
        ds = copy.deepcopy(base)
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(start) + k * spacing * normal]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.PixelData = (pixels + 10 * k).astype(pixels.dtype).tobytes()
        slices.append(ds)
    return slices


def rejected(datasets: Sequence[Dataset], **options: object) -> str:
    with pytest.raises(SeriesRejected) as caught:
        series_to_volume(datasets, **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidInput)
    return caught.value.reason


def test_ct_series_becomes_hounsfield_volume_in_slice_order() -> None:
    series = make_series(count=5)
    volume = series_to_volume(series)
    assert volume.array.shape == (5, 128, 128) and volume.array.dtype == np.float32
    for k in range(5):
        np.testing.assert_array_equal(volume.array[k], CT.pixel_array + 10 * k - 1024)
    assert volume.spacing == pytest.approx((2.5, 0.661468, 0.661468))
    assert volume.origin == pytest.approx((-80.0, -90.0, 10.0))
    np.testing.assert_allclose(volume.direction, np.eye(3))
    assert volume.modality == "CT"
    assert [int(s.InstanceNumber) for s in volume.sources] == [1, 2, 3, 4, 5]
    assert all("PixelData" not in s for s in volume.sources)
    assert volume.sources[0].file_meta.TransferSyntaxUID == CT.file_meta.TransferSyntaxUID
    assert volume.voxel_volume_ml == pytest.approx(2.5 * 0.661468**2 / 1000)
    # the inputs are untouched and hold no decoded-array cache
    assert all("PixelData" in ds and getattr(ds, "_pixel_array", None) is None for ds in series)


def test_shuffled_slices_are_sorted_along_the_normal() -> None:
    series = make_series(count=6)
    shuffled = series[:]
    random.Random(7).shuffle(shuffled)
    volume = series_to_volume(shuffled)
    assert [s.SOPInstanceUID for s in volume.sources] == [s.SOPInstanceUID for s in series]
    assert [float(volume.array[k].mean() - volume.array[0].mean()) for k in range(6)] == pytest.approx(
        [10.0 * k for k in range(6)]
    )


def test_oblique_series_is_ordered_by_position_along_the_normal() -> None:
    rotation = _rotation((1.0, 0.3, -0.2), 130.0)  # normal points partly towards -z
    assert rotation[2, 2] < 0
    series = make_series(count=5, spacing=3.0, rotation=rotation)
    random.Random(3).shuffle(series)
    volume = series_to_volume(series)
    assert [int(s.InstanceNumber) for s in volume.sources] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(volume.direction, rotation, atol=1e-9)
    assert volume.spacing[0] == pytest.approx(3.0)
    first = next(ds for ds in series if ds.InstanceNumber == 1)
    assert volume.origin == pytest.approx(tuple(float(v) for v in first.ImagePositionPatient))


def test_mr_series_without_rescale_keeps_stored_values() -> None:
    volume = series_to_volume(make_series(MR, count=3, spacing=0.8))
    assert volume.modality == "MR" and volume.array.shape == (3, 64, 64)
    np.testing.assert_array_equal(volume.array[2], MR.pixel_array + 20)


def test_spacing_jitter_within_tolerance_is_accepted() -> None:
    series = make_series(count=4)
    series[2].ImagePositionPatient = [-80.0, -90.0, 10.0 + 5.05]
    assert series_to_volume(series).spacing[0] == pytest.approx(2.5)


def test_uneven_spacing_reports_the_gaps() -> None:
    series = make_series(count=6)
    del series[3]  # a missing slice: gaps 2.5, 2.5, 5, 2.5
    reason = rejected(series)
    assert reason.startswith("uneven slice spacing")
    assert "2.5 mm (3x)" in reason and "5 mm (1x)" in reason and "missing" in reason


def test_duplicate_positions() -> None:
    series = make_series(count=4)
    series[2].ImagePositionPatient = series[1].ImagePositionPatient
    reason = rejected(series)
    assert reason.startswith("duplicate slice positions")
    assert series[1].SOPInstanceUID in reason and series[2].SOPInstanceUID in reason


def test_mixed_orientations() -> None:
    series = make_series(count=4)
    series[3].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # a coronal localizer
    reason = rejected(series)
    assert reason.startswith("mixed orientations: 2 different ImageOrientationPatient values")
    assert "in 3" in reason and "in 1" in reason


def test_orientation_within_tolerance_is_one_orientation() -> None:
    series = make_series(count=3)
    series[1].ImageOrientationPatient = [1.0, 0.0002, 0.0, 0.0, 1.0, 0.0]
    assert series_to_volume(series).array.shape[0] == 3


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry(keyword: str) -> None:
    series = make_series(count=3)
    delattr(series[1], keyword)
    reason = rejected(series)
    assert reason.startswith(f"missing geometry: {keyword} absent or invalid in 1 of 3 instances")
    assert series[1].SOPInstanceUID in reason


def test_inconsistent_pixel_spacing() -> None:
    series = make_series(count=3)
    series[0].PixelSpacing = [0.5, 0.5]
    assert "inconsistent geometry: PixelSpacing" in rejected(series)


def test_gantry_tilt_is_rejected() -> None:
    series = make_series(count=4)
    for k, ds in enumerate(series):
        ds.ImagePositionPatient = [-80.0, -90.0 + 2.0 * k, 10.0 + 2.5 * k]  # sheared stack
    assert "not stacked along the slice normal" in rejected(series)


def test_missing_pixel_data() -> None:
    series = make_series(count=3)
    del series[2].PixelData
    assert rejected(series).startswith("missing pixel data in 1 of 3 instances")


def test_mismatched_rows_and_columns() -> None:
    series = make_series(count=3)
    series[1].Rows, series[1].Columns = 64, 64
    series[1].PixelData = np.zeros((64, 64), np.int16).tobytes()
    assert rejected(series) == "mismatched Rows/Columns: 128x128 in 2 instances, 64x64 in 1 instance"


@pytest.mark.parametrize("keyword", ["RescaleIntercept", "RescaleSlope"])
def test_ct_needs_rescale(keyword: str) -> None:
    series = make_series(count=3)
    delattr(series[0], keyword)
    reason = rejected(series)
    assert reason.startswith("CT without RescaleIntercept/RescaleSlope in 1 of 3 instances")


def test_rescale_slope_is_applied() -> None:
    series = make_series(count=2)
    for ds in series:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1000
    volume = series_to_volume(series)
    np.testing.assert_allclose(volume.array[1], (CT.pixel_array + 10) * 0.5 - 1000)


def test_undecodable_transfer_syntax_is_named() -> None:
    series = make_series(count=2)
    series[1].file_meta.TransferSyntaxUID = JPEGLossless
    series[1].PixelData = encapsulate([b"\xff\xd8 not a jpeg"])
    reason = rejected(series)
    assert reason.startswith("unsupported or undecodable transfer syntax JPEG Lossless")
    assert JPEGLossless in reason and series[1].SOPInstanceUID in reason


def test_unknown_transfer_syntax_is_named() -> None:
    series = make_series(count=2)
    series[0].file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    assert "1.2.3.4.5.6" in rejected(series)


def test_one_slice_is_not_a_volume_unless_allowed_with_thickness() -> None:
    one = make_series(count=1)
    assert rejected(one) == "1 slice(s): a volume needs at least 2"
    del one[0].SpacingBetweenSlices
    one[0].SliceThickness = 1.25
    volume = series_to_volume(one, min_slices=1)
    assert volume.array.shape == (1, 128, 128) and volume.spacing[0] == pytest.approx(1.25)
    del one[0].SliceThickness
    assert rejected(one, min_slices=1).startswith("a single slice needs SliceThickness")
    assert rejected([]) == "the series has no instances"


def test_instances_of_two_series_or_repeated_instances() -> None:
    series = make_series(count=3)
    series[2].SeriesInstanceUID = "1.2.3.9"
    assert rejected(series).startswith("instances of 2 series were given as one")
    series = make_series(count=3)
    assert rejected([*series, series[0]]).startswith("the same instance was given more than once")


def test_multi_frame_instance_is_not_a_volume_slice() -> None:
    series = make_series(count=2)
    series[0].NumberOfFrames = 2
    assert "multi-frame or colour" in rejected(series)


def test_header_without_pixels_leaves_the_dataset_alone() -> None:
    ds = copy.deepcopy(CT)
    header = header_without_pixels(ds)
    assert "PixelData" not in header and "PixelData" in ds
    assert header.SOPInstanceUID == ds.SOPInstanceUID and header.Rows == 128
    header.PatientName = "Changed"
    assert ds.PatientName != "Changed"


def test_header_without_pixels_converts_nothing_and_reads_as_a_full_copy() -> None:
    """A header shares the unread (raw) elements instead of converting and deep-copying them all."""
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    position = list(ds.ImagePositionPatient)  # read, so converted: the header must copy it
    header = header_without_pixels(ds)
    raw = [tag for tag, element in ds._dict.items() if isinstance(element, pydicom.dataelem.RawDataElement)]
    assert len(raw) > 20, "reading a header converted the source's unread elements"
    reference = pydicom.dcmread(path)
    del reference.PixelData
    assert header == reference and header.file_meta == reference.file_meta
    assert [element.value for element in header] == [element.value for element in reference]
    header.ImagePositionPatient[0] = 99.0
    assert list(ds.ImagePositionPatient) == position


def test_header_without_pixels_reads_values_left_in_the_file(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    copied = tmp_path / "ct.dcm"
    copied.write_bytes(Path(path).read_bytes())
    header = header_without_pixels(pydicom.dcmread(copied, defer_size=8))
    copied.unlink()  # the header must not need the file any more
    reference = pydicom.dcmread(path)
    del reference.PixelData
    assert [element.value for element in header] == [element.value for element in reference]


# --- 2D frames --------------------------------------------------------------------------------------------


def make_2d(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **attributes: object,
) -> Dataset:
    """A small synthetic uncompressed 2D instance; ``pixels`` is (rows, cols[, 3]) or (frames, rows, cols)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "DX"
    colour = photometric in ("RGB", "YBR_FULL")
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_multi_frame_instance_gives_one_frame_ref_per_frame() -> None:
    pixels = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    ds = make_2d(pixels, ImagerPixelSpacing=[0.15, 0.14])
    frames = series_to_frames([ds])
    assert frames.array.shape == (3, 4, 5) and frames.array.dtype == np.float32
    np.testing.assert_array_equal(frames.array, pixels)
    assert [ref.frame_number for ref in frames.refs] == [1, 2, 3]
    assert {ref.sop_instance_uid for ref in frames.refs} == {ds.SOPInstanceUID}
    assert frames.pixel_spacing == pytest.approx((0.15, 0.14))
    assert frames.photometric == ("MONOCHROME2",) * 3 and frames.modality == "DX"
    assert "PixelData" not in frames.sources[0]


def test_monochrome1_is_inverted_over_the_stored_range() -> None:
    pixels = np.array([[0, 1000], [4000, 4095]], dtype=np.uint16)
    frames = series_to_frames([make_2d(pixels, "MONOCHROME1", bits_stored=12)])
    np.testing.assert_array_equal(frames.array[0], 4095 - pixels.astype(np.float32))


def test_monochrome1_with_rescale_inverts_in_modality_units() -> None:
    pixels = np.array([[0, 10], [20, 4095]], dtype=np.uint16)
    ds = make_2d(pixels, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-10)
    frames = series_to_frames([ds])
    rescaled = pixels * 2.0 - 10  # stored range maps to [-10, 8180]
    np.testing.assert_allclose(frames.array[0], (-10 + 8180) - rescaled)


def test_rgb_becomes_luminance() -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[0, 1] = (0, 255, 0)
    pixels[1, 0] = (0, 0, 255)
    pixels[1, 1] = (255, 255, 255)
    frames = series_to_frames([make_2d(pixels, "RGB", bits_stored=8)])
    expected = [[0.299 * 255, 0.587 * 255], [0.114 * 255, 255.0]]
    np.testing.assert_allclose(frames.array[0], expected, rtol=1e-5)


def test_ybr_and_palette_colour_become_luminance() -> None:
    source = _testdata("SC_ybr_full_422_uncompressed.dcm")
    ybr = series_to_frames([source])
    assert ybr.array.shape == (1, 100, 100)
    luma = pixel_array(source, as_rgb=False)[..., 0]  # Y of YBR_FULL is BT.601 luminance
    np.testing.assert_allclose(ybr.array[0], luma, atol=2.0)  # RGB rounding
    palette = series_to_frames([_testdata("examples_palette.dcm")])
    assert palette.array.shape == (1, 350, 800) and np.isfinite(palette.array).all()


def test_frames_are_ordered_by_instance_number() -> None:
    first = make_2d(np.full((2, 2), 1, np.uint16), InstanceNumber=1)
    second = make_2d(np.full((2, 2), 2, np.uint16), InstanceNumber=2)
    loose = make_2d(np.full((2, 2), 3, np.uint16))  # no InstanceNumber: last
    frames = series_to_frames([loose, second, first])
    assert [float(a.mean()) for a in frames.array] == [1.0, 2.0, 3.0]
    assert [r.sop_instance_uid for r in frames.refs] == [
        first.SOPInstanceUID,
        second.SOPInstanceUID,
        loose.SOPInstanceUID,
    ]


def test_ct_slices_as_frames_apply_rescale() -> None:
    frames = series_to_frames(make_series(count=2))
    np.testing.assert_array_equal(frames.array[1], CT.pixel_array + 10 - 1024)
    assert frames.pixel_spacing == pytest.approx((0.661468, 0.661468))


def test_frames_rejections() -> None:
    small = make_2d(np.zeros((2, 2), np.uint16))
    large = make_2d(np.zeros((3, 3), np.uint16))
    with pytest.raises(
        SeriesRejected, match=r"mismatched Rows/Columns: 2x2 in 1 instance, 3x3 in 1 instance"
    ):
        series_to_frames([small, large])
    broken = make_2d(np.zeros((2, 2), np.uint16))
    broken.file_meta.TransferSyntaxUID = JPEGLossless
    broken.PixelData = encapsulate([b"\xff\xd8 not a jpeg"])
    with pytest.raises(SeriesRejected, match="undecodable transfer syntax JPEG Lossless"):
        series_to_frames([broken])
    del small.PixelData
    with pytest.raises(SeriesRejected, match="missing pixel data"):
        series_to_frames([small])
