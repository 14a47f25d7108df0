"""config.yaml parsing and the version policy: errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from medserve.repository.config import VersionPolicy, load_model_config, parse_model_config
from medserve.values.errors import InvalidConfig


def parse(text: str) -> object:
    return parse_model_config(text, "repo/m/config.yaml", "m")


def test_full_config() -> None:
    config = parse_model_config(
        """
runtime: onnxruntime
max_batch_size: 8
inputs: [{name: x, datatype: FP32, dims: [3, -1]}]
outputs: [{name: y, datatype: BYTES, dims: [1]}]
dynamic_batching: {max_queue_delay_us: 100, preferred_batch_sizes: [8, 4, 4]}
instance_count: 2
version_policy: {specific: {versions: [1, 3]}}
runtime_options: {intra_op_threads: 1}
metadata: {task: classification, labels: [a, b]}
""",
        "c.yaml",
        "m",
    )
    assert config.name == "m" and config.instance_count == 2
    assert config.dynamic_batching is not None and config.dynamic_batching.preferred_batch_sizes == [4, 8]
    assert config.inputs is not None and config.inputs[0].dims == [3, -1]
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]


def test_defaults() -> None:
    config = parse_model_config("", "c.yaml", "m")
    assert config.runtime == "onnxruntime" and config.max_batch_size == 0 and config.inputs is None
    assert config.version_policy.select([3, 1, 2]) == [3]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("max_batch_size: -1", "max_batch_size"),
        ("instance_count: zero", "instance_count"),
        ("inputs: [{name: x, datatype: FP128, dims: [1]}]", "inputs[0].datatype"),
        ("inputs: [{name: x, datatype: FP32, dims: [0]}]", "inputs[0].dims"),
        ("outputs: [{name: y, datatype: FP32}]", "outputs[0].dims"),
        ("max_batch_size: 0\ndynamic_batching: {}", "dynamic_batching needs max_batch_size"),
        ("max_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [8]}", "exceed max_batch_size"),
        ("version_policy: {latest: {num_versions: 1}, all: {}}", "version_policy"),
        ("colour: blue", "colour"),
        ("name: other", "'name'"),
        ("- a list", "mapping"),
        ("inputs: [", "not valid YAML"),
    ],
)
def test_errors_name_file_and_field(text: str, field: str) -> None:
    with pytest.raises(InvalidConfig) as failure:
        parse(text)
    message = str(failure.value)
    assert message.startswith("repo/m/config.yaml:"), message
    assert field in message, message


def test_missing_config_file(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(InvalidConfig, match="config.yaml: missing"):
        load_model_config(tmp_path / "m")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, [4]),
        ({"latest": {"num_versions": 2}}, [3, 4]),
        ({"all": {}}, [1, 3, 4]),
        ({"specific": {"versions": [1, 2]}}, [1]),
    ],
)
def test_version_policy(policy: dict[str, object], expected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([4, 1, 3]) == expected
