"""MONAI bundle engine: serve a MONAI bundle folder (TorchScript or state dict) as a model.

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
are ``[num_channels]``. A non-integer spatial size (``"16*n"``, ``"*"``) is variable (-1), and so is
every spatial size of ``is_patch_data`` tensors when the inferer is a ``SlidingWindowInferer``. The
engine declares a variable leading batch dimension; with ``max_batch_size: 0`` clients send it
themselves. Output dims and datatype are those *after* the applied post-processing (``AsDiscrete``
argmax gives one channel).

Pre- and post-processing (a safe subset of ``inference.json``)
-------------------------------------------------------------
The ``preprocessing`` and ``postprocessing`` sections (a ``Compose`` or a list) are read with
``monai.bundle.ConfigParser``; only the transforms listed in ``PREPROCESSING``/``POSTPROCESSING`` are
built (dictionary versions are applied to the tensor their ``keys`` name), each one sample (channel
first) at a time. Supported: ``ScaleIntensityRange``, ``ScaleIntensityRangePercentiles``,
``ScaleIntensity``, ``NormalizeIntensity``, ``ThresholdIntensity``, ``ShiftIntensity``,
``EnsureType``, ``ToTensor`` before the network; ``Activations`` (softmax/sigmoid) and ``AsDiscrete``
(argmax, to_onehot, threshold, rounding) after it. Everything else is skipped: loaders and writers
(``LoadImage``, ``SaveImage``), ``EnsureChannelFirst`` (send channel-first arrays), spatial and random
transforms (``Spacing``, ``Orientation``, ``Resize``, crops: send data already in that form), ``Invertd``
and anything with a Python expression (``$...``), a macro (``%...``) or a nested component in its
arguments. A transform that changes the sample shape before the network, or the rank after it, is
skipped as well. What was applied and skipped is reported in the model metadata parameters
(``preprocessing``/``postprocessing``: ``{"applied": [...], "skipped": ["Name: reason", ...]}``).
The ``inferer`` section is used when it is a ``SimpleInferer`` or ``SlidingWindowInferer`` with
literal arguments; otherwise the network is called directly.

Networks from a state dict are built from ``network_def`` only when every component in it is a
``monai.networks`` or ``torch.nn`` class and it has no Python expressions, unless
``runtime_options.trust_bundle_code`` is true (then MONAI evaluates ``network_def`` as written: only
for bundles you trust like code).

Runtime options: ``device`` (default ``cpu``; e.g. ``cuda:0``), ``preprocessing`` / ``postprocessing``
/ ``inferer`` (default true: set false to serve the bare network), ``trust_bundle_code`` (default
false). torch and monai are imported only when a bundle is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medserve.runtimes.base import EngineTensor, Runtime
from medserve.values.datatypes import numpy_dtype
from medserve.values.errors import InferenceFailed, InvalidConfig, ModelLoadError

log = logging.getLogger(__name__)

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

#: preprocessing transforms applied (array name -> its dictionary version's name)
PREPROCESSING: tuple[str, ...] = (
    "ScaleIntensityRange",
    "ScaleIntensityRangePercentiles",
    "ScaleIntensity",
    "NormalizeIntensity",
    "ThresholdIntensity",
    "ShiftIntensity",
    "EnsureType",
    "ToTensor",
)
#: postprocessing transforms applied
POSTPROCESSING: tuple[str, ...] = ("Activations", "AsDiscrete")
#: inferers used
INFERERS: tuple[str, ...] = ("SimpleInferer", "SlidingWindowInferer")

#: dictionary-transform arguments that may hold one value per key
_PER_KEY_ARGS = {
    "Activations": ("sigmoid", "softmax", "other"),
    "AsDiscrete": ("argmax", "to_onehot", "threshold", "rounding"),
}

_SKIP_REASONS = {
    "LoadImage": "reads files; send the decoded image array",
    "SaveImage": "writes files; the prediction is returned instead",
    "EnsureChannelFirst": "send the image channel first",
    "AddChannel": "send the image channel first",
    "Invert": "inverts spatial preprocessing that is not applied",
    "CopyItems": "key-based bookkeeping",
}

_OPTIONS = {"device", "preprocessing", "postprocessing", "inferer", "trust_bundle_code"}


# ------------------------------------------------------------------ reading a bundle (no torch)


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


def _read_inference_config(root: Path) -> tuple[Path | None, dict[str, Any]]:
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


# ------------------------------------------------------------------ the safe subset of the configs


class _Refused(Exception):
    """A config value outside the subset evaluated without ``trust_bundle_code``."""


def _literal(parser: Any, value: Any, components: Callable[[str], bool] | None = None, depth: int = 0) -> Any:
    """``value`` with ``@`` references followed; refuses expressions, macros and unlisted components."""
    if depth > 16:
        raise _Refused("references nest too deeply")
    if isinstance(value, str):
        if value.startswith("$"):
            raise _Refused("uses a Python expression")
        if value.startswith("%"):
            raise _Refused("uses a macro")
        if value.startswith("@"):
            missing = object()
            target = parser.get(value[1:], missing)
            if target is missing:
                raise _Refused(f"refers to '{value[1:]}', which is not in the config")
            return _literal(parser, target, components, depth + 1)
        return value
    if isinstance(value, list):
        return [_literal(parser, v, components, depth + 1) for v in value]
    if isinstance(value, dict):
        target = value.get("_target_")
        if target is not None and (components is None or not components(str(target))):
            raise _Refused(f"has a nested component ({target})")
        return {k: _literal(parser, v, components, depth + 1) for k, v in value.items()}
    return value


def _short_name(target: str) -> str:
    for prefix in ("monai.transforms.", "monai.inferers."):
        if target.startswith(prefix):
            return target.rsplit(".", 1)[-1]
    return target


@dataclass(slots=True)
class _Plan:
    """Transforms per tensor name, and the record shown in model metadata."""

    steps: dict[str, list[tuple[str, Callable[[Any], Any]]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def record(self) -> dict[str, list[str]]:
        applied = [f"{label}({name})" for name, steps in self.steps.items() for label, _ in steps]
        return {"applied": applied, "skipped": list(self.skipped)}


def _follow(parser: Any, value: Any) -> Any:
    """Follow ``@`` references at the top of ``value`` (not inside it); refuse expressions and macros."""
    for _ in range(16):
        if not isinstance(value, str) or not value.startswith(("@", "$", "%")):
            return value
        if not value.startswith("@"):
            raise _Refused("uses a Python expression" if value.startswith("$") else "uses a macro")
        missing = object()
        target = parser.get(value[1:], missing)
        if target is missing:
            raise _Refused(f"refers to '{value[1:]}', which is not in the config")
        value = target
    raise _Refused("references nest too deeply")


_NOT_SUPPORTED = "not in the supported subset (send data already in the form it produces)"


def _section_items(parser: Any, section: str, plan: _Plan) -> list[tuple[str, Any]]:
    """The raw items of a ``Compose`` (or list) section, references at their top followed."""
    try:
        raw = _follow(parser, parser.get(section, None))
        if raw is None:
            return []
        if isinstance(raw, dict):
            if _short_name(str(raw.get("_target_", ""))) != "Compose":
                plan.skipped.append(f"{section}: {raw.get('_target_')} is not a Compose")
                return []
            transforms = _follow(parser, raw.get("transforms", []))
        else:
            transforms = raw
    except _Refused as exc:
        plan.skipped.append(f"{section}: the transform list {exc}")
        return []
    if not isinstance(transforms, list):
        plan.skipped.append(f"{section}: 'transforms' is not a list")
        return []
    items: list[tuple[str, Any]] = []
    for i, item in enumerate(transforms):
        where = f"{section}#transforms#{i}"
        try:
            items.append((where, _follow(parser, item)))
        except _Refused as exc:
            plan.skipped.append(f"{where}: {exc}")
    return items


def _build_plan(parser: Any, section: str, allowed: tuple[str, ...], names: list[str], source: Path) -> _Plan:
    import monai.transforms

    plan = _Plan(steps={name: [] for name in names})
    for where, item in _section_items(parser, section, plan):
        if not isinstance(item, dict) or "_target_" not in item:
            plan.skipped.append(f"{where}: not a transform component")
            continue
        label = _short_name(str(item["_target_"]))
        dictionary = label.endswith("d") and label[:-1] in allowed
        array_name = label[:-1] if dictionary else label
        if item.get("_disabled_") in (True, "true", "True"):
            plan.skipped.append(f"{label}: disabled in the bundle")
            continue
        if array_name not in allowed:
            base = label[:-1] if label.endswith("d") else label
            plan.skipped.append(f"{label}: {_SKIP_REASONS.get(base, _NOT_SUPPORTED)}")
            continue
        if item.get("_mode_", "default") != "default":
            plan.skipped.append(f"{label}: _mode_ '{item['_mode_']}' is not supported")
            continue
        try:
            args = _literal(parser, {k: v for k, v in item.items() if not k.startswith("_")})
        except _Refused as exc:
            plan.skipped.append(f"{label}: {exc}")
            continue
        if dictionary:
            given = args.pop("keys", None)
            args.pop("allow_missing_keys", None)
            keys = [given] if isinstance(given, str) else [str(k) for k in given or []]
            targets = [k for k in keys if k in names]
            for arg in _PER_KEY_ARGS.get(array_name, ()):
                value = args.get(arg)
                if isinstance(value, list | tuple) and len(value) == len(keys) and targets:
                    args[arg] = value[keys.index(targets[0])]
            if not targets:
                plan.skipped.append(f"{label}: keys {keys} name none of {names}")
                continue
        elif len(names) == 1:
            targets = list(names)
        else:
            plan.skipped.append(f"{label}: an array transform, and there are several tensors {names}")
            continue
        try:
            transform = getattr(monai.transforms, array_name)(**args)
        except Exception as exc:  # a bad argument in the bundle: say which transform
            raise ModelLoadError(f"{source}: {where} ({label}) cannot be built: {exc}") from None
        for name in targets:
            plan.steps[name].append((label, transform))
    return plan


def _network_component(target: str) -> bool:
    import monai.networks.blocks
    import monai.networks.layers
    import monai.networks.nets
    import torch.nn

    if target.startswith(("monai.networks.", "torch.nn.")):
        return True
    modules = (monai.networks.nets, monai.networks.blocks, monai.networks.layers, torch.nn)
    return "." not in target and any(isinstance(getattr(m, target, None), type) for m in modules)


# ------------------------------------------------------------------ the runtime


def _plain(value: Any) -> Any:
    """A torch tensor without MONAI metadata."""
    as_tensor = getattr(value, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else value


def _apply(steps: list[tuple[str, Callable[[Any], Any]]], batch: Any) -> Any:
    """Apply sample transforms to each item of a batch."""
    import torch

    if not steps:
        return batch
    samples = []
    for sample in batch:
        for _, transform in steps:
            sample = _plain(transform(sample))
        samples.append(torch.as_tensor(sample))
    return torch.stack(samples)


_TORCH_TO_OIP = {
    "torch.float32": "FP32",
    "torch.float16": "FP16",
    "torch.float64": "FP64",
    "torch.uint8": "UINT8",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.bool": "BOOL",
}


class MonaiBundleRuntime(Runtime):
    name = RUNTIME_NAME
    platform = "monai_bundle"

    def __init__(self, artifact: Path, options: dict[str, Any]) -> None:
        super().__init__(artifact, options)
        self.root = bundle_root(artifact)
        self._network: Any = None
        self._torch_device: Any = None
        self._inferer: Any = None
        self._inferer_name = "none"
        self._inputs: list[BundleTensor] = []
        self._outputs: list[BundleTensor] = []
        self._engine_outputs: list[EngineTensor] = []
        self._numpy_dtypes: dict[str, np.dtype] = {}
        self._pre = _Plan()
        self._post = _Plan()
        self._metadata: dict[str, Any] = {}
        self._format = ""

    def _option(self, key: str, default: bool) -> bool:
        value = self.options.get(key, default)
        if not isinstance(value, bool):
            raise ModelLoadError(f"monai_bundle option '{key}' must be true or false, got {value!r}")
        return value

    def load(self) -> None:
        unknown = set(self.options) - _OPTIONS
        if unknown:
            raise ModelLoadError(
                f"unknown monai_bundle option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}"
            )
        for key in ("preprocessing", "postprocessing", "inferer", "trust_bundle_code"):
            self._option(key, key != "trust_bundle_code")
        metadata_path = self.root / METADATA_FILE
        self._metadata = read_json(metadata_path)
        self._inputs, self._outputs = network_data_format(self._metadata, metadata_path)
        inference_path, inference = _read_inference_config(self.root)
        if not self.artifact.is_file():
            raise ModelLoadError(f"{self.artifact}: missing (the bundle's weights)")
        try:
            import torch
            from monai.bundle.config_parser import ConfigParser
        except ImportError as exc:
            raise ModelLoadError(f"the monai_bundle runtime needs torch and monai: {exc}") from None
        try:
            device = torch.device(str(self.options.get("device", "cpu")))
        except RuntimeError as exc:
            raise ModelLoadError(f"monai_bundle option 'device': {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"monai_bundle option 'device' is {device} but CUDA is not available")
        self._torch_device = device
        parser = ConfigParser(inference)
        source = inference_path or self.root / INFERENCE_FILES[0]
        self._network = self._load_network(parser, source, device)

        inputs = [t.name for t in self._inputs]
        outputs = [t.name for t in self._outputs]
        use_inferer = self._option("inferer", True) and len(inputs) == 1
        self._inferer, self._inferer_name = self._build_inferer(parser) if use_inferer else (None, "none")
        if self._inferer_name == "SlidingWindowInferer":
            for tensor in (*self._inputs, *self._outputs):
                if tensor.patch and tensor.kind == "image":
                    tensor.dims = tensor.dims[:1] + [-1] * (len(tensor.dims) - 1)
        self._pre = (
            _build_plan(parser, "preprocessing", PREPROCESSING, inputs, source)
            if self._option("preprocessing", True)
            else _Plan(steps={n: [] for n in inputs}, skipped=["preprocessing: turned off"])
        )
        self._post = (
            _build_plan(parser, "postprocessing", POSTPROCESSING, outputs, source)
            if self._option("postprocessing", True)
            else _Plan(steps={n: [] for n in outputs}, skipped=["postprocessing: turned off"])
        )
        self._check_plan(self._pre, self._inputs, same_shape=True)
        self._engine_outputs = self._check_plan(self._post, self._outputs, same_shape=False)
        self._numpy_dtypes = {t.name: numpy_dtype(t.datatype) for t in self._engine_outputs}

    def _load_network(self, parser: Any, source: Path, device: Any) -> Any:
        import torch

        if self.artifact.suffix == ".ts":
            self._format = "torchscript"
            try:
                jit: Any = torch.jit
                network = jit.load(str(self.artifact), map_location=device)
            except Exception as exc:  # torch raises RuntimeError, ValueError... for a bad archive
                raise ModelLoadError(f"{self.artifact}: not a loadable TorchScript file: {exc}") from None
        else:
            self._format = "state_dict"
            network = self._build_network(parser, source)
            try:
                state = torch.load(str(self.artifact), map_location=device, weights_only=True)
            except Exception as exc:  # pickle and zip errors alike
                raise ModelLoadError(f"{self.artifact}: not a loadable state dict: {exc}") from None
            if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
                state = next((state[k] for k in ("model", "state_dict", "network") if k in state), state)
            try:
                network.load_state_dict(state)
            except Exception as exc:  # missing/unexpected keys, shape mismatches
                raise ModelLoadError(
                    f"{self.artifact}: does not fit the network_def of {source}: {exc}"
                ) from None
            network = network.to(device)
        network.eval()
        return network

    def _build_network(self, parser: Any, source: Path) -> Any:
        raw = parser.get("network_def", None)
        if raw is None:
            raise ModelLoadError(
                f"{source}: field 'network_def' is missing "
                f"(needed to build the network for {self.artifact.name})"
            )
        if not self._option("trust_bundle_code", False):
            try:
                _literal(parser, raw, components=_network_component)
            except _Refused as exc:
                raise ModelLoadError(
                    f"{source}: field 'network_def' {exc}; set runtime_options.trust_bundle_code: true "
                    "to let MONAI evaluate it"
                ) from None
        try:
            network = parser.get_parsed_content("network_def")
        except Exception as exc:  # whatever the bundle's components raise
            raise ModelLoadError(f"{source}: field 'network_def' cannot be built: {exc}") from None
        if not callable(getattr(network, "load_state_dict", None)):
            raise ModelLoadError(f"{source}: field 'network_def' is not a torch module")
        return network

    def _build_inferer(self, parser: Any) -> tuple[Any, str]:
        import monai.inferers

        raw = parser.get("inferer", None)
        if raw is None:
            return None, "none"
        label = _short_name(str(raw.get("_target_", ""))) if isinstance(raw, dict) else str(raw)
        if label not in INFERERS:
            return None, f"none ({label} is not supported; the network is called directly)"
        try:
            args = _literal(parser, {k: v for k, v in raw.items() if not k.startswith("_")})
            inferer = getattr(monai.inferers, label)(**args)
        except _Refused as exc:
            return None, f"none ({label} {exc}; the network is called directly)"
        except Exception as exc:  # a bad argument in the bundle
            raise ModelLoadError(f"{self.root}: inferer {label} cannot be built: {exc}") from None
        return inferer, label

    def _check_plan(
        self, plan: _Plan, tensors: list[BundleTensor], *, same_shape: bool
    ) -> list[EngineTensor]:
        """Probe each transform on a dummy sample; drop those that change what they must not.

        Returns the tensors as they leave the plan (variable sizes probed as 8 stay variable).
        """
        import torch

        engine: list[EngineTensor] = []
        for tensor in tensors:
            sample: Any = torch.zeros([d if d > 0 else 8 for d in tensor.dims], dtype=torch.float32)
            kept = []
            for label, transform in plan.steps.get(tensor.name, []):
                try:
                    result = torch.as_tensor(_plain(transform(sample)))
                except Exception as exc:  # the transform cannot handle this tensor
                    plan.skipped.append(f"{label}: fails on '{tensor.name}' {tensor.dims}: {exc}")
                    continue
                if same_shape and list(result.shape) != list(sample.shape):
                    plan.skipped.append(f"{label}: changes the shape of '{tensor.name}'")
                    continue
                if result.ndim != sample.ndim:
                    plan.skipped.append(f"{label}: changes the rank of '{tensor.name}'")
                    continue
                kept.append((label, transform))
                sample = result
            plan.steps[tensor.name] = kept
            dims = [-1 if declared < 0 else int(size) for declared, size in zip(tensor.dims, sample.shape)]
            datatype = _TORCH_TO_OIP.get(str(sample.dtype), "FP32") if kept else tensor.datatype
            engine.append(EngineTensor(tensor.name, datatype, (-1, *dims)))
        return engine

    def inputs(self) -> list[EngineTensor]:
        return [EngineTensor(t.name, t.datatype, (-1, *t.dims)) for t in self._inputs]

    def outputs(self) -> list[EngineTensor]:
        return list(self._engine_outputs)

    def device(self) -> str:
        return str(self._torch_device) if self._torch_device is not None else "cpu"

    def describe(self) -> dict[str, Any]:
        md = self._metadata
        bundle: dict[str, Any] = {
            key: md[key]
            for key in ("name", "version", "monai_version", "pytorch_version", "task", "intended_use")
            if key in md
        }
        bundle["format"] = self._format
        return {
            "bundle": bundle,
            "network_data_format": md.get("network_data_format", {}),
            "preprocessing": self._pre.record(),
            "postprocessing": self._post.record(),
            "inferer": self._inferer_name,
        }

    def _split(self, result: Any) -> dict[str, Any]:
        names = [t.name for t in self._outputs]
        if isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise InferenceFailed(f"the network returned {sorted(result)}, not {missing}")
            return {n: result[n] for n in names}
        if isinstance(result, list | tuple):
            if len(result) != len(names):
                raise InferenceFailed(
                    f"the network returned {len(result)} outputs; metadata.json declares {names}"
                )
            return dict(zip(names, result))
        if len(names) != 1:
            raise InferenceFailed(f"the network returned one tensor; metadata.json declares {names}")
        return {names[0]: result}

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if self._network is None:
            raise InferenceFailed("model instance is not loaded")
        import torch

        try:
            with torch.inference_mode():
                batch = [
                    _apply(
                        self._pre.steps.get(t.name, []),
                        torch.from_numpy(np.array(inputs[t.name], copy=True)).to(self._torch_device),
                    )
                    for t in self._inputs
                ]
                if self._inferer is not None:
                    result = self._inferer(batch[0], self._network)
                else:
                    result = self._network(*batch)
                raw = {n: _plain(v) for n, v in self._split(result).items()}
                for tensor in self._outputs:
                    shape = list(raw[tensor.name].shape[1:])
                    if len(shape) != len(tensor.dims) or any(
                        d > 0 and d != s for d, s in zip(tensor.dims, shape)
                    ):
                        raise InferenceFailed(
                            f"network output '{tensor.name}' has shape {shape} per item but "
                            f"{METADATA_FILE} declares {tensor.dims}"
                        )
                outputs = {n: _apply(self._post.steps.get(n, []), raw[n]) for n in output_names}
                return {
                    n: v.detach().cpu().numpy().astype(self._numpy_dtypes[n], copy=False)
                    for n, v in outputs.items()
                }
        except InferenceFailed:
            raise
        except Exception as exc:  # the engine's own error text is what the client needs
            raise InferenceFailed(f"monai_bundle: {exc}") from exc

    def unload(self) -> None:
        self._network = None
        self._inferer = None
