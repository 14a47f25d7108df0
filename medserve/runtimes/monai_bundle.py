"""MONAI bundle engine: serve a MONAI bundle folder (TorchScript or state dict) as a model.

The bundle's layout, its derived model configuration and how ``metadata.json`` declares tensors are
described in ``medserve.repository.monai_bundle``, which reads the files; this module runs the network.

Tensors
-------
The tensors are those of ``metadata.json``'s ``network_data_format``; every spatial size of
``is_patch_data`` tensors is variable (-1) when the inferer is a ``SlidingWindowInferer``. The
engine declares a variable leading batch dimension; with ``max_batch_size: 0`` clients send it
themselves. Output dims and datatype are those *after* the applied post-processing (``AsDiscrete``
argmax gives one channel).

Pre- and post-processing (a safe subset of ``inference.json``, see ``monai_bundle_subset``)
-------------------------------------------------------------------------------------------
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

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medserve.repository.monai_bundle import (
    INFERENCE_FILES,
    METADATA_FILE,
    RUNTIME_NAME,
    BundleTensor,
    bundle_root,
    network_data_format,
    read_inference_config,
    read_json,
)
from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.runtimes.monai_bundle_subset import (
    POSTPROCESSING,
    PREPROCESSING,
    Plan,
    Refused,
    build_inferer,
    build_plan,
    literal,
    network_component,
)
from medserve.values.datatypes import numpy_dtype
from medserve.values.errors import InferenceFailed, ModelLoadError

log = logging.getLogger(__name__)

_OPTIONS = {"device", "preprocessing", "postprocessing", "inferer", "trust_bundle_code"}


def _plain(value: Any) -> Any:
    """A torch tensor without MONAI metadata."""
    as_tensor = getattr(value, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else value


def _apply(steps: list[tuple[str, Callable[[Any], Any]]], batch: Any) -> Any:
    """Apply sample transforms to each item of a batch."""
    import torch  # lazy import of an optional engine (torch)

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

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        self.root = bundle_root(artifact)
        self._network: Any = None
        self._torch_device: Any = None
        self._inferer: Any = None
        self._inferer_name = "none"
        self._inputs: list[BundleTensor] = []
        self._outputs: list[BundleTensor] = []
        self._engine_outputs: list[EngineTensor] = []
        self._numpy_dtypes: dict[str, np.dtype] = {}
        self._pre = Plan()
        self._post = Plan()
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
        inference_path, inference = read_inference_config(self.root)
        if not self.artifact.is_file():
            raise ModelLoadError(f"{self.artifact}: missing (the bundle's weights)")
        try:
            import torch  # lazy import of optional engines (torch, monai)
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
        self._inferer, self._inferer_name = (
            build_inferer(parser, self.root) if use_inferer else (None, "none")
        )
        if self._inferer_name == "SlidingWindowInferer":
            for tensor in (*self._inputs, *self._outputs):
                if tensor.patch and tensor.kind == "image":
                    tensor.dims = tensor.dims[:1] + [-1] * (len(tensor.dims) - 1)
        self._pre = (
            build_plan(parser, "preprocessing", PREPROCESSING, inputs, source)
            if self._option("preprocessing", True)
            else Plan(steps={n: [] for n in inputs}, skipped=["preprocessing: turned off"])
        )
        self._post = (
            build_plan(parser, "postprocessing", POSTPROCESSING, outputs, source)
            if self._option("postprocessing", True)
            else Plan(steps={n: [] for n in outputs}, skipped=["postprocessing: turned off"])
        )
        self._check_plan(self._pre, self._inputs, same_shape=True)
        self._engine_outputs = self._check_plan(self._post, self._outputs, same_shape=False)
        self._numpy_dtypes = {t.name: numpy_dtype(t.datatype) for t in self._engine_outputs}

    def _load_network(self, parser: Any, source: Path, device: Any) -> Any:
        import torch  # lazy import of an optional engine (torch)

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
                literal(parser, raw, components=network_component)
            except Refused as exc:
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

    def _check_plan(self, plan: Plan, tensors: list[BundleTensor], *, same_shape: bool) -> list[EngineTensor]:
        """Probe each transform on a dummy sample; drop those that change what they must not.

        Returns the tensors as they leave the plan (variable sizes probed as 8 stay variable).
        """
        import torch  # lazy import of an optional engine (torch)

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
        import torch  # lazy import of an optional engine (torch)

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
