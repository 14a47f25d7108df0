"""The ``monai_bundle`` runtime: MONAI bundle folders as repository versions, derived config, pre/post."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medserve.core.metrics import ServingMetrics
from medserve.core.model import load_version
from medserve.core.registry import ModelRegistry
from medserve.demo.models.monai_bundle import HU_MAX, HU_MIN, NAME, build_example_bundle, synthetic_slices
from medserve.repository.repository import ModelRepository
from medserve.values.errors import InvalidConfig, MedserveError, ModelLoadError
from medserve.values.types import InferenceRequest, RequestedOutput, Tensor

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

# building, importing monai and loading several bundles takes 10-20 s on 2 cores
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "torchscript": build_example_bundle(root / "ts"),
        "state_dict": build_example_bundle(root / "sd", weights="state_dict", train_steps=0),
    }


def place(repo: Path, bundle: Path, name: str = NAME, version: int = 1) -> Path:
    dest = repo / name / str(version)
    shutil.copytree(bundle, dest)
    return dest


def reference(bundle: Path, images: np.ndarray) -> np.ndarray:
    """The TorchScript network run directly, with the bundle's pre/post-processing written in torch."""
    network = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        x = torch.from_numpy(images)
        x = torch.clamp((x - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)
        probabilities = torch.softmax(network(x), dim=1)
        labels: np.ndarray = probabilities.argmax(dim=1, keepdim=True).float().numpy()
    return labels


def load(repo: Path, name: str = NAME) -> Any:
    repository = ModelRepository(repo)
    config = repository.config(name)
    artifact = repository.artifacts(name, config)[-1]
    return load_version(name, artifact.version, config, artifact.path)


# ------------------------------------------------------------------ config and repository


def test_config_is_derived_from_the_bundle(built: dict[str, Path], tmp_path: Path) -> None:
    place(tmp_path, built["torchscript"])
    place(tmp_path, built["state_dict"], name="sd")
    repository = ModelRepository(tmp_path)
    config = repository.config(NAME)
    assert config.runtime == "monai_bundle"
    assert config.artifact == "models/model.ts"
    assert config.max_batch_size == 4 and config.dynamic_batching is None
    assert config.metadata["labels"] == ["background", "organ"]
    assert [a.path for a in repository.artifacts(NAME, config)] == [
        tmp_path / NAME / "1" / "models" / "model.ts"
    ]
    assert repository.config("sd").artifact == "models/model.pt"


def test_config_yaml_overrides_the_derived_config(built: dict[str, Path], tmp_path: Path) -> None:
    place(tmp_path, built["torchscript"])
    (tmp_path / NAME / "config.yaml").write_text(
        "max_batch_size: 8\n"
        "dynamic_batching: {max_queue_delay_us: 100, preferred_batch_sizes: [4, 8]}\n"
        "instance_count: 2\n"
        "metadata: {owner: radiology}\n"
    )
    config = ModelRepository(tmp_path).config(NAME)
    assert config.runtime == "monai_bundle" and config.artifact == "models/model.ts"
    assert config.max_batch_size == 8 and config.instance_count == 2
    assert config.dynamic_batching is not None and config.dynamic_batching.preferred_batch_sizes == [4, 8]
    assert config.metadata == {"labels": ["background", "organ"], "owner": "radiology"}

    (tmp_path / NAME / "config.yaml").write_text("runtime: onnxruntime\n")
    config = ModelRepository(tmp_path).config(NAME)
    assert config.runtime == "onnxruntime" and config.artifact == "model.onnx"

    (tmp_path / NAME / "config.yaml").write_text("max_batch_size: -1\n")
    with pytest.raises(InvalidConfig, match=r"config.yaml: field 'max_batch_size'"):
        ModelRepository(tmp_path).config(NAME)


def test_bundle_outside_a_version_folder_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(built["torchscript"], tmp_path / NAME)
    with pytest.raises(InvalidConfig, match=r"move it into a version folder"):
        ModelRepository(tmp_path).config(NAME)


def test_repository_config_needs_no_torch(built: dict[str, Path], tmp_path: Path) -> None:
    place(tmp_path, built["torchscript"])
    code = (
        "import sys; from pathlib import Path; import medserve\n"
        "from medserve.repository.repository import ModelRepository\n"
        f"c = ModelRepository(Path({str(tmp_path)!r})).config({NAME!r})\n"
        "assert c.runtime == 'monai_bundle', c\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------ serving


async def test_registry_serves_the_bundle_like_the_torchscript_model(
    built: dict[str, Path], tmp_path: Path
) -> None:
    bundle = place(tmp_path, built["torchscript"])
    registry = ModelRegistry(ModelRepository(tmp_path), ServingMetrics())
    await registry.load(NAME)
    try:
        model = registry.get(NAME)
        images, masks = synthetic_slices(3, seed=99)
        request = InferenceRequest(
            NAME,
            inputs=[Tensor("image", "FP32", images.shape, images)],
            outputs=[RequestedOutput("pred")],
        )
        response = await model.infer(request)
        (pred,) = response.outputs
        assert pred.name == "pred" and pred.datatype == "FP32" and pred.shape == (3, 1, 64, 64)
        expected = reference(bundle, images)
        np.testing.assert_array_equal(pred.data, expected)
        assert set(np.unique(pred.data)) <= {0.0, 1.0}
        assert (pred.data == masks).mean() > 0.95  # trained briefly on this synthetic task

        metadata = model.metadata(registry.versions(NAME))
        assert metadata.platform == "monai_bundle"
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
            ("image", "FP32", [-1, 1, 64, 64])
        ]
        assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [
            ("pred", "FP32", [-1, 1, 64, 64])
        ]
        params = metadata.parameters
        assert params["runtime"] == "monai_bundle" and params["device"] == "cpu"
        assert params["bundle"]["intended_use"] == "demonstration"
        assert params["bundle"]["format"] == "torchscript"
        assert params["inferer"] == "SimpleInferer"
        assert params["preprocessing"]["applied"] == ["ScaleIntensityRanged(image)", "EnsureTyped(image)"]
        assert [s.split(":")[0] for s in params["preprocessing"]["skipped"]] == [
            "LoadImaged",
            "EnsureChannelFirstd",
        ]
        assert params["postprocessing"]["applied"] == ["Activationsd(pred)", "AsDiscreted(pred)"]
        assert [s.split(":")[0] for s in params["postprocessing"]["skipped"]] == ["Invertd", "SaveImaged"]
        declared = params["network_data_format"]["outputs"]["pred"]
        assert declared["num_channels"] == 2 and declared["channel_def"]["1"] == "organ"
        triton = model.triton_config()
        assert triton["backend"] == "monai_bundle" and triton["max_batch_size"] == 4
    finally:
        await registry.close()


def test_bare_network_without_pre_and_postprocessing(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = place(tmp_path, built["torchscript"])
    (tmp_path / NAME / "config.yaml").write_text(
        "max_batch_size: 2\nruntime_options: {preprocessing: false, postprocessing: false}\n"
    )
    loaded = load(tmp_path)
    assert [(t.name, t.dims) for t in loaded.outputs] == [("pred", [2, 64, 64])]
    images = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    out = loaded.instances[0].run({"image": images}, ["pred"])["pred"]
    network = torch.jit.load(str(bundle / "models" / "model.ts"))
    with torch.inference_mode():
        expected = network(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    described = loaded.instances[0].describe()
    assert described["preprocessing"] == {"applied": [], "skipped": ["preprocessing: turned off"]}


def test_state_dict_bundle_builds_the_network_from_network_def(
    built: dict[str, Path], tmp_path: Path
) -> None:
    bundle = place(tmp_path, built["state_dict"])
    loaded = load(tmp_path)
    instance = loaded.instances[0]
    assert instance.describe()["bundle"]["format"] == "state_dict"
    from monai.networks.nets import UNet

    network = UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="batch")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    images, _ = synthetic_slices(2, seed=3)
    with torch.inference_mode():
        x = torch.clamp((torch.from_numpy(images) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)
        expected = torch.softmax(network(x), 1).argmax(1, keepdim=True).float().numpy()
    np.testing.assert_array_equal(instance.run({"image": images}, ["pred"])["pred"], expected)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def test_sliding_window_patch_bundle_and_skipped_transforms(tmp_path: Path) -> None:
    """A 3D patch bundle: variable spatial dims, per-sample NormalizeIntensity, unsafe items skipped."""
    bundle = tmp_path / "patch3d" / "1"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    torch.jit.script(network).save(str(bundle / "models" / "model.ts"))
    patch = {"type": "image", "spatial_shape": [16, 16, 16], "dtype": "float32", "is_patch_data": True}
    _write_json(
        bundle / "configs" / "metadata.json",
        {
            "version": "0.0.1",
            "network_data_format": {
                "inputs": {"image": {**patch, "num_channels": 1}},
                "outputs": {"pred": {**patch, "num_channels": 2}},
            },
        },
    )
    _write_json(
        bundle / "configs" / "inference.json",
        {
            "image_key": "image",
            "roi": [16, 16, 16],
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0]},
                    {"_target_": "NormalizeIntensityd", "keys": "@image_key"},
                    {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": "$0.0 + 1"},
                    {"_target_": "ScaleIntensityRanged", "keys": "label", "a_min": 0, "a_max": 1},
                ],
            },
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 2},
            "postprocessing": [
                {"_target_": "Activationsd", "keys": ["pred"], "sigmoid": [True]},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
            ],
        },
    )
    loaded = load(tmp_path, "patch3d")
    assert [(t.name, t.dims) for t in loaded.inputs] == [("image", [1, -1, -1, -1])]
    assert [(t.name, t.dims) for t in loaded.outputs] == [("pred", [2, -1, -1, -1])]
    instance = loaded.instances[0]
    described = instance.describe()
    assert described["inferer"] == "SlidingWindowInferer"
    assert described["preprocessing"]["applied"] == ["NormalizeIntensityd(image)"]
    skipped = described["preprocessing"]["skipped"]
    assert skipped[0].startswith("Spacingd: not in the supported subset")
    assert skipped[1] == "ScaleIntensityd: uses a Python expression"
    assert skipped[2].startswith("ScaleIntensityRanged: keys ['label']")
    assert described["postprocessing"]["applied"] == ["Activationsd(pred)", "AsDiscreted(pred)"]

    rng = np.random.default_rng(1)
    first = rng.normal(100.0, 20.0, (1, 1, 20, 24, 18)).astype(np.float32)
    second = rng.normal(-5.0, 2.0, (1, 1, 20, 24, 18)).astype(np.float32)
    both = instance.run({"image": np.concatenate([first, second])}, ["pred"])["pred"]
    assert both.shape == (2, 2, 20, 24, 18)
    # NormalizeIntensity is per sample: batching does not change either result
    np.testing.assert_array_equal(both[:1], instance.run({"image": first}, ["pred"])["pred"])
    np.testing.assert_array_equal(both[1:], instance.run({"image": second}, ["pred"])["pred"])
    x = torch.from_numpy(first)
    x = (x - x.mean()) / x.std(unbiased=False)
    from monai.inferers import SlidingWindowInferer

    with torch.inference_mode():
        logits = SlidingWindowInferer([16, 16, 16], sw_batch_size=2)(x, network)
        expected = (torch.sigmoid(logits) >= 0.5).float().numpy()
    assert (both[:1] == expected).mean() > 0.999


