"""The pointing game (Zhang et al., 2016) on the synthetic chest radiographs: does an explanation map's
peak fall on the finding it explains?

For a finding of ``chest_xray_classifier``, radiographs showing that finding alone are written as DICOM
(``dicom_studies.write_study``), read back and prepared as the ``classification_2d`` pipeline prepares
them (frames, resized to 224, scaled to [0, 1]). Images where the model finds the finding (probability
>= 0.5: a correct detection, every image showing it) are explained with occlusion
(``medserve.explanations``; the model run by ONNX Runtime as the evaluator). A *hit*: the map's peak
(``console.map_overlay.peak_of``) lies within ``tolerance`` pixels (224 grid) of the finding's true
region (``chest_radiograph_case(...).regions``: the same random draws as the image). The *chance rate*
is the share of the image within that distance of the region: the hit rate of a map whose peak lands
uniformly at random (a random map).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import yaml
from scipy import ndimage

from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.series_to_volume import series_to_frames
from medserve.console.map_overlay import peak_of
from medserve.demo.dicom_studies import chest_radiograph_case, write_study
from medserve.explanations.methods import plan_method, run_perturbation

LESIONS = ("Mass", "Nodule")
"""The focal findings: the lesions the pointing game is about."""
OTHERS = ("Effusion", "Pneumothorax", "Cardiomegaly")
SIZE = 224

OnExplained = Callable[[str, Path, np.ndarray, float], None]


@dataclass
class Score:
    """One finding's game: images shown, detections, explained detections, hits, chance rate."""

    label: str
    images: int = 0
    detected: int = 0
    explained: int = 0
    hits: int = 0
    chances: list[float] = field(default_factory=list)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.explained if self.explained else None

    @property
    def chance_rate(self) -> float | None:
        return float(np.mean(self.chances)) if self.chances else None

    def describe(self) -> dict[str, object]:
        rate, chance = self.hit_rate, self.chance_rate
        return {
            "images": self.images,
            "detected": self.detected,
            "explained": self.explained,
            "hits": self.hits,
            "hit_rate": None if rate is None else round(rate, 3),
            "chance_rate": None if chance is None else round(chance, 3),
        }


def near(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """``mask`` grown by ``tolerance`` pixels (a disc)."""
    if tolerance <= 0:
        return mask.astype(bool)
    grid = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
    disc = np.hypot(grid[0], grid[1]) <= tolerance
    return np.asarray(ndimage.binary_dilation(mask, structure=disc), dtype=bool)


def hit(values: np.ndarray, mask: np.ndarray, tolerance: int) -> bool:
    """Whether the peak of ``values`` lies within ``tolerance`` pixels of ``mask``."""
    return bool(near(mask, tolerance)[peak_of(values)])


def chance(mask: np.ndarray, tolerance: int) -> float:
    """The hit rate of a uniformly random peak: the share of the image within ``tolerance`` of ``mask``."""
    return float(near(mask, tolerance).mean())


def case(label: str, seed: int, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """(DICOM file, model input (224, 224), true region on the 224 grid) of one radiograph."""
    paths = write_study("CR", folder, seed=seed, findings=[label], deterministic_uids=True)
    frames = series_to_frames([pydicom.dcmread(p) for p in paths])
    image = prep.scale_to_unit(prep.resize_2d(frames.array, (SIZE, SIZE)))[0]
    side = int(frames.array.shape[-1])
    region = chest_radiograph_case(side, np.random.default_rng(seed), [label]).regions[label]
    return paths[0], image, prep.resize_2d(region.astype(np.float32), (SIZE, SIZE)) > 0.5


class OnnxModel:
    """``chest_xray_classifier`` from a repository folder, run by ONNX Runtime on the CPU."""

    def __init__(self, repository: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        folder = repository / "chest_xray_classifier"
        self.path = folder / "1" / "model.onnx"
        self.config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        self.labels = [str(v) for v in self.config["metadata"]["labels"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, labels)`` of images ``(n, 1, 224, 224)``."""
        outputs = [
            np.asarray(self.session.run(None, {"image": batch[k : k + 8].astype(np.float32)})[0])
            for k in range(0, len(batch), 8)
        ]
        return np.concatenate(outputs)


def play(
    model: OnnxModel,
    labels: Sequence[str],
    *,
    images: int,
    max_explained: int,
    seed: int = 50_000,
    window: int = 32,
    stride: int = 16,
    tolerance: int = 8,
    on_explained: OnExplained | None = None,
) -> dict[str, Score]:
    """The game for each of ``labels``: ``images`` radiographs each (seeds from ``seed``), at most
    ``max_explained`` of the detections explained. ``on_explained(label, file, map, probability)`` is
    called for every explained case."""
    plan = plan_method(
        "occlusion",
        {"window": window, "stride": stride, "batch_size": 32},
        (1, SIZE, SIZE),
        gradients=False,
        max_evaluations=1_000_000,
    )
    scores: dict[str, Score] = {}
    for label in labels:
        target = model.labels.index(label)
        score = scores[label] = Score(label, images)
        with tempfile.TemporaryDirectory() as scratch:
            cases = [case(label, seed + 1000 * target + k, Path(scratch) / str(k)) for k in range(images)]
            probabilities = model(np.stack([image for _, image, _ in cases])[:, None])[:, target]
            for (path, image, mask), p in zip(cases, probabilities):
                if p < 0.5:
                    continue
                score.detected += 1
                if score.explained >= max_explained:
                    continue

                async def evaluate(batch: np.ndarray, target: int = target) -> np.ndarray:
                    return np.asarray(model(batch)[:, target], dtype=np.float64)

                values = asyncio.run(run_perturbation(plan, image[None], evaluate))[0]
                score.hits += hit(values, mask, tolerance)
                score.chances.append(chance(mask, tolerance))
                score.explained += 1
                if on_explained is not None:
                    on_explained(label, path, values, float(p))
    return scores
