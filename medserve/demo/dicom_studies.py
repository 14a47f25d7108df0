"""Synthetic imaging studies: seeded phantoms, and valid DICOM files of them, for tests and demos.

The phantom generators are shared by the example models' training (``medserve.demo.models``) and the
DICOM writers, so a model trained on ``ct_phantom`` sees the same kind of image that
``write_study("CT", ...)`` stores. Everything is numpy and pydicom; nothing here is real patient
data, and every patient is named ``SYNTHETIC^PHANTOM``.

* ``ct_phantom`` / ``ct_phantom_case``: a body section in Hounsfield units (air, fat, soft tissue,
  liver, lungs, a contrast-filled aorta, spine and ribs, noise) with spherical hyperdense "lesions"
  and their mask. Bone and the aorta are brighter than the lesions, so HU alone does not find them.
* ``mr_phantom_case``: a brain-like ellipsoid (scalp, skull, CSF, grey and white matter,
  ventricles) with bright enhancing lesions, in arbitrary MR signal units.
* ``chest_radiograph``: a frontal chest radiograph in [0, 1] with optional synthetic
  ``XRAY_FINDINGS`` (ChestX-ray14 names).
* ``ultrasound_cine``: a sector-scan cine loop with speckle and a pulsating cavity.
* ``write_study``: one series of CT, MR (one file per slice), CR, DX (one radiograph) or US (one
  multi-frame instance) plus a ``ground_truth.json`` beside the files (lesions with centres, radii
  and volumes; radiograph findings). ``study_phantom`` regenerates the phantom of a written CT or
  MR study, masks included.

Coordinates: phantom arrays are indexed ``(slice, row, column)`` = ``(z, y, x)``; the writers use
axial slices with ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` (rows run to the patient's left,
columns to posterior) and slice positions increasing towards the head (LPS).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

MODALITIES: tuple[str, ...] = ("CT", "MR", "CR", "DX", "US")
"""What ``write_study`` writes."""

XRAY_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax")
"""The ChestX-ray14 findings ``chest_radiograph`` can draw; every other label is always absent."""

CT_SHAPE: tuple[int, int, int] = (48, 128, 128)
CT_SPACING: tuple[float, float, float] = (2.5, 2.5, 2.5)
MR_SHAPE: tuple[int, int, int] = (32, 128, 128)
MR_SPACING: tuple[float, float, float] = (4.0, 1.8, 1.8)
XRAY_SIZE = 512
XRAY_FIELD_MM = 400.0
"""Width (and height) of the patient area a synthetic radiograph covers."""
US_SIZE: tuple[int, int] = (192, 256)
US_FRAMES = 12
US_DEPTH_MM = 120.0

PATIENT_NAME = "SYNTHETIC^PHANTOM"
GROUND_TRUTH_FILE = "ground_truth.json"
MANUFACTURER = "medserve synthetic phantom"

_CT_OFFSET_MM = (4.0, -12.0, -250.0)
"""Phantom (0, 0, 0) in patient LPS mm for CT: not the origin, so pipelines must use the geometry."""
_MR_OFFSET_MM = (0.0, 8.0, 40.0)
_CT_STORED_INTERCEPT = -1024.0
_LUNG_V, _LUNG_RV = 0.06, 0.66
"""Lung ellipses of a radiograph (normalised image units), cut below by the diaphragm's domes."""

# Tissue classes of the volume phantoms (where lesions may go).
_AIR, _FAT, _SOFT, _LIVER, _LUNG, _VESSEL, _BONE = range(7)
_BACKGROUND, _SCALP, _SKULL, _CSF, _GREY, _WHITE = range(6)


@dataclass(frozen=True)
class PhantomLesion:
    """One spherical lesion of a volume phantom.

    ``centre_voxel`` is ``(slice, row, column)`` in continuous voxel coordinates; ``centre_mm`` the
    same point in phantom millimetres ``(x, y, z)``; ``voxels`` and ``volume_ml`` count the mask
    (what a perfect segmentation measures), ``sphere_volume_ml`` is the analytic volume.
    """

    number: int
    centre_voxel: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast: float
    voxels: int
    volume_ml: float
    sphere_volume_ml: float


@dataclass(frozen=True)
class Phantom:
    """A volume phantom: ``array`` float32 ``(z, y, x)`` (HU for CT), ``mask`` uint8 (1 = lesion)."""

    array: np.ndarray
    mask: np.ndarray
    lesions: tuple[PhantomLesion, ...]
    spacing: tuple[float, float, float]

    @property
    def lesion_volume_ml(self) -> float:
        return float(self.mask.sum()) * float(np.prod(self.spacing)) / 1000.0


# --------------------------------------------------------------------------------------------------
# Volume phantoms


