"""PyTorch engine: a TorchScript (``.pt``) or ``torch.export`` (``.pt2``) program on a CPU or CUDA device.

``config.yaml``::

    runtime: torch
    artifact: model.pt            # TorchScript (torch.jit.load); model.pt2: torch.export.load(...).module()
    runtime_options:
      device: cuda:0              # cpu (default), cuda (the current CUDA device) or cuda:N
      precision: fp16             # fp32 (default), fp16 or bf16: weights and floating inputs are cast,
                                  # outputs are returned in the datatype the model declares
      compile: true               # torch.compile the module (default false); if compiling fails, the
      compile_mode: default       # model runs eagerly and a warning is logged. compile_mode: default,
      compile_backend: inductor   # reduce-overhead, max-autotune, max-autotune-no-cudagraphs. Only
                                  # .pt2 programs compile: torch refuses TorchScript modules
      cuda_graphs: [1, 4, 8]      # CUDA only: capture one graph per batch size; a batch is zero-padded
                                  # to the nearest captured size, larger batches run eagerly
      intra_op_threads: 4         # torch.set_num_threads: PROCESS-WIDE (every torch model shares it)
      format: auto                # auto (by suffix: .pt2 = torch_export), torchscript or torch_export

Tensors. TorchScript files carry no tensor names or shapes, so the engine takes them, in this order,
from the model's ``config.yaml`` (``inputs``/``outputs``, handed over by the caller as the runtime's
``declared``), from a ``medserve.json`` embedded in the archive (``_extra_files`` of ``torch.jit.save``,
``extra_files`` of ``torch.export.save``; written by ``medserve.demo.models.runtime_artifacts``), or, for
``.pt2`` only, from the exported program's signature (outputs then are ``OUTPUT__0``, ``OUTPUT__1``...).
Inputs are passed positionally in the order of the module's ``forward`` parameters when their names
match the tensor names, else in declared order. The module may return one tensor, a tuple/list (mapped
to the output names in order) or a dict (by name when its keys are the output names, else in order).

Unknown or unavailable options fail the load with ``InvalidConfig`` naming what this machine offers;
an unreadable artifact fails with ``ModelLoadError``. Each instance loads its own copy of the module.
Inference runs under ``torch.inference_mode()``; torch releases the GIL while it computes.
TorchScript is deprecated upstream (``torch.jit.load`` warns): prefer ``torch.export`` archives.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medserve.runtimes._declared import METADATA_FILE, parse_metadata
from medserve.runtimes.base import Declaration, EngineTensor, Runtime
from medserve.values.errors import InferenceFailed, ModelLoadError

log = logging.getLogger(__name__)


class TorchRuntime(Runtime):
    name = "torch"
    platform = "pytorch_libtorch"

    def __init__(
        self, artifact: Path, options: dict[str, Any], *, declared: Declaration | None = None
    ) -> None:
        super().__init__(artifact, options, declared=declared)
        self._module: Any = None
        self._eager: Any = None
        self._settings: Any = None
        self._graphs: Any = None
        self._inputs: list[EngineTensor] = []
        self._outputs: list[EngineTensor] = []
        self._order: list[int] = []
        self._format = ""
        self._tensors_from = ""
        self._compiled = False
        self._gradient: Any = None

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        declared = self.declared
        where = self.options_source("torch runtime option")
        try:
            import torch  # lazy import of an optional engine (torch)

            from medserve.runtimes import _torch_support as support  # lazy: imports torch, an optional engine
        except ImportError as exc:
            raise ModelLoadError(f"the torch runtime needs torch: {exc}") from None
        settings = support.parse_options(self.options, where)
        if not self.artifact.is_file():
            raise ModelLoadError(f"artifact {self.artifact} does not exist")
        support.apply_threads(settings.intra_op_threads)
        fmt = settings.format
        if fmt == "auto":
            fmt = "torch_export" if self.artifact.suffix == ".pt2" else "torchscript"
        module, embedded, derived = self._read(fmt, settings.device)
        self._format = fmt
        inputs = outputs = None
        sources: list[str] = []
        for source, (ins, outs) in (
            ("config.yaml", (declared.inputs, declared.outputs) if declared else (None, None)),
            (METADATA_FILE, embedded or (None, None)),
            ("exported program", derived or (None, None)),
        ):
            if inputs is None and ins is not None:
                inputs, sources = ins, [*sources, source]
            if outputs is None and outs is not None:
                outputs, sources = outs, [*sources, source]
        if inputs is None or outputs is None:
            raise ModelLoadError(
                f"{self.artifact}: a TorchScript file names no tensors; declare 'inputs' and 'outputs' "
                f"in the model's config.yaml (or embed {METADATA_FILE} in the archive)"
            )
        for tensor in (*inputs, *outputs):
            if tensor.datatype == "BYTES":
                raise ModelLoadError(
                    f"{self.artifact}: tensor '{tensor.name}' is BYTES; torch has no strings"
                )
        self._inputs, self._outputs = list(inputs), list(outputs)
        self._tensors_from = " + ".join(dict.fromkeys(sources))
        module = module.to(settings.device)
        if settings.dtype is not None:
            module = module.to(settings.dtype)
        # exported programs fix train/eval at export time and may refuse the switch
        with contextlib.suppress(NotImplementedError, RuntimeError):
            module.eval()
        self._order = _call_order(module, [t.name for t in self._inputs])
        self._settings = settings
        self._module = self._eager = module
        if settings.compile:
            self._compile(torch)
        if settings.cuda_graphs:
            self._capture(support)

    def _read(self, fmt: str, device: Any) -> tuple[Any, Any, Any]:
        """The module, its embedded tensor description and (``.pt2``) the one its signature gives."""
        import torch  # lazy import of an optional engine (torch)

        extra: dict[str, Any] = {METADATA_FILE: ""}
        derived = None
        try:
            if fmt == "torchscript":
                jit: Any = torch.jit
                module = jit.load(str(self.artifact), map_location=device, _extra_files=extra)
            else:
                program = torch.export.load(str(self.artifact), extra_files=extra)
                derived = _signature_tensors(program)
                if device.type != "cpu":  # also moves device arguments baked into the graph's operations
                    from torch.export.passes import move_to_device_pass  # lazy: optional engine

                    program = move_to_device_pass(program, device)
                module = program.module()
        except Exception as exc:  # torch raises RuntimeError, ValueError, zip and pickle errors
            kind = "TorchScript file" if fmt == "torchscript" else "torch.export archive (.pt2)"
            raise ModelLoadError(f"{self.artifact}: not a loadable {kind}: {exc}") from None
        text = extra.get(METADATA_FILE) or ""
        embedded = parse_metadata(text, str(self.artifact)) if text else None
        return module, embedded, derived

    def _compile(self, torch: Any) -> None:
        settings = self._settings
        from medserve.runtimes._torch_support import example_inputs  # lazy: imports torch, an optional engine

        try:
            compiled = torch.compile(
                self._eager, mode=settings.compile_mode, backend=settings.compile_backend
            )
            with torch.inference_mode():
                self._invoke(compiled, example_inputs(self._inputs, 2, settings.device, settings.dtype))
        except Exception as exc:  # any compiler failure: serve eagerly rather than not at all
            log.warning("torch.compile of %s failed; running eagerly: %s", self.artifact, exc)
            return
        self._module = compiled
        self._compiled = True

    def _capture(self, support: Any) -> None:
        settings = self._settings
        for tensor in self._inputs:
            if not tensor.shape or tensor.shape[0] != -1 or any(d < 0 for d in tensor.shape[1:]):
                raise ModelLoadError(
                    f"{self.artifact}: cuda_graphs need a variable batch dimension and fixed other "
                    f"dimensions; input '{tensor.name}' has shape {list(tensor.shape)}"
                )
        import torch  # lazy import of an optional engine (torch)

        try:
            with torch.inference_mode():
                self._graphs = support.CudaGraphs(
                    lambda args: self._invoke(self._module, args),
                    self._inputs,
                    settings.cuda_graphs,
                    settings.device,
                    settings.dtype,
                )
        except Exception as exc:  # capture errors (unsupported ops, syncs) are the model's
            raise ModelLoadError(f"{self.artifact}: CUDA graph capture failed: {exc}") from exc

    # ------------------------------------------------------------------ metadata

    def inputs(self) -> list[EngineTensor]:
        return list(self._inputs)

    def outputs(self) -> list[EngineTensor]:
        return list(self._outputs)

    def device(self) -> str:
        return str(self._settings.device) if self._settings is not None else "cpu"

    def describe(self) -> dict[str, Any]:
        settings = self._settings
        if settings is None:
            return {}
        import torch  # lazy import of an optional engine (torch)

        return {
            "format": self._format,
            "precision": settings.precision,
            "compiled": self._compiled,
            "compile_mode": (settings.compile_mode or "default") if self._compiled else None,
            "cuda_graphs": list(self._graphs.sizes) if self._graphs is not None else [],
            "intra_op_threads": torch.get_num_threads(),
            "tensors_from": self._tensors_from,
            "torch": torch.__version__,
        }

    # ------------------------------------------------------------------ running

    def _invoke(self, module: Any, args: list[Any]) -> Any:
        return module(*[args[i] for i in self._order])

    def _call(self, args: list[Any]) -> Any:
        if not self._compiled:
            return self._invoke(self._module, args)
        import torch._dynamo  # lazy import of an optional engine (torch)

        try:
            return self._invoke(self._module, args)
        except torch._dynamo.exc.TorchDynamoException as exc:  # a recompilation for new shapes failed
            log.warning("torch.compile of %s failed; running eagerly from now on: %s", self.artifact, exc)
            self._module, self._compiled = self._eager, False
            return self._invoke(self._module, args)

    def _tensor(self, spec: EngineTensor, array: np.ndarray) -> Any:
        import torch  # lazy import of an optional engine (torch)

        array = np.ascontiguousarray(array)
        if not array.flags.writeable:
            array = array.copy()
        tensor = torch.from_numpy(array)
        if spec.datatype == "BF16":
            tensor = tensor.view(torch.bfloat16)
        tensor = tensor.to(self._settings.device)
        dtype = self._settings.dtype
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    def _split(self, result: Any) -> dict[str, Any]:
        names = [t.name for t in self._outputs]
        if isinstance(result, Mapping):
            if all(n in result for n in names):
                return {n: result[n] for n in names}
            result = list(result.values())
        if isinstance(result, list | tuple):
            if len(result) != len(names):
                raise InferenceFailed(f"torch: the module returned {len(result)} outputs; declared {names}")
            return dict(zip(names, result))
        if len(names) != 1:
            raise InferenceFailed(f"torch: the module returned one tensor; declared outputs are {names}")
        return {names[0]: result}

    def _numpy(self, value: Any, spec: EngineTensor) -> np.ndarray:
        import torch  # lazy import of an optional engine (torch)

        from medserve.runtimes._torch_support import TORCH_DTYPES  # lazy: imports torch, an optional engine

        tensor = torch.as_tensor(value).detach()
        if spec.datatype == "BF16":
            bits: np.ndarray = tensor.to(torch.bfloat16).cpu().view(torch.uint16).numpy()
            return bits
        array: np.ndarray = tensor.to(TORCH_DTYPES[spec.datatype]).cpu().numpy()
        return array

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise InferenceFailed("model instance is not loaded")
        import torch  # lazy import of an optional engine (torch)

        specs = {t.name: t for t in self._outputs}
        try:
            with torch.inference_mode():
                args = [self._tensor(spec, inputs[spec.name]) for spec in self._inputs]
                result = self._graphs.run(args) if self._graphs is not None else None
                if result is None:
                    result = self._call(args)
                outputs = self._split(result)
                return {name: self._numpy(outputs[name], specs[name]) for name in output_names}
        except InferenceFailed:
            raise
        except Exception as exc:  # the engine's own error text is what the client needs
            raise InferenceFailed(f"torch: {exc}") from exc

    def gradient_module(self) -> Any:
        """A copy of the model for gradient explanations: read again from the artifact, in float32 on
        this instance's device, a ``.pt2`` program unflattened so that its layers can be hooked (GradCAM);
        never the module serving requests, so autograd and hooks stay off the clinical path. Cached.
        Returns ``(module, forward)``: ``forward(list of input tensors in declared order)`` gives the
        outputs by name."""
        if self._module is None:
            raise InferenceFailed("model instance is not loaded")
        if self._gradient is None:
            import torch  # lazy import of an optional engine (torch)

            device = self._settings.device
            if self._format == "torch_export":
                program = torch.export.load(str(self.artifact))
                if device.type != "cpu":
                    from torch.export.passes import move_to_device_pass  # lazy: optional engine

                    program = move_to_device_pass(program, device)
                module = torch.export.unflatten(program)
            else:
                module = torch.jit.load(str(self.artifact), map_location=device)  # type: ignore[no-untyped-call]
            module = module.to(device).float()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                module.eval()

            def forward(args: list[Any]) -> dict[str, Any]:
                return self._split(self._invoke(module, args))

            self._gradient = (module, forward)
        return self._gradient

    def unload(self) -> None:
        self._module = self._eager = self._graphs = self._gradient = None


def _call_order(module: Any, names: list[str]) -> list[int]:
    """Indices into the declared inputs, in the order of ``forward``'s parameters when they match."""
    declared = list(range(len(names)))
    try:
        schema = getattr(getattr(module, "forward", None), "schema", None)
        if schema is not None:  # TorchScript: forward(self, a, b)
            params = [a.name for a in schema.arguments][1:]
        else:
            params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return declared
    if sorted(params) != sorted(names):
        return declared
    return [names.index(p) for p in params]


