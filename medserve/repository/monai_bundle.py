"""Reading a MONAI bundle folder: its metadata, declared tensors, inference config and model defaults.

Plain file reading (JSON and YAML, no torch, no monai): the repository derives a model's configuration
from it, and the ``monai_bundle`` runtime (``medserve.runtimes.monai_bundle``) reads what it serves.

Layout in the repository
------------------------
Each *version folder* of a model is one MONAI bundle; the model folder needs no ``config.yaml``::

    <repo>/<model>/
        config.yaml                 optional: overrides, see below
        1/                          a version folder = a MONAI bundle folder
            configs/metadata.json   required: network_data_format gives the tensors
            configs/inference.json  pre/post-processing, inferer, network_def
                                    (configs/inference.yaml is read when there is no .json)
            models/model.ts         TorchScript (torch.jit.load), or
            models/model.pt         a state dict for the network built from inference.json's network_def
        2/ ...

A version folder holding any of ``configs/metadata.json``, ``configs/inference.json``,
``models/model.ts`` or ``models/model.pt`` is a bundle. When the model folder has bundle
versions, its configuration is *derived* (``bundle_model_defaults``): ``runtime: monai_bundle``,
``artifact: models/model.ts`` (or ``models/model.pt`` when the newest bundle has only that),
``max_batch_size: 4`` and ``metadata.labels`` from the first output's ``channel_def``. An optional
``config.yaml`` beside the versions overrides any of these (``max_batch_size``, ``dynamic_batching``,
``instance_count``, ``version_policy``, ``runtime_options``, ``inputs``/``outputs``...) as long as it
does not name another runtime. A bundle put directly in the model folder (``<model>/configs/...``) is
refused with a hint to move it into ``<model>/1/``. The artifact digest (lineage, ``sha256``) covers the
weights file only, not the bundle's configs.

Tensors
-------
Inputs and outputs come from ``metadata.json``'s ``network_data_format``: the tensor name is the key
(``image``, ``pred``), ``dtype`` maps to the datatype (``float32`` -> ``FP32``...), and an ``image``
tensor's dims are ``[num_channels, *spatial_shape]`` (channel first); other types (``probabilities``...)
are ``[num_channels]``. A non-integer spatial size (``"16*n"``, ``"*"``) is variable (-1). What the
runtime makes of them (patches, post-processing) is described in ``medserve.runtimes.monai_bundle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medserve.values.errors import InvalidConfig, ModelLoadError

#: the runtime a model folder of bundles is derived to use (``medserve.runtimes.monai_bundle``)
RUNTIME_NAME = "monai_bundle"
METADATA_FILE = "configs/metadata.json"
INFERENCE_FILES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
TORCHSCRIPT_FILE = "models/model.ts"
STATE_DICT_FILE = "models/model.pt"
DEFAULT_MAX_BATCH_SIZE = 4

_DTYPES = {
    "float32": "FP32",
    "float": "FP32",
    "float16": "FP16",
    "half": "FP16",
    "float64": "FP64",
    "double": "FP64",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
}


_MARKERS = (METADATA_FILE, INFERENCE_FILES[0], TORCHSCRIPT_FILE, STATE_DICT_FILE)


def is_bundle_folder(path: Path) -> bool:
    """Whether a version folder holds a MONAI bundle: any of ``_MARKERS`` is there."""
    return any((path / marker).is_file() for marker in _MARKERS)


def bundle_model_defaults(model_dir: Path) -> dict[str, Any] | None:
    """The derived configuration of a model folder whose versions are bundles; None if it has none.

    Only the newest bundle is read (for the artifact name and the labels); a broken bundle still
    yields defaults, and loading it then reports what is wrong.
    """
    bundles = sorted(
        (int(p.name), p)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and is_bundle_folder(p)
    )
    if not bundles:
        if (model_dir / METADATA_FILE).is_file() and not (model_dir / "config.yaml").is_file():
            raise InvalidConfig(
                f"{model_dir}: holds a MONAI bundle directly; move it into a version folder "
                f"({model_dir / '1'}/configs/metadata.json ...)"
            )
        return None
    newest = bundles[-1][1]
    artifact = TORCHSCRIPT_FILE
    if not (newest / TORCHSCRIPT_FILE).is_file() and (newest / STATE_DICT_FILE).is_file():
        artifact = STATE_DICT_FILE
    defaults: dict[str, Any] = {
        "runtime": RUNTIME_NAME,
        "artifact": artifact,
        "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
        "metadata": {},
    }
    try:
        outputs = read_json(newest / METADATA_FILE).get("network_data_format", {}).get("outputs", {})
        first: Any = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
        labels = _channel_labels(first.get("channel_def")) if isinstance(first, dict) else []
    except (ModelLoadError, AttributeError):
        labels = []
    if labels:
        defaults["metadata"]["labels"] = labels
    return defaults


def _channel_labels(channel_def: Any) -> list[str]:
    if not isinstance(channel_def, dict):
        return []
    try:
        ordered = sorted((int(k), str(v)) for k, v in channel_def.items())
    except (TypeError, ValueError):
        return []
    if [k for k, _ in ordered] != list(range(len(ordered))):
        return []
    return [v for _, v in ordered]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a bundle file; errors name the file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (a MONAI bundle needs it)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object at the top level, got {type(value).__name__}")
    return value


def read_inference_config(root: Path) -> tuple[Path | None, dict[str, Any]]:
    """The bundle's inference config (network_def, pre/post-processing, inferer) and its file:
    ``configs/inference.json``, else ``.yaml``/``.yml``; ``(None, {})`` when there is none."""
    for name in INFERENCE_FILES:
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".json":
            return path, read_json(path)
        try:
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(value, dict):
            raise ModelLoadError(f"{path}: expected a mapping at the top level, got {type(value).__name__}")
        return path, value
    return None, {}


@dataclass(slots=True)
class BundleTensor:
    """A tensor of ``network_data_format``: dims exclude the batch dimension."""

    name: str
    datatype: str
    dims: list[int]
    kind: str
    patch: bool
    spec: dict[str, Any] = field(default_factory=dict)


def _tensor(kind: str, name: str, raw: Any, source: Path) -> BundleTensor:
    where = f"{source}: field 'network_data_format.{kind}.{name}"
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where}' must be an object")
    dtype = str(raw.get("dtype", "float32")).removeprefix("torch.").removeprefix("np.")
    if dtype not in _DTYPES:
        raise ModelLoadError(f"{where}.dtype' is '{dtype}'; supported: {', '.join(sorted(_DTYPES))}")
    channels = raw.get("num_channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise ModelLoadError(f"{where}.num_channels' must be a positive integer, got {channels!r}")
    tensor_type = str(raw.get("type", "image"))
    dims = [channels] if channels else []
    if tensor_type == "image":
        spatial = raw.get("spatial_shape", [])
        if not isinstance(spatial, list):
            raise ModelLoadError(f"{where}.spatial_shape' must be a list, got {spatial!r}")
        dims += [s if isinstance(s, int) and not isinstance(s, bool) and s > 0 else -1 for s in spatial]
    if not dims:
        raise ModelLoadError(f"{where}' gives neither num_channels nor spatial_shape")
    return BundleTensor(name, _DTYPES[dtype], dims, tensor_type, bool(raw.get("is_patch_data", False)), raw)


def network_data_format(
    metadata: dict[str, Any], source: Path
) -> tuple[list[BundleTensor], list[BundleTensor]]:
    """The inputs and outputs ``metadata.json`` declares."""
    fmt = metadata.get("network_data_format")
    if not isinstance(fmt, dict):
        raise ModelLoadError(f"{source}: field 'network_data_format' is missing or not an object")
    result: list[list[BundleTensor]] = []
    for kind in ("inputs", "outputs"):
        tensors = fmt.get(kind)
        if not isinstance(tensors, dict) or not tensors:
            raise ModelLoadError(f"{source}: field 'network_data_format.{kind}' is missing or empty")
        result.append([_tensor(kind, name, raw, source) for name, raw in tensors.items()])
    return result[0], result[1]


def bundle_root(artifact: Path) -> Path:
    """The bundle folder of a weights file: the nearest ancestor with ``configs/``."""
    for parent in list(artifact.parents)[:3]:
        if (parent / "configs").is_dir():
            return parent
    return artifact.parent.parent if artifact.parent.name == "models" else artifact.parent