def _axes_mm(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable z, y, x coordinates in mm, centred on the volume."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    z = ((np.arange(nz) - (nz - 1) / 2) * dz)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * dy)[None, :, None]
    x = ((np.arange(nx) - (nx - 1) / 2) * dx)[None, None, :]
    return z, y, x


def _check_volume_args(shape: Sequence[int], spacing: Sequence[float], lesions: tuple[int, int]) -> None:
    if len(shape) != 3 or any(int(n) < 8 for n in shape):
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or any(not float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive millimetre values, got {tuple(spacing)}")
    low, high = lesions
    if low < 0 or high < low:
        raise ValueError(f"lesions must be (min, max) with 0 <= min <= max, got {lesions}")


def _waves(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, rng: np.random.Generator, amplitude: float, count: int = 4
) -> np.ndarray:
    """A smooth random field: a sum of plane waves with wavelengths of 40-120 mm."""
    field = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    for _ in range(count):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * math.pi / rng.uniform(40.0, 120.0)
        phase = rng.uniform(0, 2 * math.pi)
        field += np.sin(k * (direction[0] * z + direction[1] * y + direction[2] * x) + phase).astype(
            np.float32
        )
    return field * np.float32(amplitude / math.sqrt(count))


def _blur_in_plane(volume: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along rows and columns (the in-plane point spread of a reconstruction)."""
    out = volume
    for axis in (1, 2):
        padded = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        n = out.shape[axis]
        low = np.take(padded, np.arange(0, n), axis=axis)
        mid = np.take(padded, np.arange(1, n + 1), axis=axis)
        high = np.take(padded, np.arange(2, n + 2), axis=axis)
        out = 0.5 * mid + 0.25 * (low + high)
    return out.astype(np.float32)


def _place_lesions(
    array: np.ndarray,
    mask: np.ndarray,
    tissue: np.ndarray,
    allowed: Sequence[int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    count: int,
    radius_mm: tuple[float, float],
    contrast: tuple[float, float],
) -> list[PhantomLesion]:
    """Add ``count`` spheres 10 mm apart inside ``allowed`` tissue (with a 3 mm margin) to ``array``
    (intensity ``+contrast`` with a partial-volume edge) and to ``mask``; fewer when they do not fit."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    shape = np.asarray(array.shape)
    candidates = np.flatnonzero(np.isin(tissue, allowed))
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[PhantomLesion] = []
    edge_mm = float(np.mean(spacing_arr))
    voxel_ml = float(np.prod(spacing_arr)) / 1000.0
    attempts = 0
    while len(lesions) < count and attempts < 200 * max(count, 1) and candidates.size:
        attempts += 1
        radius = float(rng.uniform(*radius_mm))
        centre = np.asarray(np.unravel_index(int(rng.choice(candidates)), array.shape), dtype=np.float64)
        centre += rng.uniform(-0.5, 0.5, size=3)
        margin = radius + 3.0
        reach = np.ceil(margin / spacing_arr).astype(int) + 1
        low = np.floor(centre).astype(int) - reach
        high = np.floor(centre).astype(int) + reach + 1
        if np.any(centre - radius / spacing_arr < 0) or np.any(centre + radius / spacing_arr > shape - 1):
            continue
        low_c, high_c = np.maximum(low, 0), np.minimum(high, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low_c, high_c))
        grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(low_c, high_c)), indexing="ij")
        distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_arr)))
        if not np.all(np.isin(tissue[box][distance <= margin], allowed)):
            continue
        centre_mm = centre * spacing_arr
        if any(np.linalg.norm(centre_mm - other) < radius + r + 10.0 for other, r in placed):
            continue
        inside = distance <= radius
        if not inside.any():
            continue
        level = float(rng.uniform(*contrast))
        fraction = np.clip((radius - distance) / edge_mm + 0.5, 0.0, 1.0)
        array[box] += (level * fraction).astype(np.float32)
        mask[box][inside] = 1
        placed.append((centre_mm, radius))
        voxels = int(inside.sum())
        z_mm, y_mm, x_mm = (centre - (shape - 1) / 2) * spacing_arr
        lesions.append(
            PhantomLesion(
                number=len(lesions) + 1,
                centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
                centre_mm=(float(x_mm), float(y_mm), float(z_mm)),
                radius_mm=round(radius, 3),
                contrast=round(level, 2),
                voxels=voxels,
                volume_ml=voxels * voxel_ml,
                sphere_volume_ml=4.0 / 3.0 * math.pi * radius**3 / 1000.0,
            )
        )
    return lesions


def ct_phantom_case(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    lesions: tuple[int, int] = (0, 3),
    *,
    noise_hu: float = 20.0,
    radius_mm: tuple[float, float] = (5.0, 10.0),
    contrast_hu: tuple[float, float] = (80.0, 150.0),
) -> Phantom:
    """A CT body section in HU with ``lesions[0]..lesions[1]`` hyperdense spherical lesions.

    Anatomy is in millimetres (so it looks the same at any ``spacing``): a body ellipse of soft
    tissue (~40 HU) with subcutaneous fat (-95 HU) in air (-1000 HU), two lungs (-820 HU), a liver
    (~60 HU), a contrast-filled aorta (150-200 HU), a vertebral column (cancellous 180-240 HU,
    cortex 600-800 HU) and ribs (500-800 HU), smooth tissue texture, an in-plane blur and Gaussian
    noise (``noise_hu`` sd). Lesions (radius ``radius_mm``, ``contrast_hu`` above the tissue around
    them) lie wholly in soft tissue or liver, 3 mm clear of other tissue and 10 mm of each other.
    """
    _check_volume_args(shape, spacing, lesions)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    z, y, x = _axes_mm(shape, spacing)
    nz, ny, nx = shape
    dz, dy, dx = spacing
    half_z = nz * dz / 2

    a = min(rng.uniform(125.0, 160.0), 0.46 * nx * dx)
    b = min(rng.uniform(90.0, 115.0), 0.46 * ny * dy)
    y0 = rng.uniform(-8.0, 8.0)
    wobble = 1.0 + 0.04 * np.sin(2 * math.pi * z / rng.uniform(150.0, 300.0) + rng.uniform(0, 2 * math.pi))
    radius = np.sqrt((x / (a * wobble)) ** 2 + ((y - y0) / (b * wobble)) ** 2)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    texture = _waves(z, y, x, rng, amplitude=8.0)

    body = radius <= 1.0
    hu[body] = -95.0
    tissue[body] = _FAT
    inner = radius <= 1.0 - rng.uniform(0.07, 0.12)
    hu[inner] = (40.0 + texture)[inner]
    tissue[inner] = _SOFT

    liver_z = -half_z + rng.uniform(0.1, 0.35) * nz * dz
    liver = inner & (
        ((x + 0.42 * a) / (0.4 * a)) ** 2
        + ((y - y0) / (0.62 * b)) ** 2
        + ((z - liver_z) / rng.uniform(60, 80)) ** 2
        <= 1.0
    )
    hu[liver] = (rng.uniform(55.0, 65.0) + texture)[liver]
    tissue[liver] = _LIVER

    lung_z = half_z * rng.uniform(0.4, 0.9)
    lung_extent_z = rng.uniform(90.0, 130.0)
    for side in (-1.0, 1.0):
        lung = inner & (
            ((x - side * 0.45 * a) / (0.32 * a)) ** 2
            + ((y - y0 + 0.05 * b) / (0.6 * b)) ** 2
            + ((z - lung_z) / lung_extent_z) ** 2
            <= 1.0
        )
        hu[lung] = (-820.0 + 3.0 * texture)[lung]
        tissue[lung] = _LUNG

    aorta_r = rng.uniform(9.0, 13.0)
    aorta = inner & (((x - 0.12 * a) ** 2 + (y - y0 - 0.3 * b) ** 2) <= aorta_r**2)
    hu[aorta] = rng.uniform(150.0, 200.0)
    tissue[aorta] = _VESSEL

    spine_r = rng.uniform(14.0, 18.0)
    spine_y = y0 + 0.7 * b
    spine_distance = np.sqrt(x**2 + (y - spine_y) ** 2)
    period = rng.uniform(24.0, 30.0)
    disc = np.broadcast_to(np.mod(z + rng.uniform(0, period), period) < 6.0, shape)
    vertebra = inner & (spine_distance <= spine_r)
    hu[vertebra] = rng.uniform(180.0, 240.0)
    cortex = vertebra & (spine_distance > spine_r - 2.5)
    hu[cortex] = rng.uniform(600.0, 800.0)
    hu[vertebra & disc] = 80.0
    tissue[vertebra] = _BONE

    rib_period = rng.uniform(22.0, 28.0)
    rib_band = np.cos(2 * math.pi * (z - rng.uniform(0, rib_period)) / rib_period) > 0.45
    rib_inner = 0.8 + rng.uniform(-0.03, 0.02)
    anterior_gap = (y - y0 < -0.5 * b) & (np.abs(x) < 0.25 * a)
    ribs = inner & rib_band & (radius > rib_inner) & (radius <= rib_inner + 7.0 / b) & ~anterior_gap
    hu[ribs] = rng.uniform(500.0, 800.0)
    tissue[ribs] = _BONE

    mask = np.zeros(shape, dtype=np.uint8)
    count = int(rng.integers(lesions[0], lesions[1] + 1))
    placed = _place_lesions(hu, mask, tissue, (_SOFT, _LIVER), spacing, rng, count, radius_mm, contrast_hu)
    hu = _blur_in_plane(hu)
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    return Phantom(array=hu, mask=mask, lesions=tuple(placed), spacing=spacing)