# ------------------------------------------------------------------ bad bundles


async def _load_error(repo: Path, name: str = NAME) -> str:
    registry = ModelRegistry(ModelRepository(repo), ServingMetrics())
    try:
        with pytest.raises(MedserveError) as failure:
            await registry.load(name)
    finally:
        await registry.close()
    return str(failure.value)


async def test_missing_metadata_names_the_file(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = place(tmp_path, built["torchscript"])
    (bundle / "configs" / "metadata.json").unlink()
    message = await _load_error(tmp_path)
    assert f"{bundle}/configs/metadata.json: missing" in message, message


async def test_missing_model_file_names_the_file(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = place(tmp_path, built["torchscript"])
    (bundle / "models" / "model.ts").unlink()
    message = await _load_error(tmp_path)
    assert f"{bundle}/models/model.ts does not exist" in message, message


@pytest.mark.parametrize("file", ["metadata.json", "inference.json"])
async def test_malformed_json_names_the_file(built: dict[str, Path], tmp_path: Path, file: str) -> None:
    bundle = place(tmp_path, built["torchscript"])
    (bundle / "configs" / file).write_text('{"version": "0.1.0",', encoding="utf-8")
    message = await _load_error(tmp_path)
    assert f"{bundle}/configs/{file}: not valid JSON" in message, message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda md: md.pop("network_data_format"), "field 'network_data_format' is missing"),
        (
            lambda md: md["network_data_format"].pop("outputs"),
            "field 'network_data_format.outputs' is missing or empty",
        ),
        (
            lambda md: md["network_data_format"]["inputs"]["image"].update(dtype="complex64"),
            "field 'network_data_format.inputs.image.dtype' is 'complex64'",
        ),
    ],
)
def test_bad_network_data_format_names_the_field(
    built: dict[str, Path], tmp_path: Path, change: Any, expected: str
) -> None:
    bundle = place(tmp_path, built["torchscript"])
    path = bundle / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    change(metadata)
    _write_json(path, metadata)
    with pytest.raises(ModelLoadError) as failure:
        load(tmp_path)
    assert str(failure.value).startswith(f"{path}: {expected}"), failure.value


