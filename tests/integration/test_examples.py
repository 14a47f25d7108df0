"""The example model repository: every model builds, passes onnx.checker and computes the right values
in onnxruntime; configs follow the repository schema; builds are cached and never left half-done."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from medserve.demo.models import repository
from medserve.demo.models.repository import EXAMPLE_MODELS, build_example_repository
from medserve.demo.models.test_models import IDENTITY_DATATYPES, ONNX_ELEMENT_TYPES
from medserve.values.datatypes import numpy_dtype

TORCH_MODELS = (
    "chest_xray_classifier",
    "ct_lesion_segmentation",
    "ecg_rhythm_classifier",
    "variant_scorer",
    "solubility_predictor",
    "occupancy_forecaster",
)
SMALL_MODELS = [name for name in EXAMPLE_MODELS if name not in TORCH_MODELS]
CONFIG_KEYS = {
    "runtime",
    "max_batch_size",
    "inputs",
    "outputs",
    "dynamic_batching",
    "instance_count",
    "version_policy",
    "runtime_options",
    "metadata",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    written = build_example_repository(root, models=SMALL_MODELS)
    assert written == SMALL_MODELS
    return root


def _session(repo: Path, name: str, version: int = 1) -> ort.InferenceSession:
    path = repo / name / str(version) / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _config(repo: Path, name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((repo / name / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_catalogue_names() -> None:
    expected_identities = {f"identity_{dt.lower()}" for dt in IDENTITY_DATATYPES}
    assert "identity_bytes" in expected_identities and len(expected_identities) == 14
    assert set(EXAMPLE_MODELS) == {
        *TORCH_MODELS,
        "simple",
        "simple_nobatch",
        "fp16_scale",
        "variable_sum",
        "reshape_fail",
        *expected_identities,
    }


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_model_checks_and_matches_config(repo: Path, name: str) -> None:
    config = _config(repo, name)
    assert set(config) <= CONFIG_KEYS
    assert config["runtime"] == "onnxruntime"
    assert config["metadata"]["research_use_only"] is True
    batched = config["max_batch_size"] > 0
    assert ("dynamic_batching" in config) == (name not in ("simple_nobatch", "reshape_fail"))
    versions = sorted(int(p.name) for p in (repo / name).iterdir() if p.is_dir())
    assert versions == ([1, 2] if name == "simple_nobatch" else [1])
    for version in versions:
        model = onnx.load(str(repo / name / str(version) / "model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        graph_tensors = {v.name: v for v in (*model.graph.input, *model.graph.output)}
        for tensor in (*config.get("inputs", []), *config.get("outputs", [])):
            assert set(tensor) == {"name", "datatype", "dims"}
            value = graph_tensors[tensor["name"]].type.tensor_type
            assert value.elem_type == ONNX_ELEMENT_TYPES[tensor["datatype"]]
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.shape.dim]
            if batched:
                assert value.shape.dim[0].dim_param == "batch"
                dims = dims[1:]
            assert dims == tensor["dims"]


def test_configs_validate_with_the_repository_schema(repo: Path) -> None:
    config_module = pytest.importorskip("medserve.repository.config")
    for name in SMALL_MODELS:
        config_module.load_model_config(repo / name)


def test_simple(repo: Path) -> None:
    a = np.arange(48, dtype=np.float32).reshape(3, 16)
    b = np.full((3, 16), 0.5, dtype=np.float32)
    out0, out1 = _session(repo, "simple").run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def test_simple_nobatch_versions_differ(repo: Path) -> None:
    config = _config(repo, "simple_nobatch")
    assert "inputs" not in config and "outputs" not in config
    assert config["max_batch_size"] == 0 and config["version_policy"] == {"all": {}}
    a = np.arange(16, dtype=np.float32)
    b = np.ones(16, dtype=np.float32)
    for version, offset in ((1, 0.0), (2, 1.0)):
        session = _session(repo, "simple_nobatch", version)
        assert [i.shape for i in session.get_inputs()] == [[16], [16]]
        out0, out1 = session.run(None, {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(out0, a + b + offset)
        np.testing.assert_array_equal(out1, a - b)


@pytest.mark.parametrize("datatype", [dt for dt in IDENTITY_DATATYPES if dt not in ("BF16", "BYTES")])
def test_identity_numeric(repo: Path, datatype: str) -> None:
    data = (np.arange(10) % 7).reshape(2, 5).astype(numpy_dtype(datatype))
    (out,) = _session(repo, f"identity_{datatype.lower()}").run(None, {"INPUT0": data})
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)


def test_identity_bf16_runs_through_ort_values(repo: Path) -> None:
    # ORT's Python API has no NumPy bfloat16: feed the raw bits as an OrtValue typed BFLOAT16 and
    # bind a uint16 buffer as the output. (session.run() cannot return a bf16 output as NumPy.)
    bits = np.array([[0x3F80, 0x4000, 0xC040]], dtype=np.uint16)  # 1.0, 2.0, -3.0
    session = _session(repo, "identity_bf16")
    binding = session.io_binding()
    binding.bind_ortvalue_input(
        "INPUT0", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx.TensorProto.BFLOAT16)
    )
    result = np.zeros_like(bits)
    binding.bind_ortvalue_output(
        "OUTPUT0",
        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(result, onnx.TensorProto.BFLOAT16),
    )
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(result, bits)


def test_identity_bytes(repo: Path) -> None:
    # ONNX string tensors are UTF-8 text: ORT's Python API takes str elements (it would str() a
    # bytes object into "b'...'"), so BYTES must be decoded before and encoded after.
    data = np.array([["a", "bc\x00d"], ["", "é"]], dtype=object)
    (out,) = _session(repo, "identity_bytes").run(None, {"INPUT0": data})
    assert out.tolist() == data.tolist()


def test_fp16_scale(repo: Path) -> None:
    data = np.array([[1.0, -2.5, 0.125, 1000.0], [0, 1, 2, 3]], dtype=np.float16)
    (out,) = _session(repo, "fp16_scale").run(None, {"INPUT0": data})
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, data * np.float16(2))


@pytest.mark.parametrize("length", [1, 3, 7])
def test_variable_sum(repo: Path, length: int) -> None:
    data = np.arange(2 * length, dtype=np.float32).reshape(2, length)
    out0, out1 = _session(repo, "variable_sum").run(["OUTPUT0", "OUTPUT1"], {"INPUT0": data})
    np.testing.assert_allclose(out0, data.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(out1, data * 2)


def test_reshape_fail(repo: Path) -> None:
    session = _session(repo, "reshape_fail")
    data = np.arange(6, dtype=np.float32)
    (ok,) = session.run(None, {"DATA": data, "SHAPE": np.array([-1], dtype=np.int64)})
    np.testing.assert_array_equal(ok, data)
    with pytest.raises(Exception, match="(?i)reshape|shape"):
        session.run(None, {"DATA": data, "SHAPE": np.array([4], dtype=np.int64)})


def test_cached_models_are_kept_unless_forced(tmp_path: Path) -> None:
    assert build_example_repository(tmp_path, models=["simple", "fp16_scale"]) == [
        "simple",
        "fp16_scale",
    ]
    model_file = tmp_path / "simple" / "1" / "model.onnx"
    stamp = model_file.stat().st_mtime_ns
    assert build_example_repository(tmp_path, models=["simple", "fp16_scale"]) == []
    assert model_file.stat().st_mtime_ns == stamp
    assert build_example_repository(tmp_path, models=["simple"], force=True) == ["simple"]
    assert model_file.is_file()
    # A model that lost a version file is incomplete, so it is rebuilt without force.
    model_file.unlink()
    assert build_example_repository(tmp_path, models=["simple"]) == ["simple"]
    assert model_file.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "fp16_scale",
        "simple",
    ]


def test_failed_build_leaves_no_half_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = repository._CATALOGUE["simple_nobatch"]

    def fail_on_version_2(version: int, path: Path) -> None:
        if version == 2:
            raise RuntimeError("interrupted")
        example.write(version, path)

    broken = type(example)(example.name, example.config, fail_on_version_2, example.versions)
    monkeypatch.setitem(repository._CATALOGUE, example.name, broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_example_repository(tmp_path, models=["simple_nobatch"])
    assert [p.name for p in tmp_path.iterdir()] == [repository.LOCK_FILE]

    monkeypatch.setitem(repository._CATALOGUE, example.name, example)
    (tmp_path / ".staging-simple_nobatch-leftover").mkdir()  # as a killed process would leave
    assert build_example_repository(tmp_path, models=["simple_nobatch"]) == ["simple_nobatch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [repository.LOCK_FILE, "simple_nobatch"]


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such_model"):
        build_example_repository(tmp_path, models=["simple", "no_such_model"])


def test_small_models_build_without_torch(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from pathlib import Path\n"
        "from medserve.demo.models.repository import build_example_repository\n"
        f"print(len(build_example_repository(Path({str(tmp_path)!r}), models={SMALL_MODELS!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(SMALL_MODELS))


def _tiny_chest_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three steps of the chest X-ray DenseNet, no floors: the build path, not the accuracy (the
    session's example repository builds the test profile, with its floors)."""
    from medserve.demo.models import chest_xray

    monkeypatch.setitem(chest_xray.STEPS, "test", chest_xray.Steps(2, 1))
    monkeypatch.setitem(chest_xray.FLOORS, "test", ())
    monkeypatch.setattr(chest_xray, "HELD_OUT_IMAGES", 40)