def ct_phantom(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    lesions: tuple[int, int] = (0, 3),
) -> tuple[np.ndarray, np.ndarray]:
    """``(hu, mask)`` of ``ct_phantom_case``: float32 HU and uint8 lesion mask, both ``(z, y, x)``."""
    case = ct_phantom_case(shape, spacing, rng, lesions)
    return case.array, case.mask


def mr_phantom_case(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    lesions: tuple[int, int] = (1, 2),
    *,
    radius_mm: tuple[float, float] = (5.0, 12.0),
) -> Phantom:
    """A T1-weighted post-contrast brain-like phantom in arbitrary signal units (about 0-1500).

    A head ellipsoid with bright scalp, dark skull and CSF, grey matter, brighter white matter and
    two dark ventricles, a smooth bias field and Rician noise; lesions are bright (enhancing)
    spheres wholly in grey or white matter.
    """
    _check_volume_args(shape, spacing, lesions)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    z, y, x = _axes_mm(shape, spacing)
    ax, ay, az = rng.uniform(70.0, 78.0), rng.uniform(90.0, 100.0), rng.uniform(78.0, 90.0)

    def shell(depth_mm: float) -> np.ndarray:
        return np.asarray(
            (x / (ax - depth_mm)) ** 2 + (y / (ay - depth_mm)) ** 2 + (z / (az - depth_mm)) ** 2 <= 1.0
        )

    signal = np.zeros(shape, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    for depth, value, kind in (
        (0.0, 0.85, _SCALP),
        (6.0, 0.06, _SKULL),
        (12.0, 0.18, _CSF),
        (15.0, 0.50, _GREY),
    ):
        region = shell(depth)
        signal[region] = value
        tissue[region] = kind
    white = (x / (0.72 * (ax - 15))) ** 2 + (y / (0.75 * (ay - 15))) ** 2 + (
        z / (0.7 * (az - 15))
    ) ** 2 <= 1.0
    signal[white] = 0.70
    tissue[white] = _WHITE
    for side in (-1.0, 1.0):
        ventricle = ((x - side * 9.0) / 6.0) ** 2 + ((y + 5.0) / 24.0) ** 2 + ((z - 5.0) / 14.0) ** 2 <= 1.0
        signal[ventricle] = 0.18
        tissue[ventricle] = _CSF

    mask = np.zeros(shape, dtype=np.uint8)
    count = int(rng.integers(lesions[0], lesions[1] + 1))
    placed = _place_lesions(
        signal, mask, tissue, (_GREY, _WHITE), spacing, rng, count, radius_mm, (0.3, 0.45)
    )
    signal = _blur_in_plane(signal)
    signal *= 1.0 + _waves(z, y, x, rng, amplitude=0.12, count=3)
    noise = 0.02
    signal = np.sqrt(
        (signal + rng.normal(0.0, noise, size=shape)) ** 2 + rng.normal(0.0, noise, size=shape) ** 2
    ).astype(np.float32)
    scale = np.float32(1400.0)
    scaled = [
        PhantomLesion(**{**asdict(lesion), "contrast": round(lesion.contrast * float(scale), 1)})
        for lesion in placed
    ]
    return Phantom(array=signal * scale, mask=mask, lesions=tuple(scaled), spacing=spacing)


# --------------------------------------------------------------------------------------------------
# Projection images


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """A row-normalised Gaussian blur as an n x n matrix (``K @ image @ K.T`` blurs both axes)."""
    index = np.arange(n, dtype=np.float64)
    kernel = np.exp(-0.5 * ((index[:, None] - index[None, :]) / max(sigma, 1e-3)) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    matrix = kernel.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _blur2d(image: np.ndarray, sigma: float) -> np.ndarray:
    rows = _blur_matrix(image.shape[0], sigma)
    cols = _blur_matrix(image.shape[1], sigma)
    return np.asarray(rows @ image.astype(np.float32) @ cols.T, dtype=np.float32)


def _soft(metric: np.ndarray, width: float) -> np.ndarray:
    """A smooth 0..1 indicator of ``metric > 0`` with an edge ``width`` wide (anti-aliasing)."""
    return np.asarray(np.clip(metric / width + 0.5, 0.0, 1.0), dtype=np.float32)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, width: float
) -> np.ndarray:
    """Soft inside-indicator of an axis-aligned ellipse (``width`` in normalised image units)."""
    r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return _soft((1.0 - r) * min(ru, rv), width)


def _dome(u: np.ndarray, top: float, centre: float, half_width: float) -> np.ndarray:
    """The diaphragm under one lung: highest under its centre, falling steeply to the lateral
    costophrenic angle and gently towards the midline (where the heart sits on it)."""
    d = (u - centre) / half_width
    return np.asarray(top + np.where(d * np.sign(centre) > 0, 0.25, 0.06) * d**2)


@dataclass(frozen=True)
class RadiographCase:
    """A synthetic radiograph (``image``, as ``chest_radiograph`` returns it) and where each finding
    drawn on it is: ``regions[label]`` is a boolean mask of the image's shape (the opacities of a
    Mass or Nodule, the fluid of an Effusion, the lucent rim and pleural line of a Pneumothorax, the
    cardiac silhouette of Cardiomegaly); ``opacities`` lists each Mass or Nodule as ``(label, row,
    column, radius)`` in pixels."""

    image: np.ndarray
    regions: dict[str, np.ndarray]
    opacities: tuple[tuple[str, float, float, float], ...]


def chest_radiograph(size: int, rng: np.random.Generator, findings: Iterable[str] = ()) -> np.ndarray:
    """``chest_radiograph_case(size, rng, findings).image``: see there."""
    return chest_radiograph_case(size, rng, findings).image


def chest_radiograph_case(
    size: int, rng: np.random.Generator, findings: Iterable[str] = ()
) -> RadiographCase:
    """A synthetic frontal (PA) chest radiograph, ``size`` x ``size`` float32 in [0, 1] (bright =
    dense, as displayed with MONOCHROME2), showing the ``findings`` (a subset of ``XRAY_FINDINGS``):

    * Cardiomegaly: cardiothoracic ratio 0.56-0.68 (otherwise 0.38-0.48).
    * Effusion: dense fluid with a lateral meniscus filling one or both lung bases, blunting the
      costophrenic angle.
    * Nodule: 1-3 round opacities 14-24 mm across; Mass: one lobulated opacity 3.6-6.2 cm across.
    * Pneumothorax: one lung collapsed towards its hilum, a lucent rim without lung markings and
      a thin visceral pleural line.

    The anatomy (thorax size and position, heart, diaphragm, ribs, clavicles, lung markings) and the
    exposure vary at random; noise and blur scale with ``size`` so that images resized to 224 x 224
    look alike whatever size they were drawn at. Raises ``ValueError`` for unknown findings.
    """
    wanted = set(findings)
    unknown = sorted(wanted.difference(XRAY_FINDINGS))
    if unknown:
        raise ValueError(
            f"unknown finding(s) {', '.join(unknown)}; expected some of {', '.join(XRAY_FINDINGS)}"
        )
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    n = int(size)
    coords = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).astype(np.float32)
    scale_u, scale_v = rng.uniform(0.92, 1.06), rng.uniform(0.92, 1.06)
    u = (coords[None, :] - rng.uniform(-0.04, 0.04)) / scale_u
    v = (coords[:, None] - rng.uniform(-0.04, 0.04)) / scale_v
    edge = 3.0 / n  # soft edges about 1.5 pixels wide

    torso = _ellipse(u, v, 0.0, 0.2, 0.9, 1.25, edge)
    neck = _soft(0.2 - np.abs(u), edge) * _soft(-0.6 - v, edge)
    body = np.maximum(torso, neck)
    attenuation = 0.05 + 0.37 * body

    # Lungs: an ellipse each, cut medially by the mediastinum and below by the diaphragm's dome.
    lung_u = (-0.36, 0.36)
    lung_ru = (0.27 * rng.uniform(0.94, 1.06), 0.26 * rng.uniform(0.94, 1.06))
    dome_top = (0.47 + rng.uniform(-0.04, 0.04), 0.51 + rng.uniform(-0.04, 0.04))
    lungs: list[np.ndarray] = []
    domes: list[np.ndarray] = []
    for side in range(2):
        dome = _dome(u, dome_top[side], lung_u[side], lung_ru[side])
        shape = _ellipse(u, v, lung_u[side], _LUNG_V, lung_ru[side], _LUNG_RV, edge)
        lung = shape * _soft(np.abs(u) - 0.07, edge) * _soft(dome - v, edge)
        lungs.append(lung)
        domes.append(np.asarray(dome))

    # Cardiac silhouette: width = cardiothoracic ratio x thoracic width.
    thorax_width = (lung_u[1] + lung_ru[1]) - (lung_u[0] - lung_ru[0])
    ratio = rng.uniform(0.56, 0.68) if "Cardiomegaly" in wanted else rng.uniform(0.38, 0.48)
    heart_ru = ratio * thorax_width / 2.0
    heart_u = 0.06 + 0.35 * (heart_ru - 0.27)
    heart_rv = 0.24 + 0.25 * (heart_ru - 0.27)
    heart = _ellipse(u, v, heart_u, dome_top[1] - 0.1, heart_ru, heart_rv, edge)

    hilum = [(lung_u[side] * 0.4, -0.05) for side in range(2)]
    aerated = [lung * (1.0 - heart) for lung in lungs]
    markings_field = _blur2d(rng.normal(size=(n, n)).astype(np.float32), 0.008 * n)
    markings_field /= float(np.std(markings_field)) + 1e-6
    pleural_line = np.zeros((n, n), dtype=np.float32)
    lucent_rim = np.zeros((n, n), dtype=np.float32)
    collapsed_lung = np.zeros((n, n), dtype=np.float32)
    if "Pneumothorax" in wanted:
        side = int(rng.integers(0, 2))
        collapse = rng.uniform(0.55, 0.78)
        cu, cv = hilum[side]
        # The collapsed lung: the lung shape shrunk towards the hilum.
        su = cu + (u - cu) / collapse
        sv = cv + (v - cv) / collapse
        shrunk = _ellipse(su, sv, lung_u[side], _LUNG_V, lung_ru[side], _LUNG_RV, edge / collapse)
        shrunk *= _soft(_dome(su, dome_top[side], lung_u[side], lung_ru[side]) - sv, edge)
        collapsed = lungs[side] * shrunk
        lucent_rim = np.clip(lungs[side] - collapsed, 0.0, 1.0) * (1.0 - heart)
        ring = np.clip(collapsed * (1.0 - collapsed) * 4.0, 0.0, 1.0)
        pleural_line = ring * lungs[side]
        aerated[side] = collapsed * (1.0 - heart)
        collapsed_lung = np.asarray(aerated[side], dtype=np.float32)

    lung_air = np.clip(aerated[0] + aerated[1], 0.0, 1.0)
    hilar_distance = np.minimum(
        np.sqrt((u - hilum[0][0]) ** 2 + (v - hilum[0][1]) ** 2),
        np.sqrt((u - hilum[1][0]) ** 2 + (v - hilum[1][1]) ** 2),
    )
    markings = np.clip(markings_field, 0.0, None) * (0.012 + 0.05 * np.exp(-hilar_distance / 0.3))
    attenuation += -0.27 * lung_air + markings * lung_air
    # The pneumothorax's rim is darker than lung and has no markings; the collapsed lung is denser.
    attenuation += -0.29 * lucent_rim + 0.07 * pleural_line + 0.05 * collapsed_lung

    # Mediastinum, aortic knob, heart, spine, abdomen below the domes.
    mediastinum = _soft(0.085 - np.abs(u - 0.02), edge) * _soft(v + 0.78, edge) * _soft(0.35 - v, edge)
    knob = _ellipse(u, v, 0.1, -0.28, 0.065, 0.06, edge)
    attenuation += 0.16 * np.maximum(np.maximum(mediastinum, knob), heart) * body
    attenuation += 0.07 * _soft(0.055 - np.abs(u), edge) * body
    below = np.clip(_soft(v - domes[0], edge) * (u < 0) + _soft(v - domes[1], edge) * (u >= 0), 0.0, 1.0)
    attenuation += 0.12 * below * torso

    # Ribs and clavicles over everything inside the thorax.
    thorax = _ellipse(u, v, 0.0, 0.0, 0.72, 0.75, edge)
    ribs = np.zeros((n, n), dtype=np.float32)
    first = rng.uniform(-0.62, -0.55)
    for index in range(9):
        centre = first + index * 0.12 + 0.9 * (np.abs(u) - 0.2) ** 2 - 0.05
        ribs = np.maximum(ribs, _soft(0.017 - np.abs(v - centre), edge))
    ribs *= _soft(np.abs(u) - 0.08, edge) * thorax
    clavicle_v = -0.63 + 0.14 * np.abs(u)
    clavicles = _soft(0.02 - np.abs(v - clavicle_v), edge) * _soft(np.abs(u) - 0.07, edge)
    clavicles *= _soft(0.55 - np.abs(u), edge)
    attenuation += 0.07 * ribs + 0.09 * clavicles

    effusion = np.zeros((n, n), dtype=np.float32)
    if "Effusion" in wanted:
        sides = [0, 1] if rng.random() < 0.3 else [int(rng.integers(0, 2))]
        for side in sides:
            height = rng.uniform(0.18, 0.35)
            lateral = np.clip((np.abs(u) - 0.2) / 0.45, 0.0, 1.0)
            level = dome_top[side] - height - 0.12 * lateral
            fluid = lungs[side] * _soft(v - level, edge) * (1.0 - heart)
            effusion = np.maximum(effusion, fluid)
            air_here = aerated[side] * _soft(v - level, edge)
            attenuation += 0.27 * air_here - markings * air_here + 0.05 * fluid
            lung_air = np.clip(lung_air - air_here, 0.0, 1.0)
            aerated[side] = aerated[side] - air_here

    opacities: list[tuple[str, float, float]] = []
    if "Nodule" in wanted:
        for _ in range(int(rng.integers(1, 4))):
            opacities.append(("Nodule", rng.uniform(0.035, 0.06), rng.uniform(0.22, 0.32)))
    if "Mass" in wanted:
        opacities.append(("Mass", rng.uniform(0.09, 0.155), rng.uniform(0.2, 0.3)))
    air_points = np.argwhere(lung_air > 0.9)
    regions: dict[str, np.ndarray] = {}
    placed: list[tuple[str, float, float, float]] = []
    for label, radius_n, density in opacities:
        if air_points.size == 0:
            break
        row, col = air_points[int(rng.integers(0, len(air_points)))]
        pu, pv = u[0, col], v[row, 0]
        outline: np.ndarray | float = 1.0
        if radius_n > 0.06:  # masses are lobulated, nodules round
            angle = np.arctan2(v - pv, u - pu)
            outline = (
                1.0
                + 0.12 * np.sin(3 * angle + rng.uniform(0, 6.3))
                + 0.06 * np.sin(5 * angle + rng.uniform(0, 6.3))
            )
        distance = np.sqrt((u - pu) ** 2 + (v - pv) ** 2)
        opacity = _soft(radius_n * outline - distance, edge)
        attenuation += density * opacity
        regions[label] = regions.get(label, np.zeros((n, n), dtype=bool)) | (opacity > 0.5)
        placed.append((label, float(row), float(col), float(radius_n * n * scale_u / 2.0)))

    if "Effusion" in wanted:
        regions["Effusion"] = effusion > 0.5
    if "Pneumothorax" in wanted:
        regions["Pneumothorax"] = (lucent_rim > 0.5) | (pleural_line > 0.5)
    if "Cardiomegaly" in wanted:
        regions["Cardiomegaly"] = heart > 0.5
    image = np.clip(attenuation, 0.0, 1.0)
    image = image ** rng.uniform(0.85, 1.2) * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
    factor = n / 224.0
    image = _blur2d(image.astype(np.float32), 0.5 * factor)
    image += rng.normal(0.0, min(0.015 * factor, 0.06), size=(n, n)).astype(np.float32)
    return RadiographCase(np.asarray(np.clip(image, 0.0, 1.0), dtype=np.float32), regions, tuple(placed))


