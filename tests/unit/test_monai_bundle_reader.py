"""Reading a MONAI bundle folder without torch or monai: tensors, inference config, derived defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medserve.repository.config import load_model_config
from medserve.repository.monai_bundle import (
    bundle_model_defaults,
    bundle_root,
    is_bundle_folder,
    network_data_format,
    read_inference_config,
    read_json,
)
from medserve.values.errors import InvalidConfig, ModelLoadError

IMAGE = {"type": "image", "num_channels": 1, "spatial_shape": [64, "16*n"], "dtype": "float32"}
PRED = {
    "type": "image",
    "num_channels": 2,
    "spatial_shape": [64, 64],
    "dtype": "torch.uint8",
    "channel_def": {"1": "organ", "0": "background"},
}


def write_bundle(version_dir: Path, outputs: dict[str, Any] | None = None, weights: str = "model.ts") -> Path:
    (version_dir / "configs").mkdir(parents=True)
    (version_dir / "models").mkdir()
    metadata = {"network_data_format": {"inputs": {"image": IMAGE}, "outputs": outputs or {"pred": PRED}}}
    (version_dir / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (version_dir / "models" / weights).write_bytes(b"weights")
    return version_dir


def test_network_data_format_gives_channel_first_dims_and_datatypes(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "1")
    source = bundle / "configs" / "metadata.json"
    inputs, outputs = network_data_format(read_json(source), source)
    assert [(t.name, t.datatype, t.dims, t.kind) for t in inputs] == [("image", "FP32", [1, 64, -1], "image")]
    assert [(t.name, t.datatype, t.dims) for t in outputs] == [("pred", "UINT8", [2, 64, 64])]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({**IMAGE, "dtype": "complex64"}, "network_data_format.inputs.image.dtype' is 'complex64'"),
        ({**IMAGE, "num_channels": 0}, "num_channels' must be a positive integer"),
        ({"type": "image"}, "gives neither num_channels nor spatial_shape"),
        ([1, 2], "network_data_format.inputs.image' must be an object"),
    ],
)
def test_a_bad_tensor_is_refused_naming_the_file_and_field(tmp_path: Path, tensor: Any, message: str) -> None:
    source = tmp_path / "metadata.json"
    metadata = {"network_data_format": {"inputs": {"image": tensor}, "outputs": {"pred": PRED}}}
    with pytest.raises(ModelLoadError) as failure:
        network_data_format(metadata, source)
    assert str(failure.value).startswith(f"{source}:") and message in str(failure.value)


def test_read_json_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        read_json(tmp_path / "metadata.json")
    (tmp_path / "metadata.json").write_text("[1]")
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        read_json(tmp_path / "metadata.json")


def test_the_inference_config_is_json_else_yaml(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "1")
    assert read_inference_config(bundle) == (None, {})
    (bundle / "configs" / "inference.yaml").write_text("inferer: {_target_: SimpleInferer}\n")
    assert read_inference_config(bundle) == (
        bundle / "configs" / "inference.yaml",
        {"inferer": {"_target_": "SimpleInferer"}},
    )
    (bundle / "configs" / "inference.json").write_text('{"network_def": {"_target_": "UNet"}}')
    path, config = read_inference_config(bundle)
    assert path == bundle / "configs" / "inference.json" and config == {"network_def": {"_target_": "UNet"}}


def test_a_model_folder_of_bundles_derives_its_configuration(tmp_path: Path) -> None:
    model = tmp_path / "seg"
    write_bundle(model / "1")
    write_bundle(model / "2", weights="model.pt")
    (model / "notes").mkdir()
    assert is_bundle_folder(model / "1") and not is_bundle_folder(model / "notes")
    assert bundle_model_defaults(model) == {
        "runtime": "monai_bundle",
        "artifact": "models/model.pt",  # the newest bundle has only a state dict
        "max_batch_size": 4,
        "metadata": {"labels": ["background", "organ"]},
    }
    config = load_model_config(model)  # no config.yaml: the derived configuration, validated
    assert config.runtime == "monai_bundle" and config.artifact == "models/model.pt"
    (model / "config.yaml").write_text("max_batch_size: 2\n")
    assert load_model_config(model).max_batch_size == 2


def test_labels_need_a_complete_channel_def(tmp_path: Path) -> None:
    gap = {"pred": {**PRED, "channel_def": {"0": "background", "2": "organ"}}}
    write_bundle(tmp_path / "seg" / "1", outputs=gap)
    defaults = bundle_model_defaults(tmp_path / "seg")
    assert defaults is not None and defaults["metadata"] == {}


def test_a_bundle_outside_a_version_folder_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "seg")
    with pytest.raises(InvalidConfig, match="move it into a version folder"):
        bundle_model_defaults(tmp_path / "seg")
    assert bundle_model_defaults(tmp_path) is None  # no bundle: an ordinary model folder


def test_the_bundle_root_of_a_weights_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "seg" / "1")
    assert bundle_root(bundle / "models" / "model.ts") == bundle
