"""The explain call's one core function, which every door adapts: check, run the method, audit, link.

:meth:`Explainer.explain` takes an OIP-shaped request (one input sample, the method's parameters in
``request.parameters``) and answers an ``InferenceResponse`` whose one output, ``attributions``, has
the input's shape, and whose parameters say what was computed (method, target, every parameter used,
the target's value at the input and at the baseline, feature names of a tabular model).

- Rights: ``infer`` on the model, as for an inference (the doors check it before reading the body).
- Scheduling: model-agnostic methods send their perturbed inputs through the model's own batcher, one
  request of ``batch_size`` rows (cut at the model's ``max_batch_size``) at a time, in the LOWEST
  priority class;
  gradient methods run on a separate copy of a torch module in a worker thread, one at a time, and
  start only when no request is queued for the model (:mod:`medserve.core.gradients`).
- Audit: one ``model.explain`` record per explanation (its request id, the inputs' digest, the
  attributions' digest), whose detail names the inference it explains: ``parameters.explains`` (the
  request id an infer reply carried) or, without it, the inference the call ran itself (audited as
  an ``inference`` with its own id, which the reply names in ``parameters.explains``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from medserve.core.gradients import GradientModel, gradient_model
from medserve.core.service import PATIENT_PARAMETERS, STUDY_PARAMETERS, InferenceService
from medserve.explanations.checks import completeness_error
from medserve.explanations.features import feature_names
from medserve.explanations.gradients import captum_grad_cam, captum_integrated_gradients
from medserve.explanations.methods import MethodPlan, plan_method, run_perturbation
from medserve.explanations.perturbation import baseline_array
from medserve.explanations.target import Target, parse_target
from medserve.values.access import Action, Caller
from medserve.values.datatypes import numpy_dtype
from medserve.values.digest import tensors_digest
from medserve.values.errors import InferenceFailed, InvalidInput, MedserveError
from medserve.values.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

EVENT = "model.explain"
OUTPUT = "attributions"
DEFAULT_MAX_PERTURBATIONS = 20_000
GRADIENT_WAIT_S = 30.0
_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_FLOATS = ("FP16", "FP32", "FP64", "BF16")


class Explainer:
    """Explanations over ``service``; ``lowest_class``: the name of the lowest priority class;
    ``max_perturbations``: the most model evaluations one explanation may take."""

    def __init__(
        self,
        service: InferenceService,
        lowest_class: str,
        max_perturbations: int = DEFAULT_MAX_PERTURBATIONS,
    ) -> None:
        self._service = service
        self.lowest_class = lowest_class
        self.max_perturbations = max_perturbations
        self._gradient_turn = asyncio.Semaphore(1)

    async def explain(self, request: InferenceRequest, caller: Caller) -> InferenceResponse:
        """Explain one sample; ``InvalidInput`` (400 / INVALID_ARGUMENT) names any fault of the request."""
        name = request.model_name
        caller.principal.require(Action.INFER, name)
        parameters = dict(request.parameters)
        info = self._service.model_info(name, caller, request.model_version)
        x, tensor = _sample(request, [s.name for s in info.inputs], info.max_batch_size > 0)
        method = parameters.get("method")
        wants_gradients = method == "grad_cam" or (
            method == "integrated_gradients" and parameters.get("implementation") != "finite_differences"
        )
        gradients: GradientModel | None = None
        if wants_gradients and info.max_batch_size > 0:
            gradients = await asyncio.to_thread(gradient_model, self._service, name, info.version, caller)
        plan = plan_method(
            method,
            parameters,
            x.shape,
            gradients=gradients is not None,
            max_evaluations=self.max_perturbations,
        )
        target = parse_target(parameters.get("target"), [(o.name, list(o.dims)) for o in info.outputs])
        if plan.implementation == "finite_differences" and tensor.datatype not in _FLOATS:
            raise InvalidInput(
                f"integrated_gradients by finite differences needs a floating-point input; '{tensor.name}' "
                f"is {tensor.datatype}: use occlusion or feature_ablation"
            )
        baseline_array(plan.parameters.get("baseline", 0.0), x)  # its length is checked before any work
        explains = parameters.get("explains")
        ran_inference = explains is None
        if explains is not None and (not isinstance(explains, str) or not _ID.match(explains)):
            raise InvalidInput(
                "parameter 'explains' must be the request id of the inference explained (1 to 128 letters, "
                f"digits or . _ : -), got {explains!r}"
            )
        explain_id = request.id or caller.request_id
        context = {k: parameters[k] for k in (*PATIENT_PARAMETERS, *STUDY_PARAMETERS) if k in parameters}
        if explains is None:
            explains = f"{explain_id}.inference"
            inference = InferenceRequest(
                name, info.version, explains, [tensor], [], context, request.deadline_ns
            )
            await self._service.infer(inference, caller)
        facts = {
            "request_id": explain_id,
            "model_version": info.version,
            "model_digest": info.sha256,
            "device": info.device,
            "detail": f"explains {explains}; method {plan.method} ({plan.implementation}); "
            f"target {target.output}[{target.index}]",
        }
        outputs: list[Tensor] = []
        answer: dict[str, Any] = {}

        async def work() -> InferenceResponse:
            started = time.perf_counter()
            evaluate = self._evaluator(name, info.version, info.max_batch_size, tensor, target, caller)
            if plan.implementation == "captum":
                assert gradients is not None
                limit = info.max_batch_size  # Captum's chunks of the path go to the module as batches
                if "batch_size" in plan.parameters and plan.parameters["batch_size"] > limit:
                    plan.parameters["batch_size"] = limit
                attributions, used = await self._gradients(gradients, plan, x, target)
            else:
                attributions, used = await run_perturbation(plan, x, evaluate), dict(plan.parameters)
            ends = await evaluate(np.stack([x, baseline_array(used.get("baseline", 0.0), x).astype(x.dtype)]))
            shape = tensor.shape if info.max_batch_size > 0 else x.shape
            data = attributions.astype(np.float32).reshape(shape)
            outputs.append(Tensor(OUTPUT, "FP32", tuple(shape), data))
            answer.update(
                method=plan.method,
                implementation=plan.implementation,
                target=target.describe(),
                method_parameters=used,
                explains=explains,
                explains_ran_here=ran_inference,
                priority_class=self.lowest_class if plan.implementation != "captum" else "",
                model_evaluations=plan.evaluations,
                output_value=float(ends[0]),
                baseline_value=float(ends[1]),
                attribution_sum=float(np.sum(attributions)),
                seconds=round(time.perf_counter() - started, 6),
            )
            if plan.method == "integrated_gradients":
                answer["completeness_error"] = completeness_error(attributions, ends[0], ends[1])
            if x.ndim == 1:
                answer["feature_names"] = feature_names(info.metadata, tensor.name, x.size)
            return InferenceResponse(name, info.version, explain_id, outputs, answer)

        return await self._service.call(
            caller,
            name,
            work,
            event=EVENT,
            input_digest=tensors_digest(request.inputs),
            output_digest=lambda response: tensors_digest(response.outputs),
            patient=next((context[k] for k in PATIENT_PARAMETERS if context.get(k)), ""),
            study=next((context[k] for k in STUDY_PARAMETERS if context.get(k)), ""),
            facts=facts,
        )

    def _evaluator(
        self, name: str, version: str, max_batch_size: int, tensor: Tensor, target: Target, caller: Caller
    ) -> Any:
        """The evaluator over the model's batcher, in the lowest priority class."""
        dtype = numpy_dtype(tensor.datatype)
        limit = max(max_batch_size, 1)
        parameters = {"priority_class": self.lowest_class}

        async def one(part: np.ndarray) -> np.ndarray:
            data = np.ascontiguousarray(part.astype(dtype, copy=False))
            if max_batch_size == 0:
                data = data[0]
            step = InferenceRequest(
                name,
                version,
                "",
                [Tensor(tensor.name, tensor.datatype, tuple(data.shape), data)],
                [RequestedOutput(target.output)],
                dict(parameters),
            )
            response = await self._service.infer_step(step, caller)
            out = response.outputs[0].data
            return target.pick(out if max_batch_size > 0 else np.asarray(out)[None])

        async def evaluate(batch: np.ndarray) -> np.ndarray:
            # one request in flight: an execution of the model holds at most this chunk's rows (cut at
            # max_batch_size), so a clinical request arriving meanwhile waits for that much at most
            parts = [batch[i : i + limit] for i in range(0, len(batch), limit)]
            return np.concatenate([await one(part) for part in parts])

        return evaluate

    async def _gradients(
        self, model: GradientModel, plan: MethodPlan, x: np.ndarray, target: Target
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Run a Captum plan in a worker thread, one at a time, once the model's queue is empty."""
        async with self._gradient_turn:
            deadline = time.monotonic() + GRADIENT_WAIT_S
            while model.queued() > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # clinical requests first
            try:
                return await asyncio.to_thread(_captum, model, plan, x, target)
            except MedserveError:
                raise
            except Exception as exc:  # the module's own failure, named as the engine's are
                raise InferenceFailed(f"torch (explanation): {exc}") from exc


def _captum(
    model: GradientModel, plan: MethodPlan, x: np.ndarray, target: Target
) -> tuple[np.ndarray, dict[str, Any]]:
    def forward(batch: Any) -> Any:
        out = model.forward([batch])[target.output]
        return out.reshape(len(out), -1)[:, target.index]

    used = dict(plan.parameters)
    p = plan.parameters
    if plan.method == "grad_cam":
        cam, layer = captum_grad_cam(model.module, forward, x, layer=p["layer"], device=model.device)
        used["layer"] = layer
        return cam, used
    attributions = captum_integrated_gradients(
        forward,
        x,
        baseline=p["baseline"],
        steps=p["steps"],
        rule=p["rule"],
        batch_size=p["batch_size"],
        device=model.device,
    )
    return attributions, used


def _sample(request: InferenceRequest, inputs: list[str], batched: bool) -> tuple[np.ndarray, Tensor]:
    """The one sample explained (without a batch dimension) and its tensor."""
    if len(inputs) != 1:
        raise InvalidInput(f"explanations need a model with one input; '{request.model_name}' has {inputs}")
    if len(request.inputs) != 1 or request.inputs[0].name != inputs[0]:
        given = [t.name for t in request.inputs]
        raise InvalidInput(f"an explain request carries the model's one input '{inputs[0]}'; got {given}")
    tensor = request.inputs[0]
    data = tensor.data
    if tensor.datatype == "BYTES" or not isinstance(data, np.ndarray) or data.dtype == object:
        raise InvalidInput(f"input '{tensor.name}' must be numeric to be explained, got {tensor.datatype}")
    if data.size == 0:
        raise InvalidInput(
            f"input '{tensor.name}' has no elements (shape {list(data.shape)}): nothing to explain"
        )
    if batched:
        if data.ndim < 1 or data.shape[0] != 1:
            raise InvalidInput(
                f"an explanation explains one sample: input '{tensor.name}' needs a batch of 1, "
                f"got shape {list(data.shape)}"
            )
        return data[0], tensor
    return data, tensor


def parameters_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Request parameters as a door received them, with JSON texts (gRPC parameters are scalars: a list
    or an object arrives as its JSON text) decoded."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value[:1] in ("[", "{") and key != "explains":
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidInput(
                    f"parameter '{key}' is neither valid JSON nor a plain value: {value[:80]!r}"
                ) from None
        out[key] = value
    return out