def ultrasound_cine(frames: int, rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A B-mode sector-scan cine loop, uint8 ``(frames, rows, columns)``: a 70-degree fan with depth
    attenuation and speckle, a bright capsule and a dark cavity that pulsates over the loop."""
    if frames < 1 or rows < 32 or columns < 32:
        raise ValueError(f"need at least 1 frame of 32 x 32 pixels, got {frames} x {rows} x {columns}")
    r_index = np.arange(rows, dtype=np.float32)[:, None]
    c_index = np.arange(columns, dtype=np.float32)[None, :]
    apex_r, apex_c = -0.04 * rows, (columns - 1) / 2
    depth = np.sqrt((r_index - apex_r) ** 2 + (c_index - apex_c) ** 2) / rows
    angle = np.arctan2(c_index - apex_c, r_index - apex_r)
    fan = (np.abs(angle) < math.radians(35)) & (depth > 0.08) & (depth < 1.0)
    cavity_r, cavity_c = rng.uniform(0.45, 0.6) * rows, (columns - 1) / 2 + rng.uniform(-0.1, 0.1) * columns
    base_radius = rng.uniform(0.12, 0.18) * rows
    reflectivity = 0.55 + 0.15 * np.exp(-(((depth - 0.2) / 0.03) ** 2))
    period = rng.uniform(6.0, 10.0)
    complex_speckle = rng.normal(size=(2, rows, columns)).astype(np.float32)
    cine = np.zeros((frames, rows, columns), dtype=np.uint8)
    for frame in range(frames):
        fresh = rng.normal(size=(2, rows, columns)).astype(np.float32)
        complex_speckle = 0.9 * complex_speckle + math.sqrt(1 - 0.81) * fresh
        speckle = np.sqrt(_blur2d(complex_speckle[0], 0.8) ** 2 + _blur2d(complex_speckle[1], 0.8) ** 2) * 1.6
        radius = base_radius * (1.0 + 0.15 * math.sin(2 * math.pi * frame / period))
        distance = np.sqrt(((r_index - cavity_r) / 1.2) ** 2 + (c_index - cavity_c) ** 2)
        wall = np.exp(-(((distance - radius - 3.0) / 2.5) ** 2))
        echo = reflectivity * _soft(distance - radius, 4.0) + 0.9 * wall
        image = echo * speckle * np.exp(-1.2 * depth) * 0.9
        image = np.where(fan, np.clip(image, 0.0, 1.0), 0.0)
        cine[frame] = np.round(image * 255.0).astype(np.uint8)
    return cine


# --------------------------------------------------------------------------------------------------
# DICOM


@dataclass(frozen=True)
class _Context:
    modality: str
    seed: int
    patient_name: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    date: str
    time: str
    accession: str
    deterministic: bool

    def uid(self, *parts: object) -> str:
        if self.deterministic:
            return str(generate_uid(entropy_srcs=[self.study_uid, *(str(p) for p in parts)]))
        return str(generate_uid())


def _context(
    modality: str, seed: int, patient_name: str, patient_id: str | None, deterministic: bool
) -> _Context:
    def uid(part: str) -> str:
        if deterministic:
            return str(generate_uid(entropy_srcs=["medserve-synthetic", modality, str(seed), part]))
        return str(generate_uid())

    day = dt.date(2024, 1, 1) + dt.timedelta(days=seed % 366)
    return _Context(
        modality=modality,
        seed=seed,
        patient_name=patient_name,
        patient_id=patient_id or f"SYNTH{seed:06d}",
        study_uid=uid("study"),
        series_uid=uid("series"),
        frame_of_reference_uid=uid("frame-of-reference"),
        date=day.strftime("%Y%m%d"),
        time=f"{8 + seed % 10:02d}{seed % 60:02d}00",
        accession=f"SYN{seed % 10**9:09d}"[-16:],
        deterministic=deterministic,
    )


_BODY_PART = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST", "DX": "CHEST", "US": "ABDOMEN"}
_DESCRIPTION = {
    "CT": "Synthetic CT chest-abdomen phantom",
    "MR": "Synthetic MR brain phantom, T1 post-contrast",
    "CR": "Synthetic chest radiograph PA",
    "DX": "Synthetic chest radiograph PA",
    "US": "Synthetic ultrasound cine",
}


def _dataset(context: _Context, sop_class: str, sop_instance: str, instance_number: int) -> Dataset:
    """The patient, study, series, equipment, general image and SOP common modules."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDSERVE_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = context.date
    ds.InstanceCreationTime = context.time
    ds.PatientName = context.patient_name
    ds.PatientID = context.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientComments = "Synthetic phantom written by medserve; not a real person."
    ds.StudyInstanceUID = context.study_uid
    ds.StudyDate = context.date
    ds.StudyTime = context.time
    ds.StudyID = f"{context.seed % 10**6}"
    ds.AccessionNumber = context.accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = _DESCRIPTION[context.modality]
    ds.Modality = context.modality
    ds.SeriesInstanceUID = context.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate = context.date
    ds.SeriesTime = context.time
    ds.SeriesDescription = _DESCRIPTION[context.modality]
    ds.BodyPartExamined = _BODY_PART[context.modality]
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "medserve.demo.dicom_studies"
    ds.InstitutionName = "Synthetic"
    ds.InstanceNumber = instance_number
    ds.ContentDate = context.date
    ds.ContentTime = context.time
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_volume(
    context: _Context, phantom: Phantom, out_dir: Path, offset: tuple[float, float, float]
) -> list[Path]:
    nz, ny, nx = phantom.array.shape
    dz, dy, dx = phantom.spacing
    x0 = -(nx - 1) / 2 * dx + offset[0]
    y0 = -(ny - 1) / 2 * dy + offset[1]
    z0 = -(nz - 1) / 2 * dz + offset[2]
    ct = context.modality == "CT"
    if ct:
        stored = np.clip(np.round(phantom.array - _CT_STORED_INTERCEPT), -32768, 32767).astype(np.int16)
    else:
        stored = np.clip(np.round(phantom.array), 0, 4095).astype(np.uint16)
    sop_class = CTImageStorage if ct else MRImageStorage
    paths: list[Path] = []
    for k in range(nz):
        sop_instance = context.uid("instance", k)
        ds = _dataset(context, sop_class, sop_instance, k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if ct else ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = context.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z0 + k * dz, 4)]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.SpacingBetweenSlices = dz
        ds.SliceLocation = round(z0 + k * dz, 4)
        ds.set_pixel_data(stored[k], "MONOCHROME2", 16 if ct else 12, generate_instance_uid=False)
        if ct:
            ds.RescaleIntercept = _CT_STORED_INTERCEPT
            ds.RescaleSlope = 1.0
            ds.RescaleType = "HU"
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
            ds.WindowCenter = 40
            ds.WindowWidth = 400
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 500.0
            ds.EchoTime = 15.0
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 1.5
            ds.ImagedNucleus = "1H"
            ds.SequenceName = "SYN_T1_SE"
            ds.WindowCenter = 700
            ds.WindowWidth = 1400
        paths.append(_save(ds, out_dir / f"{context.modality}_{k + 1:04d}.dcm"))
    return paths


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _write_radiograph(
    context: _Context, image: np.ndarray, out_dir: Path, photometric: str, findings: Sequence[str]
) -> list[Path]:
    stored = np.round(np.clip(image, 0.0, 1.0) * 4095.0).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (4095 - stored).astype(np.uint16)
    dx_image = context.modality == "DX"
    sop_class = DigitalXRayImageStorageForPresentation if dx_image else ComputedRadiographyImageStorage
    sop_instance = context.uid("instance", 0)
    ds = _dataset(context, sop_class, sop_instance, 1)
    spacing = XRAY_FIELD_MM / image.shape[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.KVP = 120
    ds.set_pixel_data(stored, photometric, 12, generate_instance_uid=False)
    ds.RescaleIntercept = 0.0
    ds.RescaleSlope = 1.0
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.ImageComments = "Synthetic findings: " + (", ".join(findings) or "none")
    if dx_image:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower stored values mean less X-ray intensity reached the detector (denser), as in
        # MONOCHROME1 where dense structures are stored low; -1 for MONOCHROME2.
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.LossyImageCompression = "00"
        ds.DetectorType = "DIRECT"
        ds.DetectorConfiguration = "AREA"
        # The DX modules' own requirements (dciodvfy-clean): anatomy imaged, laterality of an
        # unpaired part, the view coded, no acquisition context and an unknown positioner.
        ds.AnatomicRegionSequence = DicomSequence([_code("51185008", "SCT", "Chest")])
        ds.ImageLaterality = "U"
        ds.ViewCodeSequence = DicomSequence([_code("399348003", "SCT", "postero-anterior")])
        ds.AcquisitionContextSequence = DicomSequence([])
        ds.PositionerType = ""
    return [_save(ds, out_dir / f"{context.modality}_0001.dcm")]


def _write_ultrasound(
    context: _Context, cine: np.ndarray, out_dir: Path, photometric: str, rng: np.random.Generator
) -> list[Path]:
    frames, rows, columns = cine.shape
    if photometric == "RGB":
        pixels = np.repeat(cine[..., None], 3, axis=-1)
        # A colour-Doppler-like box: red and blue flow that alternates over the loop.
        top, left = rows // 3, columns // 2 - columns // 10
        for frame in range(frames):
            flow = (rng.random((rows // 8, columns // 5)) < 0.35).astype(np.uint8) * 200
            channel = 0 if (frame // 3) % 2 == 0 else 2
            box = pixels[frame, top : top + rows // 8, left : left + columns // 5]
            box[..., channel] = np.maximum(box[..., channel], flow)
    else:
        pixels = cine
    sop_instance = context.uid("instance", 0)
    ds = _dataset(context, UltrasoundMultiFrameImageStorage, sop_instance, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.PatientOrientation = ""
    ds.set_pixel_data(pixels, photometric, 8, generate_instance_uid=False)
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.CineRate = 25
    ds.RecommendedDisplayFrameRate = 25
    ds.LossyImageCompression = "00"
    ds.TransducerType = "SECTOR_PHASED"
    delta_cm = US_DEPTH_MM / rows / 10.0
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = columns - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = delta_cm
    region.PhysicalDeltaY = delta_cm
    ds.SequenceOfUltrasoundRegions = DicomSequence([region])
    return [_save(ds, out_dir / f"{context.modality}_0001.dcm")]


def _volume_defaults(
    modality: str,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
    lesions: tuple[int, int] | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[int, int]]:
    if modality == "CT":
        return shape or CT_SHAPE, spacing or CT_SPACING, lesions if lesions is not None else (1, 3)
    return shape or MR_SHAPE, spacing or MR_SPACING, lesions if lesions is not None else (1, 2)


def study_phantom(
    modality: str,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    lesions: tuple[int, int] | None = None,
) -> Phantom:
    """The phantom (array, lesion mask and lesions) that ``write_study`` stores for a CT or MR
    study with the same arguments; raises ``ValueError`` for other modalities."""
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"only CT and MR studies have a volume phantom, not {modality!r}")
    shape, spacing, lesions = _volume_defaults(modality, shape, spacing, lesions)
    rng = np.random.default_rng(seed)
    if modality == "CT":
        return ct_phantom_case(shape, spacing, rng, lesions)
    return mr_phantom_case(shape, spacing, rng, lesions)


def write_study(
    modality: str,
    out_dir: Path | str,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    lesions: tuple[int, int] | None = None,
    size: int | tuple[int, int] | None = None,
    findings: Sequence[str] = (),
    photometric: str | None = None,
    frames: int = US_FRAMES,
    patient_name: str = PATIENT_NAME,
    patient_id: str | None = None,
    deterministic_uids: bool = False,
) -> list[Path]:
    """Write one synthetic series of ``modality`` into ``out_dir`` and return the DICOM files.

    * CT, MR: one file per axial slice (``CT_0001.dcm`` ...), of ``shape`` ``(slices, rows,
      columns)`` at ``spacing`` mm (defaults ``CT_SHAPE`` at ``CT_SPACING`` and ``MR_SHAPE`` at
      ``MR_SPACING``) with ``lesions`` = (min, max) lesions (CT (1, 3), MR (1, 2)). CT is stored as
      int16 with RescaleIntercept -1024 (HU = stored - 1024); MR as 12-bit unsigned.
    * CR, DX: one chest radiograph of ``size`` x ``size`` pixels (``XRAY_SIZE``) showing
      ``findings`` (see ``chest_radiograph``), 12 bits, ``photometric`` MONOCHROME2 (default) or
      MONOCHROME1 (stored inverted).
    * US: one multi-frame instance of ``frames`` frames of ``size`` (rows, columns) (``US_SIZE``),
      ``photometric`` MONOCHROME2 (default) or RGB (with a colour-flow box).

    Pixel data come from ``np.random.default_rng(seed)``, so a seed always gives the same images;
    UIDs are fresh unless ``deterministic_uids`` (then derived from the modality and seed, and
    writing the same study twice gives the same UIDs). ``ground_truth.json`` beside the files
    records the study (see ``read_ground_truth``). Raises ``ValueError`` for bad arguments.
    """
    modality = modality.upper()
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = _context(modality, seed, patient_name, patient_id, deterministic_uids)
    truth: dict[str, Any] = {
        "modality": modality,
        "seed": seed,
        "patient_id": context.patient_id,
        "study_instance_uid": context.study_uid,
        "series_instance_uid": context.series_uid,
    }
    rng = np.random.default_rng(seed)
    if modality in ("CT", "MR"):
        if size is not None or photometric not in (None, "MONOCHROME2") or findings:
            raise ValueError(f"{modality}: size, photometric and findings do not apply to volumes")
        shape, spacing, lesions = _volume_defaults(modality, shape, spacing, lesions)
        if modality == "CT":
            phantom, offset = ct_phantom_case(shape, spacing, rng, lesions), _CT_OFFSET_MM
        else:
            phantom, offset = mr_phantom_case(shape, spacing, rng, lesions), _MR_OFFSET_MM
        paths = _write_volume(context, phantom, out, offset)
        truth.update(_volume_truth(context, phantom, offset, lesions))
    elif modality in ("CR", "DX"):
        photometric = photometric or "MONOCHROME2"
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(
                f"{modality}: photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}"
            )
        if isinstance(size, tuple) and size[0] != size[1]:
            raise ValueError(f"{modality}: radiographs are square, got size {size}")
        side = size if isinstance(size, int) else (size[0] if size else XRAY_SIZE)
        image = chest_radiograph(side, rng, findings)
        paths = _write_radiograph(context, image, out, photometric, findings)
        truth.update(
            findings=sorted(set(findings)),
            photometric=photometric,
            rows=side,
            columns=side,
            pixel_spacing_mm=XRAY_FIELD_MM / side,
        )
    else:
        photometric = photometric or "MONOCHROME2"
        if photometric not in ("MONOCHROME2", "RGB"):
            raise ValueError(f"US: photometric must be MONOCHROME2 or RGB, not {photometric!r}")
        rows, columns = (size, size) if isinstance(size, int) else (size or US_SIZE)
        if frames < 2:
            raise ValueError(f"US: a cine loop needs at least 2 frames, got {frames}")
        cine = ultrasound_cine(frames, rows, columns, rng)
        paths = _write_ultrasound(context, cine, out, photometric, rng)
        truth.update(frames=frames, rows=rows, columns=columns, photometric=photometric)
    truth["files"] = [path.name for path in paths]
    (out / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return paths


def _volume_truth(
    context: _Context, phantom: Phantom, offset: tuple[float, float, float], lesions: tuple[int, int]
) -> dict[str, Any]:
    nz, ny, nx = phantom.array.shape
    dz, dy, dx = phantom.spacing
    origin = (-(nx - 1) / 2 * dx + offset[0], -(ny - 1) / 2 * dy + offset[1], -(nz - 1) / 2 * dz + offset[2])
    return {
        "shape": [nz, ny, nx],
        "spacing_mm": [dz, dy, dx],
        "origin_patient_mm": [round(v, 4) for v in origin],
        "frame_of_reference_uid": context.frame_of_reference_uid,
        "lesions_requested": list(lesions),
        "lesion_count": len(phantom.lesions),
        "lesion_volume_ml": round(phantom.lesion_volume_ml, 4),
        "units": "HU" if context.modality == "CT" else "arbitrary MR signal",
        "lesions": [
            {
                "number": lesion.number,
                "centre_voxel": [round(c, 3) for c in lesion.centre_voxel],
                "centre_patient_mm": [round(c + o, 3) for c, o in zip(lesion.centre_mm, offset)],
                "radius_mm": lesion.radius_mm,
                "contrast": lesion.contrast,
                "voxels": lesion.voxels,
                "volume_ml": round(lesion.volume_ml, 4),
                "sphere_volume_ml": round(lesion.sphere_volume_ml, 4),
            }
            for lesion in phantom.lesions
        ],
    }


def read_ground_truth(folder: Path | str) -> dict[str, Any]:
    """The ``ground_truth.json`` that ``write_study`` wrote into ``folder``."""
    loaded = json.loads((Path(folder) / GROUND_TRUTH_FILE).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{folder}: {GROUND_TRUTH_FILE} is not a JSON object")
    return loaded
