"""The pointing game on the synthetic chest radiographs (``medserve.demo.pointing_game``): for correctly
detected findings, does the occlusion map's peak fall on the finding's true region, against the rate of
a random map? Prints a JSON report (per finding and for the lesions, Mass and Nodule, together).

    python benchmarks/pointing_game.py --repository /work/cache/prebuilt --images 40 \
        --figures docs/explanations

``--figures DIR`` also writes, for the first explained case of each finding, the console's overlay: the
DICOM Parametric Map written by ``parametric_map_writer``, rendered by ``console.map_overlay``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom

from medserve.clinical.dicom.parametric_map_writer import write_parametric_map
from medserve.clinical.dicom.results import Algorithm, Explanation, Finding, ImagingResult
from medserve.clinical.dicom.series_to_volume import series_to_frames
from medserve.console.map_overlay import render_map_overlay
from medserve.demo.pointing_game import LESIONS, OTHERS, OnnxModel, play


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("/work/cache/prebuilt"))
    parser.add_argument("--images", type=int, default=40, help="radiographs per finding")
    parser.add_argument("--max-explained", type=int, default=15, help="explained detections per finding")
    parser.add_argument("--seed", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--tolerance", type=int, default=8, help="pixels on the 224 grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labels", default=",".join(LESIONS + OTHERS))
    parser.add_argument("--figures", type=Path, default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    model = OnnxModel(args.repository, args.threads)
    drawn: set[str] = set()

    def figure(label: str, path: Path, values: np.ndarray, p: float) -> None:
        if args.figures is not None and label not in drawn:
            drawn.add(label)
            _figure(model, args.figures, label, path, values, p, args)

    started = time.monotonic()
    scores = play(
        model,
        args.labels.split(","),
        images=args.images,
        max_explained=args.max_explained,
        seed=args.seed,
        window=args.window,
        stride=args.stride,
        tolerance=args.tolerance,
        on_explained=figure,
    )
    lesions = [scores[k] for k in LESIONS if k in scores]
    explained, hits = sum(s.explained for s in lesions), sum(s.hits for s in lesions)
    report = {
        "parameters": {k: str(v) for k, v in vars(args).items() if k != "figures"},
        "labels": {label: score.describe() for label, score in scores.items()},
        "lesions": {
            "images": sum(s.images for s in lesions),
            "detected": sum(s.detected for s in lesions),
            "explained": explained,
            "hits": hits,
            "hit_rate": round(hits / explained, 3) if explained else None,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))


def _figure(
    model: OnnxModel,
    out: Path,
    label: str,
    path: Path,
    values: np.ndarray,
    p: float,
    args: argparse.Namespace,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(path)
    digest = hashlib.sha256(model.path.read_bytes()).hexdigest()
    algorithm = Algorithm("chest_xray_classifier", "1", digest, True, "")
    parameters = f"window {args.window}, stride {args.stride}"
    result = ImagingResult(
        "chest-xray",
        algorithm,
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        frames=series_to_frames([ds]),
        findings=(Finding(label, p, 0.5),),
        explanations=(Explanation(0, "occlusion", values.astype(np.float32), parameters),),
    )
    pm_path = path.with_name("pm.dcm")
    write_parametric_map(result, result.explanations[0]).save_as(pm_path, enforce_file_format=True)
    (out / f"occlusion_{label.lower()}.png").write_bytes(render_map_overlay(pm_path, [path]).png)


if __name__ == "__main__":
    main()