@pytest.mark.slow
def test_chest_xray_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    _tiny_chest_training(monkeypatch)
    # The build itself checks onnxruntime against torch (atol 1e-4) on a batch of 3.
    assert build_example_repository(tmp_path, models=["chest_xray_classifier"], profile="test") == [
        "chest_xray_classifier"
    ]
    config = _config(tmp_path, "chest_xray_classifier")
    assert set(config) <= CONFIG_KEYS
    assert config["max_batch_size"] == 8
    assert config["inputs"] == [{"name": "image", "datatype": "FP32", "dims": [1, 224, 224]}]
    assert config["outputs"] == [{"name": "probabilities", "datatype": "FP32", "dims": [14]}]
    metadata = config["metadata"]
    assert len(metadata["labels"]) == 14 and metadata["labels"][-1] == "Hernia"
    assert metadata["research_use_only"] is True and metadata["research_use"] is True
    assert set(metadata["trained_labels"]) <= set(metadata["labels"]) and metadata["trained_labels"]
    assert set(metadata["held_out_auc"]) == set(metadata["trained_labels"])
    assert "synthetic" in metadata["description"].lower()
    build = metadata["build"]
    assert build["profile"] == "test" and build["steps"] == 3 and build["threads"] == 1
    assert metadata["training"] == {"steps_112px": 2, "steps_224px": 1, "seed": build["seed"]}
    assert set(build["held_out"]) == {f"{label} AUC" for label in metadata["trained_labels"]} | {"mean AUC"}
    session = _session(tmp_path, "chest_xray_classifier")
    images = np.random.default_rng(0).random((5, 1, 224, 224), dtype=np.float32)
    (probabilities,) = session.run(None, {"image": images})
    assert probabilities.shape == (5, 14)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.slow