def _signature_tensors(program: Any) -> tuple[list[EngineTensor], list[EngineTensor]] | None:
    """Inputs (by placeholder name) and outputs (``OUTPUT__i``) of an exported program."""
    from medserve.runtimes._torch_support import OIP_DATATYPES  # lazy: imports torch, an optional engine

    def tensor(name: str, value: Any) -> EngineTensor | None:
        dtype = OIP_DATATYPES.get(getattr(value, "dtype", None))  # type: ignore[arg-type]
        if dtype is None:
            return None
        shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        return EngineTensor(name, dtype, shape)

    try:
        user_inputs = set(program.graph_signature.user_inputs)
        nodes = list(program.graph.nodes)
        inputs = [
            tensor(n.name, n.meta.get("val"))
            for n in nodes
            if n.op == "placeholder" and n.name in user_inputs
        ]
        output_node = next(n for n in reversed(nodes) if n.op == "output")
        user_outputs = len(program.graph_signature.user_outputs)
        values = list(output_node.args[0])[-user_outputs:] if user_outputs else []
        outputs = [tensor(f"OUTPUT__{i}", v.meta.get("val")) for i, v in enumerate(values)]
    except (AttributeError, StopIteration, TypeError):
        return None
    if any(t is None for t in (*inputs, *outputs)):
        return None
    return [t for t in inputs if t is not None], [t for t in outputs if t is not None]