def test_state_dict_network_def_problems(built: dict[str, Path], tmp_path: Path) -> None:
    bundle = place(tmp_path, built["state_dict"])
    path = bundle / "configs" / "inference.json"
    inference = json.loads(path.read_text())

    _write_json(path, {k: v for k, v in inference.items() if k != "network_def"})
    with pytest.raises(ModelLoadError, match=r"inference.json: field 'network_def' is missing"):
        load(tmp_path)

    risky = {**inference, "network_def": {**inference["network_def"], "out_channels": "$1 + 1"}}
    _write_json(path, risky)
    with pytest.raises(
        ModelLoadError, match=r"'network_def' uses a Python expression; set .*trust_bundle_code"
    ):
        load(tmp_path)
    (tmp_path / NAME / "config.yaml").write_text("runtime_options: {trust_bundle_code: true}\n")
    assert load(tmp_path).outputs[0].dims == [1, 64, 64]

    other = {**inference, "network_def": {**inference["network_def"], "out_channels": 3}}
    _write_json(path, other)
    with pytest.raises(ModelLoadError, match=r"model.pt: does not fit the network_def"):
        load(tmp_path)


def test_unknown_runtime_option_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    place(tmp_path, built["torchscript"])
    (tmp_path / NAME / "config.yaml").write_text("runtime_options: {threads: 2}\n")
    with pytest.raises(ModelLoadError, match=r"unknown monai_bundle option\(s\) \['threads'\]"):
        load(tmp_path)
