"""``toy_spleen_seg_2d``: a MONAI bundle built locally, to serve with the ``monai_bundle`` runtime.

A small 2D ``monai.networks.nets.UNet`` (1 channel in, 2 out, 64 x 64) segments a bright, organ-like
ellipse in synthetic CT-like slices (Hounsfield-like values). By default it is trained for a few seconds
on that synthetic task, so its masks mean something on synthetic slices and nothing clinically; with
``train_steps=0`` it keeps its seeded random initialisation. Nothing is downloaded.

The bundle is written in the standard layout (see ``medserve.runtimes.monai_bundle``)::

    <dest>/configs/metadata.json    network_data_format: image [1, 64, 64] -> pred [2, 64, 64]
    <dest>/configs/inference.json   network_def, preprocessing (ScaleIntensityRanged), SimpleInferer,
                                    postprocessing (Activationsd softmax, AsDiscreted argmax, ...)
    <dest>/models/model.ts          TorchScript (or models/model.pt, a state dict)

Serve it by writing it into a version folder: ``build_example_bundle(repo / NAME / "1")``.
torch and monai are imported only when the bundle is built.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

NAME = "toy_spleen_seg_2d"
BUNDLE_VERSION = "0.1.0"
SIZE = 64
SEED = 20240607
TRAIN_STEPS = 60
BATCH = 8
#: the window ScaleIntensityRanged maps to [0, 1], as in MONAI's spleen segmentation bundle
HU_MIN, HU_MAX = -57.0, 164.0
NETWORK_DEF: dict[str, Any] = {
    "_target_": "UNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}

Weights = Literal["torchscript", "state_dict"]


def synthetic_slices(count: int, seed: int = SEED, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``count`` CT-like slices ``[count, 1, size, size]`` (float32, HU-like) and their masks (0/1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = rng.normal(0.0, 30.0, (count, 1, size, size)).astype(np.float32)
    masks = np.zeros((count, 1, size, size), dtype=np.float32)
    for i in range(count):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        ry, rx = rng.uniform(0.08 * size, 0.22 * size, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        masks[i, 0][inside] = 1.0
        images[i, 0][inside] = rng.normal(120.0, 15.0, int(inside.sum()))
    return images, masks


def _scale(images: np.ndarray) -> np.ndarray:
    """The bundle's preprocessing (ScaleIntensityRanged with clip), for training."""
    return np.clip((images - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0).astype(np.float32)


def _network() -> torch.nn.Module:
    from monai.networks.nets.unet import UNet

    args = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    module: torch.nn.Module = UNet(**args)
    return module


def _train(network: torch.nn.Module, steps: int, seed: int) -> float | None:
    """Train briefly on synthetic slices; returns the mean Dice on held-out slices (None untrained)."""
    import torch
    from monai.losses.dice import DiceCELoss

    if steps <= 0:
        return None
    images, masks = synthetic_slices(steps * BATCH, seed)
    x_all, y_all = torch.from_numpy(_scale(images)), torch.from_numpy(masks)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    started = time.perf_counter()
    for step in range(steps):
        x, y = x_all[step * BATCH : (step + 1) * BATCH], y_all[step * BATCH : (step + 1) * BATCH]
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
    network.eval()
    test_images, test_masks = synthetic_slices(32, seed + 1)
    with torch.inference_mode():
        pred = network(torch.from_numpy(_scale(test_images))).argmax(1, keepdim=True).numpy()
    overlap = (pred * test_masks).sum(axis=(1, 2, 3))
    dice = float(np.mean(2 * overlap / (pred.sum(axis=(1, 2, 3)) + test_masks.sum(axis=(1, 2, 3)) + 1e-6)))
    _log.info(
        "trained %s for %d steps in %.1f s; held-out Dice %.3f",
        NAME,
        steps,
        time.perf_counter() - started,
        dice,
    )
    return dice


def _metadata(dice: float | None, steps: int) -> dict[str, Any]:
    import monai
    import torch

    trained = (
        f"trained for {steps} steps on synthetic slices (held-out synthetic Dice {dice:.3f})"
        if dice is not None
        else "untrained: seeded random weights"
    )
    return {
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "toy bundle built by medserve.demo.models.monai_bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "name": "Toy spleen segmentation (2D)",
        "task": "Segmentation of a bright organ-like ellipse in synthetic 2D CT-like slices",
        "description": (
            "A small 2D UNet in a MONAI bundle, built locally to demonstrate serving MONAI bundles. "
            f"It is {trained}; its output means nothing clinically."
        ),
        "authors": "medserve examples",
        "copyright": "Copyright (c) medserve contributors",
        "data_source": "synthetic slices generated by medserve.demo.models.monai_bundle.synthetic_slices",
        "data_type": "numpy",
        "image_classes": "single channel slice, Hounsfield-like units",
        "label_classes": "single channel mask: 1 is the organ-like ellipse, 0 is background",
        "pred_classes": "2 channels before argmax: background, organ",
        "eval_metrics": {"mean_dice": round(dice, 4) if dice is not None else None},
        "intended_use": "demonstration",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [SIZE, SIZE],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [SIZE, SIZE],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "background", "1": "organ"},
                }
            },
        },
    }


def inference_config() -> dict[str, Any]:
    """``configs/inference.json``, shaped like MONAI's own bundles (loaders, writers and evaluator too)."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/toy_spleen_2d",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "image_key": "image",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "@image_key",
                    "a_min": HU_MIN,
                    "a_max": HU_MAX,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "@image_key",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_ext": ".nii.gz",
                    "resample": False,
                },
            ],
        },
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def build_example_bundle(
    dest: Path, *, train_steps: int = TRAIN_STEPS, weights: Weights = "torchscript", seed: int = SEED
) -> Path:
    """Write the toy bundle into ``dest`` (created; e.g. ``<repo>/toy_spleen_seg_2d/1``); returns ``dest``.

    ``weights`` picks ``models/model.ts`` (TorchScript) or ``models/model.pt`` (a state dict, the network
    then being built from ``network_def``). ``train_steps=0`` skips the few seconds of training.
    """
    import torch

    if weights not in ("torchscript", "state_dict"):
        raise ValueError(f"weights must be 'torchscript' or 'state_dict', not {weights!r}")
    dest = Path(dest)
    torch.manual_seed(seed)
    network = _network()
    dice = _train(network, train_steps, seed)
    network.eval()
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    if weights == "torchscript":
        scripted: Any = torch.jit.script(network)
        scripted.save(str(dest / "models" / "model.ts"))
    else:
        torch.save(network.state_dict(), dest / "models" / "model.pt")
    (dest / "configs" / "metadata.json").write_text(
        json.dumps(_metadata(dice, train_steps), indent=4) + "\n", encoding="utf-8"
    )
    (dest / "configs" / "inference.json").write_text(
        json.dumps(inference_config(), indent=4) + "\n", encoding="utf-8"
    )
    (dest / "LICENSE").write_text("Toy example bundle for medserve; synthetic data only.\n", encoding="utf-8")
    return dest
