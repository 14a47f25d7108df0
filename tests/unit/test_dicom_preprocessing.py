"""Imaging preprocessing: windowing, resampling, normalisation, sliding windows and lesion measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medserve.clinical.dicom.preprocessing import (
    PatchAccumulator,
    accumulate_patches,
    connected_components,
    gaussian_weights,
    normalize_mr,
    pad_to,
    resample,
    resample_label_map_back,
    resize_2d,
    scale_to_unit,
    sliding_window_patches,
    window,
    window_from_center_width,
)


def test_window_maps_hounsfield_range_to_unit() -> None:
    low, high = window_from_center_width(40, 400)
    assert (low, high) == (-160, 240)
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16)
    out = window(hu, low, high)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="high > low"):
        window(hu, 10, 10)


def test_resample_spacing_math() -> None:
    volume = np.zeros((10, 20, 30), dtype=np.int16)
    out, spacing = resample(volume, (5.0, 0.5, 0.5), (1.0, 1.0, 1.0))
    assert out.shape == (50, 10, 15) and out.dtype == np.float32
    assert spacing == pytest.approx((1.0, 1.0, 1.0))
    # not a whole number of target voxels: the extent is kept, the spacing adjusted to the grid
    out, spacing = resample(np.zeros((11, 4, 4)), (0.7, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert out.shape == (8, 4, 4)
    assert spacing == pytest.approx((0.7 * 11 / 8, 1.0, 1.0))
    assert out.shape[0] * spacing[0] == pytest.approx(11 * 0.7)


def test_linear_resample_reproduces_a_ramp_inside() -> None:
    n, spacing, target = 20, 2.0, 0.5
    ramp = np.broadcast_to((np.arange(n) * spacing)[:, None, None], (n, 3, 3)).astype(np.float32)
    out, new_spacing = resample(ramp, (spacing, 1.0, 1.0), (target, 1.0, 1.0))
    m = out.shape[0]
    assert m == 80 and new_spacing[0] == pytest.approx(target)
    centres = (np.arange(m) + 0.5) * n / m - 0.5  # new voxel centres in old index units
    inside = (centres >= 0) & (centres <= n - 1)
    np.testing.assert_allclose(out[inside, 1, 1], centres[inside] * spacing, atol=1e-4)


def test_label_map_goes_back_to_the_original_grid_exactly() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    up, spacing = resample(labels, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), order=0)
    assert up.shape == (10, 12, 14) and up.dtype == np.uint8 and spacing == pytest.approx((1, 1, 1))
    back = resample_label_map_back(up, labels.shape)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    # from a coarser grid: nearest neighbour, values unchanged, shape as asked
    coarse = resample_label_map_back(labels, (9, 13, 3))
    assert coarse.shape == (9, 13, 3) and set(np.unique(coarse)) <= set(np.unique(labels))


def test_normalize_mr_is_z_score_over_foreground() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((8, 32, 32), dtype=np.float32)
    image[:, 8:24, 8:24] = rng.normal(500, 50, size=(8, 16, 16))
    image[0, 10, 10] = 1e6  # a hot voxel is clipped at the 99.5th percentile
    out = normalize_mr(image)
    assert out.dtype == np.float32
    foreground = out[:, 8:24, 8:24]
    assert float(foreground.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(foreground.std()) == pytest.approx(1.0, abs=1e-3)
    assert out.max() < 5
    assert np.all(out[:, :8] == out[0, 0, 0])  # the background is one clipped value
    with_mask = normalize_mr(image, mask=image > 0)
    np.testing.assert_allclose(with_mask, out, atol=1e-5)
    np.testing.assert_array_equal(normalize_mr(np.full((2, 2, 2), 7.0)), np.zeros((2, 2, 2)))


def test_resize_2d_size_and_anti_aliasing() -> None:
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    frames = np.stack([checker, np.full((512, 512), 3.0, np.float32)])
    out = resize_2d(frames, 224)
    assert out.shape == (2, 224, 224) and out.dtype == np.float32
    assert float(out[0].std()) < 0.05 and float(out[0].mean()) == pytest.approx(0.5, abs=0.01)
    np.testing.assert_allclose(out[1], 3.0, rtol=1e-6)
    assert resize_2d(checker, (100, 50)).shape == (100, 50)
    up = resize_2d(np.arange(4, dtype=np.float32).reshape(2, 2), 4)
    assert up.shape == (4, 4) and up.min() == 0 and up.max() == 3  # enlarging does not blur


def test_scale_to_unit_per_image() -> None:
    frames = np.stack([np.linspace(-5, 5, 16).reshape(4, 4), np.linspace(100, 200, 16).reshape(4, 4)])
    out = scale_to_unit(frames)
    for image in out:
        assert image.min() == 0 and image.max() == pytest.approx(1)
    clipped = scale_to_unit(frames[0], percentiles=(10, 90))
    assert clipped.shape == (4, 4) and clipped.min() == 0 and clipped.max() == 1
    assert np.count_nonzero(clipped == 1) >= 2
    np.testing.assert_array_equal(scale_to_unit(np.full((2, 3, 3), 4.0)), np.zeros((2, 3, 3)))


def test_pad_to_and_crop_back() -> None:
    array = np.arange(3 * 50 * 70, dtype=np.float32).reshape(3, 50, 70)
    padded, crop = pad_to(array, (8, 64, 64), value=-1024)
    assert padded.shape == (8, 64, 70)
    np.testing.assert_array_equal(padded[crop], array)
    assert padded[0, 0, 0] == -1024 and crop == (slice(2, 5), slice(7, 57), slice(0, 70))
    channels = np.ones((2, 5, 5))
    padded, crop = pad_to(channels, (6, 6), mode="edge")
    assert padded.shape == (2, 6, 6) and np.all(padded == 1) and crop[0] == slice(0, 2)
    same, crop = pad_to(array, (1, 1, 1))
    assert same.shape == array.shape and same is not array


def test_sliding_windows_cover_everything_and_stay_inside() -> None:
    shape, patch = (37, 64, 50), (16, 32, 32)
    windows = sliding_window_patches(shape, patch, overlap=0.5)
    covered = np.zeros(shape, dtype=np.int32)
    for where in windows:
        assert all(s.start >= 0 and s.stop <= n for s, n in zip(where, shape))
        assert covered[where].shape == patch
        covered[where] += 1
    assert covered.min() >= 1
    assert len({tuple((s.start, s.stop) for s in w) for w in windows}) == len(windows)
    assert [w[0].start for w in sliding_window_patches((100,), (40,), 0.5)] == [0, 20, 40, 60]
    assert sliding_window_patches((8, 8), (8, 8), 0.25) == [(slice(0, 8), slice(0, 8))]
    assert len(sliding_window_patches((10, 10), (4, 4), 0.0)) == 9  # starts 0, 4, 6 per axis
    with pytest.raises(ValueError, match="pad_to"):
        sliding_window_patches((4, 10), (8, 8))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_patches((10,), (4,), 1.0)


@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_accumulator_reconstructs_a_known_function(weighting: str) -> None:
    shape, patch = (20, 30, 26), (8, 16, 16)
    z, y, x = np.indices(shape, dtype=np.float32)
    truth = np.stack([np.sin(z / 3) + y * 0.1 - x * 0.05, z * y / 100])  # two output channels
    windows = sliding_window_patches(shape, patch, overlap=0.5)
    result = accumulate_patches(
        truth.shape, patch, ((w, truth[(slice(None), *w)]) for w in windows), weighting=weighting
    )
    np.testing.assert_allclose(result, truth, rtol=1e-5, atol=1e-5)


def test_padded_sliding_window_round_trip() -> None:
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(5, 40, 20)).astype(np.float32)
    patch = (8, 16, 16)
    padded, crop = pad_to(volume, patch)
    accumulator = PatchAccumulator(padded.shape, patch)
    for where in sliding_window_patches(padded.shape, patch, overlap=0.25):
        accumulator.add(where, padded[where] * 2)  # the "model" doubles its input
    np.testing.assert_allclose(accumulator.result()[crop], volume * 2, rtol=1e-5, atol=1e-5)


def test_accumulator_refuses_gaps_and_wrong_shapes() -> None:
    accumulator = PatchAccumulator((10, 10), (4, 4), weighting="constant")
    accumulator.add((slice(0, 4), slice(0, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="not covered"):
        accumulator.result()
    with pytest.raises(ValueError, match="expected"):
        accumulator.add((slice(0, 4), slice(0, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="does not select"):
        accumulator.add((slice(8, 12), slice(0, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="weighting"):
        PatchAccumulator((4,), (4,), weighting="cosine")


def test_gaussian_weights_peak_in_the_centre() -> None:
    weights = gaussian_weights((9, 9))
    assert weights[4, 4] == 1.0 and weights.min() >= 1e-3
    assert weights[0, 0] < weights[2, 2] < weights[4, 4]
    np.testing.assert_allclose(weights, weights.T)


def _ball(
    shape: tuple[int, int, int], centre_mm: np.ndarray, radius_mm: float, spacing: np.ndarray
) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1).T * spacing
    inside: np.ndarray = (np.linalg.norm(index - centre_mm, axis=1) <= radius_mm).reshape(shape)
    return inside


def test_connected_components_measure_a_sphere() -> None:
    spacing = np.array([2.0, 0.5, 0.5])  # (slice, row, column) mm
    shape = (30, 100, 100)
    centre_voxel = np.array([15.0, 50.0, 50.0])
    radius = 12.0
    mask = _ball(shape, centre_voxel * spacing, radius, spacing).astype(np.uint8)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in-plane
    origin = (-100.0, 20.0, 300.0)
    [lesion] = connected_components(mask, tuple(spacing), origin, direction)
    assert lesion.number == 1 and lesion.segment == 1
    assert lesion.voxels == int(mask.sum())
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.03)
    assert lesion.centroid_voxel == pytest.approx(tuple(centre_voxel))
    # patient = origin + column index * col mm * row direction + row index * row mm * column direction + ...
    expected = (
        np.array(origin)
        + direction[:, 0] * 50 * 0.5
        + direction[:, 1] * 50 * 0.5
        + direction[:, 2] * 15 * 2.0
    )
    assert lesion.centroid_patient == pytest.approx(tuple(expected))
    assert lesion.max_diameter_mm == pytest.approx(2 * radius, abs=1.0)


def test_components_per_segment_ordered_and_filtered() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels
    labels[5:9, 5:9, 5:9] = 1  # 64 voxels
    labels[3, 3, 3] = 1  # touches the first only at a corner: same component with 26-connectivity
    labels[0, 9, 9] = 2  # a single voxel of segment 2
    labels[9, 0, 0] = 1  # a lone voxel of segment 1, dropped by min_voxels
    lesions = connected_components(labels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), min_voxels=1)
    assert [(les.segment, les.voxels) for les in lesions] == [(1, 64), (1, 9), (1, 1), (2, 1)]
    assert [les.number for les in lesions] == [1, 2, 3, 4]
    assert lesions[-1].max_diameter_mm == 0.0 and lesions[-1].volume_ml == pytest.approx(0.001)
    filtered = connected_components(labels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), min_voxels=2)
    assert [(les.segment, les.voxels) for les in filtered] == [(1, 64), (1, 9)]
    assert filtered[0].max_diameter_mm == pytest.approx(math.sqrt(3) * 3)  # cube corners, centre to centre
    flat = np.zeros((3, 10, 10), dtype=np.uint8)
    flat[1, 2:8, 2:6] = 1  # one slice thick: a flat hull
    [plate] = connected_components(flat, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert plate.max_diameter_mm == pytest.approx(math.hypot(5, 3))