def test_same_seed_and_steps_train_the_same_model() -> None:
    torch = pytest.importorskip("torch")
    from medserve.demo.models import chest_xray

    threads = torch.get_num_threads()
    first, _ = chest_xray.train(steps=chest_xray.Steps(2, 1))
    assert torch.get_num_threads() == threads  # the training's own thread count is undone
    second, _ = chest_xray.train(steps=chest_xray.Steps(2, 1))
    other_seed, _ = chest_xray.train(seed=1, steps=chest_xray.Steps(2, 1))
    a, b, c = first.state_dict(), second.state_dict(), other_seed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


@pytest.mark.slow
def test_cli_build_reports_progress_and_fails_below_a_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from medserve.cli.main import main
    from medserve.demo.models import chest_xray
    from medserve.demo.models._quality import Floor

    _tiny_chest_training(monkeypatch)
    monkeypatch.setitem(chest_xray.FLOORS, "test", (Floor("mean AUC", 1.01),))  # no model reaches it
    code = main(
        ["examples", "build", str(tmp_path), "--profile", "test", "--models", "chest_xray_classifier"]
    )
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.splitlines()
    assert lines[0] == f"examples: training 1 model(s) with the test profile in {tmp_path} (1 at a time)"
    assert lines[1] == "chest_xray_classifier: building"
    assert "chest_xray_classifier: training 2 steps at 112 px, then 1 at 224 px" in lines
    assert re.fullmatch(
        r"medserve examples build: example model chest_xray_classifier \(profile test\) missed its quality "
        r"floor: held-out mean AUC [01]\.\d{4} is not >= 1\.01; the model was not written",
        lines[-1],
    ), lines[-1]
    assert [p.name for p in tmp_path.iterdir()] == [repository.LOCK_FILE]  # nothing half-written

    code = main(["examples", "build", str(tmp_path), "--models", "simple", "no_such_model"])
    assert code == 2 and "unknown example model(s) no_such_model" in capsys.readouterr().err
