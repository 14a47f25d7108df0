"""The pointing game on the synthetic chest radiographs (``medserve.demo.pointing_game``): its scoring
against the true region of a drawn lesion, and the goal for the demonstration model (for correctly
detected lesions, the occlusion map's peak on the lesion for >= 80 % of them, far above a random map's
rate), which the example model does not reach: it detects none of the synthetic masses and nodules
(docs/EXPLANATIONS.md has the figures), so that test is an expected failure, strict: it fails as soon
as a model reaches the goal, and the marker must then go."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from medserve.console.map_overlay import peak_of
from medserve.demo.dicom_studies import chest_radiograph_case
from medserve.demo.pointing_game import LESIONS, SIZE, OnnxModel, chance, hit, near, play

pytestmark = pytest.mark.slow


def test_the_game_scores_the_true_region_as_a_hit_and_random_maps_at_the_chance_rate() -> None:
    mask = chest_radiograph_case(SIZE, np.random.default_rng(4), ["Mass"]).regions["Mass"]
    assert 0 < mask.mean() < 0.05
    rng = np.random.default_rng(0)
    on_lesion = mask.astype(np.float32) + rng.uniform(0, 0.01, mask.shape).astype(np.float32)
    assert hit(on_lesion, mask, tolerance=0)
    elsewhere = np.zeros(mask.shape, np.float32)
    rows, columns = np.nonzero(~mask)
    far = int(
        np.argmax((rows - np.nonzero(mask)[0].mean()) ** 2 + (columns - np.nonzero(mask)[1].mean()) ** 2)
    )
    elsewhere[rows[far], columns[far]] = 1.0
    assert not hit(elsewhere, mask, tolerance=8)
    # a near miss is a hit only within the tolerance
    edge_row = int(np.nonzero(mask.any(axis=1))[0].max())
    column = int(np.nonzero(mask[edge_row])[0][0])
    below = np.zeros(mask.shape, np.float32)
    below[min(edge_row + 5, SIZE - 1), column] = 1.0
    assert hit(below, mask, tolerance=8) and not hit(below, mask, tolerance=2)
    # random maps hit at the chance rate
    grown = near(mask, 8)
    hits = np.mean([grown[peak_of(rng.normal(size=mask.shape))] for _ in range(400)])
    assert chance(mask, 8) == pytest.approx(hits, abs=0.04)
    assert chance(mask, 8) < 0.15


@pytest.mark.xfail(
    strict=True,
    reason="measured: chest_xray_classifier detects none of the synthetic masses and nodules at threshold "
    "0.5 (test profile: 0 of 32, default profile: 0 of 80), so no detected lesion can be scored",
)
def test_occlusion_peaks_of_correctly_detected_lesions_fall_on_the_lesion(example_repository: Path) -> None:
    warnings.simplefilter("ignore")
    scores = play(OnnxModel(example_repository), LESIONS, images=8, max_explained=4)
    images = sum(s.images for s in scores.values())
    explained = sum(s.explained for s in scores.values())
    detected = sum(s.detected for s in scores.values())
    assert explained > 0, f"the model detected {detected} of {images} synthetic lesions"
    rate = sum(s.hits for s in scores.values()) / explained
    chances = [c for s in scores.values() for c in s.chances]
    assert rate >= 0.8, f"{rate:.0%} of {explained} detected lesions hit"
    assert rate >= 3 * float(np.mean(chances))
