"""``ct_lesion_segmentation``: built with the test profile, it exports a valid ONNX graph with a
dynamic batch, documents its preprocessing and its build, passes its held-out floors and finds the
lesions of a synthetic CT study through the pipeline's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from medserve.demo import dicom_studies as synthetic
from medserve.demo.models import ct_segmentation
from medserve.demo.models._profile import PROFILE_ENV
from medserve.demo.models.repository import EXAMPLE_MODELS, build_example_repository


def test_catalogue_and_static_config() -> None:
    assert EXAMPLE_MODELS.index("ct_lesion_segmentation") < EXAMPLE_MODELS.index("simple")
    config = ct_segmentation.CONFIG
    assert config["inputs"] == [{"name": "image", "datatype": "FP32", "dims": [1, 48, 48, 48]}]
    assert config["outputs"] == [{"name": "probabilities", "datatype": "FP32", "dims": [2, 48, 48, 48]}]
    preprocessing = config["metadata"]["preprocessing"]
    assert preprocessing["window"] == [-200.0, 300.0] and preprocessing["spacing_mm"] == [2.0, 2.0, 2.0]
    assert preprocessing["patch_size"] == [48, 48, 48]
    hu = np.array([-1000.0, -200.0, 50.0, 300.0, 1500.0], dtype=np.float32)
    np.testing.assert_allclose(ct_segmentation.preprocess(hu), [0.0, 0.0, 0.5, 1.0, 1.0])


def _config(root: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((root / "ct_lesion_segmentation" / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.slow
def test_build_with_the_test_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    monkeypatch.setenv(PROFILE_ENV, "test")
    assert build_example_repository(tmp_path, models=["ct_lesion_segmentation"]) == ["ct_lesion_segmentation"]

    config = _config(tmp_path)
    assert config["runtime"] == "onnxruntime" and config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_sizes"] == [4, 8]
    metadata = config["metadata"]
    assert metadata["labels"] == ["background", "lesion"]
    assert metadata["research_use"] is True and "NOT a clinical model" in metadata["intended_use"]
    # The build recorded what it did and measured, and the floors held.
    build = metadata["build"]
    assert build["profile"] == "test" and build["steps"] == ct_segmentation.STEPS["test"]
    assert build["seed"] == ct_segmentation.SEED and build["threads"] == 1
    assert build["floors"] == {"DICE": ">= 0.7", "lesion sensitivity": ">= 0.9"}
    assert build["held_out"]["DICE"] == metadata["dice_held_out"] >= 0.7
    assert build["held_out"]["lesion sensitivity"] == metadata["lesion_sensitivity_held_out"] >= 0.9
    assert metadata["training"]["steps"] == ct_segmentation.STEPS["test"]
    pytest.importorskip("medserve.repository.config").load_model_config(tmp_path / "ct_lesion_segmentation")

    path = tmp_path / "ct_lesion_segmentation" / "1" / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image" and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [1, 48, 48, 48]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    patches = np.random.default_rng(0).random((3, 1, 48, 48, 48), dtype=np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": patches})
    assert probabilities.shape == (3, 2, 48, 48, 48)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # A synthetic study through the pipeline's preprocessing: every lesion is found, and mostly right.
    phantom = synthetic.study_phantom("CT", seed=11)

    def run(batch: np.ndarray) -> np.ndarray:
        (out,) = session.run(["probabilities"], {"image": batch})
        return np.asarray(out)

    prediction = ct_segmentation.segment(phantom.array, phantom.spacing, run) > 0
    truth = phantom.mask > 0
    dice = 2 * np.count_nonzero(prediction & truth) / (np.count_nonzero(prediction) + np.count_nonzero(truth))
    assert dice > 0.6
    for lesion in phantom.lesions:
        k, row, column = (round(v) for v in lesion.centre_voxel)
        assert prediction[k, row, column], lesion
